"""The leaderboard page in Streamlit's AppTest against the seeded store: the rendered values are
checked against the store itself (its evaluations, runs and metrics), not against the read layer."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from awm_platform.store import Store
from tests.ui.conftest import INLOOP_STEP, PARTIAL_RUN, PARTIAL_STEP, SECRET, Seeded, page_text

Open = Callable[..., AppTest]


def _full(store: Store, bench: str) -> list:
    return [e for e in store.list_evaluations(benchmark=bench, status="COMPLETED") if not e.partial]


def _rows(store: Store, runs: set[str] | None = None) -> set[tuple[str, str]]:
    """(checkpoint sha256, weights) of the leaderboard's rows: checkpoints with a completed full
    evaluation, base model apart."""
    return {(e.checkpoint_sha256, e.weights) for b in ("geneval", "ocr", "pickscore") for e in _full(store, b)
            if e.weights != "base" and (runs is None or e.run_name in runs)}


def _board(at: AppTest) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if "rank interval" in df.value.columns)


def _total(at: AppTest) -> int:
    m = next(re.match(r"\*\*(\d+) rows\*\*", md.value) for md in at.markdown if re.match(r"\*\*\d+ rows", md.value))
    return int(m[1])


def test_top_row_is_the_stores_best_and_the_base_row_is_pinned(seeded: Seeded, open_page: Open) -> None:
    at = open_page()
    board = _board(at)
    with seeded.store() as store:
        geneval = [e for e in _full(store, "geneval") if e.weights != "base"]
        best = max(e.score for e in geneval)
        base = next(e for e in _full(store, "geneval") if e.weights == "base")
        assert _total(at) == len(_rows(store))
    assert board.iloc[0]["rank"] == "base" and board.iloc[0]["row"].startswith("base model")
    assert board.iloc[0]["geneval"] == pytest.approx(round(base.score, 4))
    top = board.iloc[1]
    assert top["rank"] == "1" and top["geneval"] == pytest.approx(round(best, 4))
    winners = {f"{e.run_name}@{e.step}" + ("" if e.weights == "policy" else f" ({e.weights})")
               for e in geneval if e.score == best}
    assert top["row"] in winners
    ev = next(e for e in geneval if f"{e.run_name}@{e.step}" == top["row"].split(" ")[0] and e.score == best)
    assert top["geneval 95% CI"] == f"[{ev.ci_low:.3f}, {ev.ci_high:.3f}]"
    ranked = board.iloc[1:]
    assert list(ranked["geneval"]) == sorted(ranked["geneval"], reverse=True)
    # rank intervals: contain the rank; tie groups only grow down the table
    for _, r in ranked.iterrows():
        low, _, high = r["rank interval"].partition("–")
        assert int(low) <= int(r["rank"]) <= int(high or low)
    groups = list(ranked["tie group"])
    assert groups == sorted(groups) and groups[0] == 1
    assert at.query_params["view"] == "leaderboard"


def test_url_filters_give_the_rows_sql_gives(seeded: Seeded, open_page: Open) -> None:
    with seeded.store() as store:
        alpha = {r.name for r in store.list_runs(sweep_name="alpha")}
        in_range = {r.name for r in store.list_runs() if 0.0005 <= r.resolved_config["train"]["beta"] <= 0.005}
        want_alpha, want_beta_range = len(_rows(store, alpha)), len(_rows(store, in_range))
    at = open_page(sweep="alpha")
    board = _board(at)
    assert _total(at) == want_alpha and 0 < want_alpha < len(_rows(seeded.store()))
    assert set(board["run"][1:]) <= alpha
    at = open_page(**{"p.train.beta": "0.0005:0.005"})
    assert _total(at) == want_beta_range and set(_board(at)["run"][1:]) <= in_range
    assert _total(open_page(**{"p.train.beta": "0.5:0.6"})) == 0  # a range outside every run
    # filters on a key every run has one value of are kept, not dropped (no widget to show them)
    at = open_page(**{"p.pretrained.family": "flux"})  # a text value no run has
    assert _total(at) == 0 and at.multiselect(key="f_p.pretrained.family").value == ["flux"]
    assert _total(open_page(**{"p.pretrained.family": "auto"})) == len(_rows(seeded.store()))  # the configs say auto
    assert _total(open_page(**{"p.train.learning_rate": "5:6"})) == 0  # one value (all runs), outside it
    at = open_page(sweep="ghost")  # a link to a sweep the store does not have: no rows, not every row
    assert _total(at) == 0 and at.multiselect(key="f_sweep").value == ["ghost"]
    at = open_page(tag="family:beta")  # the configs' `tags:` (run_params)
    with seeded.store() as store:
        assert _total(at) == len(_rows(store, {r.name for r in store.list_runs(sweep_name="beta")}))
    at = open_page(weights="ema")
    assert _total(at) == 2 and set(_board(at)["weights"][1:]) == {"ema"}
    at = open_page(run="alpha-t0,alpha-t1")
    assert _total(at) == 22 and set(_board(at)["run"][1:]) == {"alpha-t0", "alpha-t1"}
    with seeded.store() as store:  # checkpoint dates: the seed wrote them all today (UTC)
        days = {c.created_at.date() for r in seeded.runs for c in store.list_checkpoints(r)}
    assert _total(open_page(since=min(days).isoformat(), until=max(days).isoformat())) == len(_rows(seeded.store()))
    at = open_page(since=(max(days) + timedelta(days=1)).isoformat())
    assert _total(at) == 0 and any("No checkpoint matches" in i.value for i in at.info)
    assert len(_board(at)) == 1  # the base row stays


def test_a_sidebar_filter_changes_the_rows_and_the_url(seeded: Seeded, open_page: Open) -> None:
    at = open_page()
    before = _total(at)
    at.multiselect(key="f_sweep").select("beta").run()
    with seeded.store() as store:
        beta = {r.name for r in store.list_runs(sweep_name="beta")}
        want = len(_rows(store, beta))
    assert _total(at) == want < before
    assert at.query_params["sweep"] == "beta"  # the view is a link
    assert set(_board(at)["run"][1:]) <= beta
    at.selectbox(key="f_sort").select("step").run()
    at.checkbox(key="f_desc").uncheck().run()
    assert at.query_params["sort"] == "step" and at.query_params["desc"] == "0"
    assert list(_board(at)["step"][1:6]) == [10.0] * 5


def test_sort_and_pagination_are_the_servers(seeded: Seeded, open_page: Open) -> None:
    with seeded.store() as store:
        ocr = [e.score for e in _full(store, "ocr") if e.weights != "base"]
    board = _board(open_page(sort="score:ocr"))
    assert board.iloc[1]["ocr"] == pytest.approx(round(max(ocr), 4))
    board = _board(open_page(sort="score:ocr", desc="0"))
    assert board.iloc[1]["ocr"] == pytest.approx(round(min(ocr), 4))
    assert board["rank interval"][1:].eq("").all()  # rank intervals only for the best-first score order
    first = _board(open_page(size="50"))
    at = open_page(size="25", page="1")
    second = _board(at)
    assert any("showing 26–50" in md.value for md in at.markdown)
    assert list(second["row"][1:]) == list(first["row"][26:51])
    assert list(second["rank"][1:]) == [str(i) for i in range(26, 51)]


def test_in_loop_and_partial_rows_are_shown_apart(seeded: Seeded, open_page: Open) -> None:
    at = open_page()
    inloop = next(df.value for df in at.dataframe if "kind" in df.value.columns)
    assert set(inloop["kind"]) == {"in-loop"} and set(inloop["step"]) == {INLOOP_STEP}
    assert len(inloop) == len(seeded.runs)
    with seeded.store() as store:
        for _, r in inloop.iterrows():
            history = dict(store.get_metric_history(r["run"], "eval/jpeg_compressibility"))
            assert r["eval/jpeg_compressibility"] == pytest.approx(round(history[INLOOP_STEP], 4))
        partial = store.get_evaluation(seeded.partial_id)
    part = next(df.value for df in at.dataframe if "spec" in df.value.columns and "benchmark" in df.value.columns)
    assert list(part["row"]) == [f"{PARTIAL_RUN}@{PARTIAL_STEP}"] and list(part["spec"]) == ["partial"]
    assert part.iloc[0]["score"] == pytest.approx(round(partial.score, 4))
    assert set(_board(at)["spec"]) == {"full"}  # never ranked with the full ones
    assert f"{INLOOP_STEP}" not in {str(s) for s in _board(at)["step"]}


def test_compare_picker_links_the_chosen_rows(open_page: Open) -> None:
    at = open_page(sweep="alpha")
    board = _board(at)
    picks = list(board["row"][1:3])
    at.multiselect(key="compare_pick").select(picks[0]).select(picks[1]).run()
    link = next(md.value for md in at.markdown if "Compare the 2 selected rows" in md.value)
    keys = [k for k in board["key"][1:3]]
    assert f"rows={keys[0].replace(':', '%3A')}%2C{keys[1].replace(':', '%3A')}" in link


def test_empty_store_says_what_to_run(tmp_path: Path, open_page: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url).close()
    monkeypatch.setenv("AWM_UI_DB_URL", url)
    at = open_page()
    assert any("awm eval schedule --once --benchmarks ocr --wait" in c.value for c in at.code)
    assert any("No benchmark evaluation" in i.value for i in at.info)


def test_unreachable_store_shows_its_url_without_the_password(open_page: Open,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWM_UI_DB_URL", f"postgresql+psycopg://awm:{SECRET}@127.0.0.1:1/awm")
    at = open_page()
    assert len(at.error) == 1 and "postgresql+psycopg://awm:***@127.0.0.1:1/awm" in at.error[0].value
    assert SECRET not in page_text(at)


@pytest.mark.parametrize(("params", "words"), [
    ({"sort": "bogus"}, "sort='bogus'"),
    ({"page": "-1"}, "page=-1: expected >= 0"),
    ({"size": "9999"}, "size=9999: expected 1..500"),
    ({"weights": "both"}, "weights='both': expected policy or ema"),
    ({"p.train.beta": "0.1:0.01"}, "the low end is above the high end"),
    ({"since": "yesterday"}, "since='yesterday': expected a date"),
    ({"view": "nope"}, "view='nope'"),
    ({"spec.ocr": "deadbeefdeadbeef"}, "bad filter: no completed full evaluations of 'ocr' with spec"),
    ({"view": "compare", "rows": "abc"}, "compare takes 2 to 4"),
    ({"view": "checkpoint", "run": "alpha-t0"}, "step: the checkpoint page needs"),
])
def test_a_bad_link_is_one_error_line(open_page: Open, params: dict[str, str], words: str) -> None:
    at = open_page(**params)
    assert len(at.error) == 1 and words in at.error[0].value and "\n" not in at.error[0].value
