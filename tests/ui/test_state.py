"""URL <-> page state (`awm_platform.ui.views.state`): pure parsing, round trip, one-line errors."""

from __future__ import annotations

from datetime import date
from urllib.parse import parse_qs

import pytest

from awm_platform.ui.data import Filters, LeaderboardQuery, ParamFilter
from awm_platform.ui.views import state
from awm_platform.ui.views.state import StateError


def test_parses_a_full_leaderboard_link() -> None:
    page = state.parse({"sweep": "a,b", "run": "a-t*", "method": "awm", "base": "M", "tag": "x,y", "weights": "ema",
                        "p.train.beta": "0.0001:0.01", "p.train.ghuber_power": ":0.5", "p.train.weighting": "ghuber,t",
                        "spec.ocr": "0123abcd", "since": "2026-01-01", "until": "2026-02-01",
                        "sort": "param:train.beta", "desc": "0", "page": "3", "size": "100"})
    f = page.query.filters
    assert page.view == "leaderboard"
    assert (f.sweeps, f.runs, f.methods, f.base_models, f.tags, f.weights) == (
        ("a", "b"), ("a-t*",), ("awm",), ("M",), ("x", "y"), ("ema",))
    assert f.params == (ParamFilter("train.beta", 0.0001, 0.01), ParamFilter("train.ghuber_power", None, 0.5),
                        ParamFilter("train.weighting", values=("ghuber", "t")))
    assert f.specs == (("ocr", "0123abcd"),) and (f.since, f.until) == (date(2026, 1, 1), date(2026, 2, 1))
    assert (page.query.sort, page.query.descending, page.query.page, page.query.page_size) == (
        "param:train.beta", False, 3, 100)


def test_round_trip_and_defaults_stay_out_of_links() -> None:
    q = LeaderboardQuery(filters=Filters(sweeps=("s",), params=(ParamFilter("train.beta", 0.001, None),),
                                         since=date(2026, 3, 4)), sort="step", descending=False, page=2)
    params = state.leaderboard_params(q)
    assert params == {"sweep": "s", "p.train.beta": "0.001:", "since": "2026-03-04", "sort": "step", "desc": "0",
                      "page": "2"}
    assert state.parse(params).query == q
    assert state.leaderboard_params(LeaderboardQuery()) == {}
    assert state.parse({}).query == LeaderboardQuery(page_size=state.DEFAULT_PAGE_SIZE)


def test_list_items_holding_commas_round_trip() -> None:
    """A text parameter value (a swept JSON list) may hold commas and backslashes: escaped in the link,
    one item again when parsed (split on every comma, `[0.1, 0.2]` became two values). Any list
    escapes alike, though tags and run names are validated comma-free."""
    q = LeaderboardQuery(filters=Filters(tags=("a,b", "c"), runs=("r\\1",),
                                         params=(ParamFilter("lora.targets", values=('["to_q", "to_k"]', "x")),)))
    params = state.leaderboard_params(q)
    assert params["tag"] == "a\\,b,c" and params["p.lora.targets"] == '["to_q"\\, "to_k"],x'
    assert state.parse(params).query == q
    assert state.parse({"tag": "a\\,b, c ,,c"}).query.filters.tags == ("a,b", "c")
    link = state.url("leaderboard", **params)
    assert state.parse({k: v[0] for k, v in parse_qs(link[1:]).items()}).query == q


def test_other_views() -> None:
    key = "ab" * 32
    page = state.parse({"view": "compare", "rows": f"{key}:policy,{key}:ema", "benchmark": "ocr", "panel": "disagree"})
    assert page.rows == (f"{key}:policy", f"{key}:ema") and page.benchmark == "ocr" and page.panel == "disagree"
    page = state.parse({"view": "checkpoint", "run": "r", "step": "40", "vs": "q"})
    assert (page.run, page.step, page.vs) == ("r", 40, "q")
    assert state.parse({"view": "sweeps", "sweep": "s"}).sweep == "s"
    assert state.url("checkpoint", run="a b", step=3) == "?view=checkpoint&run=a+b&step=3"


@pytest.mark.parametrize(("params", "words"), [
    ({"view": "x"}, "view='x': expected one of leaderboard"),
    ({"page": "two"}, "page='two': expected a whole number"),
    ({"size": "0"}, "size=0: expected 1..500"),
    ({"sort": "score:"}, "sort='score:'"),
    ({"p.x": "a:b"}, None),  # not a range: text values 'a:b'
    ({"p.x": "1:0"}, "p.x='1:0': the low end is above the high end"),
    ({"spec.ocr": "XYZ"}, "spec.ocr='XYZ': expected a compare hash"),
    ({"since": "2026-02-02", "until": "2026-01-01"}, "since=2026-02-02 is after until=2026-01-01"),
    ({"view": "compare", "rows": "x:policy,y:policy"}, "'x:policy' is not a leaderboard row key"),
    ({"view": "compare", "rows": ",".join(f"{i:064x}:policy" for i in range(5))}, "compare takes 2 to 4"),
    ({"view": "gallery"}, "run: the gallery page needs"),
    ({"view": "compare", "rows": f"{'a' * 64}:policy,{'b' * 64}:policy", "panel": "x"}, "panel='x'"),
])
def test_bad_values_are_one_line_naming_the_parameter(params: dict[str, str], words: str | None) -> None:
    if words is None:
        assert state.parse(params).query.filters.params == (ParamFilter("x", values=("a:b",)),)
        return
    with pytest.raises(StateError) as exc:
        state.parse(params)
    assert words in str(exc.value) and "\n" not in str(exc.value)
