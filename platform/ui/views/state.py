"""Every leaderboard view is a URL: its query parameters <-> the page state, as pure functions.

    ?view=leaderboard&sweep=a,b&run=a-t*&method=awm&base=M&tag=x&weights=ema
        &p.train.beta=0.0001:0.01&p.train.weighting=ghuber&spec.ocr=<compare hash>
        &since=2026-01-01&until=2026-02-01&sort=score:ocr&desc=1&page=0&size=50
    ?view=checkpoint&run=R&step=S[&vs=OTHER_RUN]
    ?view=compare&rows=<row key>,<row key>[,..]&benchmark=B[&panel=disagree]
    ?view=gallery&run=R&benchmark=B
    ?view=sweeps[&sweep=S]

Lists are comma-separated, a comma or backslash inside an item escaped with a backslash (`a\\,b`
is the one item `a,b`: a text parameter value, e.g. a swept JSON list, may hold commas); a
parameter range is `low:high` (either side may be empty), text parameter values are a list.
`parse` raises StateError (one line naming the parameter) for a bad value; `leaderboard_params`
writes a query back (only what differs from the defaults, so links stay short).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlencode

from awm_platform.ui.data import MAX_PAGE_SIZE, SORT_KEYS, Filters, LeaderboardQuery, ParamFilter

VIEWS = ("leaderboard", "checkpoint", "compare", "gallery", "sweeps")
MAX_COMPARE = 4
DEFAULT_PAGE_SIZE = 50
PANELS = ("fixed", "disagree")
_RANGE = re.compile(r"^\s*([-+0-9.eE]*)\s*:\s*([-+0-9.eE]*)\s*$")
_ROW_KEY = re.compile(r"[0-9a-f]{8,64}:(policy|ema|base)")
_LIST_KEYS = {"sweep": "sweeps", "run": "runs", "method": "methods", "base": "base_models", "tag": "tags",
              "weights": "weights"}
WEIGHTS = ("policy", "ema")


class StateError(ValueError):
    """A query parameter the page cannot use; the message names it and says what is expected."""


@dataclass(frozen=True)
class PageState:
    view: str = "leaderboard"
    query: LeaderboardQuery = field(default_factory=LeaderboardQuery)
    run: str | None = None
    step: int | None = None
    vs: str | None = None
    rows: tuple[str, ...] = ()
    benchmark: str | None = None
    panel: str = "fixed"
    sweep: str | None = None


def _one(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _items(text: str | None) -> tuple[str, ...]:
    """The items of a comma-separated list (`_join_items`' inverse): unescaped, stripped, empty ones and
    repeats dropped."""
    items, current, chars = [], [], iter(text or "")
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, "\\"))  # an escaped character (a trailing backslash: itself)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return tuple(dict.fromkeys(x.strip() for x in items if x.strip()))


def _join_items(values: Any) -> str:
    return ",".join(str(v).replace("\\", "\\\\").replace(",", "\\,") for v in values)


def _int(params: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    text = _one(params, key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise StateError(f"{key}={text!r}: expected a whole number") from None
    if value < low or (high is not None and value > high):
        raise StateError(f"{key}={value}: expected {low}..{high}" if high is not None else
                         f"{key}={value}: expected >= {low}")
    return value


def _date(params: Mapping[str, Any], key: str) -> date | None:
    text = _one(params, key)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise StateError(f"{key}={text!r}: expected a date YYYY-MM-DD") from None


def _param_filter(key: str, text: str) -> ParamFilter:
    m = _RANGE.match(text)
    if m:
        try:
            low = float(m[1]) if m[1] else None
            high = float(m[2]) if m[2] else None
        except ValueError:
            raise StateError(f"p.{key}={text!r}: expected low:high numbers (either may be empty)") from None
        if low is not None and high is not None and low > high:
            raise StateError(f"p.{key}={text!r}: the low end is above the high end")
        return ParamFilter(key=key, low=low, high=high)
    return ParamFilter(key=key, values=_items(text))


def _sort(text: str | None) -> str:
    if text is None:
        return ""
    kind, _, name = text.partition(":")
    if text in SORT_KEYS or (kind in ("score", "param") and name):
        return text
    raise StateError(f"sort={text!r}: expected score:<benchmark>, param:<key> or one of {', '.join(SORT_KEYS)}")


def parse_filters(params: Mapping[str, Any]) -> Filters:
    lists: dict[str, tuple[str, ...]] = {attr: _items(_one(params, key)) for key, attr in _LIST_KEYS.items()}
    bad = [w for w in lists["weights"] if w not in WEIGHTS]
    if bad:
        raise StateError(f"weights={bad[0]!r}: expected policy or ema")
    pfs = tuple(_param_filter(k[2:], _one(params, k) or "") for k in sorted(params)
                if k.startswith("p.") and len(k) > 2 and _one(params, k))
    specs = tuple((k[5:], _one(params, k) or "") for k in sorted(params)
                  if k.startswith("spec.") and len(k) > 5 and _one(params, k))
    for bench, chash in specs:
        if not re.fullmatch(r"[0-9a-f]{4,64}", chash):
            raise StateError(f"spec.{bench}={chash!r}: expected a compare hash (hex)")
    since, until = _date(params, "since"), _date(params, "until")
    if since and until and since > until:
        raise StateError(f"since={since} is after until={until}")
    return Filters(params=pfs, specs=specs, since=since, until=until, **lists)


def parse(params: Mapping[str, Any]) -> PageState:
    """The page state of a URL's query parameters (StateError for a bad value)."""
    view = _one(params, "view") or "leaderboard"
    if view not in VIEWS:
        raise StateError(f"view={view!r}: expected one of {', '.join(VIEWS)}")
    query = LeaderboardQuery(
        filters=parse_filters(params), sort=_sort(_one(params, "sort")),
        descending=(_one(params, "desc") or "1") not in ("0", "false", "no"),
        page=_int(params, "page", 0) or 0, page_size=_int(params, "size", 1, MAX_PAGE_SIZE) or DEFAULT_PAGE_SIZE)
    rows = _items(_one(params, "rows"))
    if view == "compare" and not 2 <= len(rows) <= MAX_COMPARE:
        raise StateError(f"rows: compare takes 2 to {MAX_COMPARE} leaderboard rows (got {len(rows)})")
    for row in rows:
        if not _ROW_KEY.fullmatch(row):
            raise StateError(f"rows: {row!r} is not a leaderboard row key (<checkpoint sha256>:<weights>)")
    panel = _one(params, "panel") or "fixed"
    if panel not in PANELS:
        raise StateError(f"panel={panel!r}: expected {' or '.join(PANELS)}")
    step = _int(params, "step", 0)
    run = _one(params, "run")
    if view in ("checkpoint", "gallery") and run is None:
        raise StateError(f"run: the {view} page needs ?run=<run name>")
    if view == "checkpoint" and step is None:
        raise StateError("step: the checkpoint page needs ?step=<checkpoint step>")
    return PageState(view=view, query=query, run=run, step=step, vs=_one(params, "vs"), rows=rows,
                     benchmark=_one(params, "benchmark"), panel=panel, sweep=_one(params, "sweep"))


def _num(x: float) -> str:
    return f"{x:g}"


def leaderboard_params(query: LeaderboardQuery) -> dict[str, str]:
    """The query parameters of a leaderboard query (inverse of `parse`; defaults left out)."""
    f = query.filters
    out: dict[str, str] = {}
    for key, attr in _LIST_KEYS.items():
        if getattr(f, attr):
            out[key] = _join_items(getattr(f, attr))
    for pf in f.params:
        if pf.values:
            out[f"p.{pf.key}"] = _join_items(pf.values)
        elif pf.low is not None or pf.high is not None:
            out[f"p.{pf.key}"] = f"{'' if pf.low is None else _num(pf.low)}:{'' if pf.high is None else _num(pf.high)}"
    for bench, chash in f.specs:
        out[f"spec.{bench}"] = chash
    if f.since:
        out["since"] = f.since.isoformat()
    if f.until:
        out["until"] = f.until.isoformat()
    if query.sort:
        out["sort"] = query.sort
    if not query.descending:
        out["desc"] = "0"
    if query.page:
        out["page"] = str(query.page)
    if query.page_size != DEFAULT_PAGE_SIZE:
        out["size"] = str(query.page_size)
    return out


def url(view: str, **params: Any) -> str:
    """A relative link to a view (`?view=...&k=v`), values URL-encoded; None values left out."""
    items = {"view": view, **{k: v for k, v in params.items() if v is not None}}
    return "?" + urlencode({k: _join_items(v) if isinstance(v, list | tuple) else str(v) for k, v in items.items()})
