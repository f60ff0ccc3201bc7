"""The leaderboard page: checkpoints x benchmarks with CIs and rank intervals, filters in the
sidebar (kept in the URL), the base model pinned on top, in-loop metrics and partial evaluations
shown apart."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from awm_platform.ui import data
from awm_platform.ui.views import common, state
from awm_platform.ui.views.common import Ctx, fmt_ci
from trainers.awm.config import method_label

RANK_LIMIT = 200  # rank intervals over the top N rows of the current sort
PAGE_SIZES = (25, 50, 100, 200, 500)
FIXED_SORTS = ("run", "step", "created_at", "gpu_hours", "reward_per_gpu_hour", "method", "base_model", "sweep")


def _seed(key: str, value: Any) -> None:
    """A widget's first value comes from the URL (once per session; then the widget owns it)."""
    if key not in st.session_state:
        st.session_state[key] = value


def _multiselect(label: str, key: str, options: list[str], chosen: tuple[str, ...]) -> tuple[str, ...]:
    # a link's value the store does not know (a sweep since deleted) stays selected: the page then
    # shows no rows for it instead of silently dropping the filter
    options = [*options, *(c for c in chosen if c not in options)]
    _seed(key, list(chosen))
    st.session_state[key] = [c for c in st.session_state[key] if c in options]
    return tuple(st.sidebar.multiselect(label, options, key=key))


def _param_widgets(opts: data.FilterOptions, current: tuple[data.ParamFilter, ...]) -> tuple[data.ParamFilter, ...]:
    by_key = {pf.key: pf for pf in current}
    out: list[data.ParamFilter] = []
    with st.sidebar.expander("Parameters", expanded=bool(current)):
        for key, domain in sorted(opts.params.items()):
            pf = by_key.get(key)
            wkey = f"f_p.{key}"
            if isinstance(domain, tuple):
                lo, hi = float(domain[0]), float(domain[1])
                if lo == hi:  # one value: no slider; a link's filter on it is kept as given (not dropped)
                    if pf is not None:
                        st.caption(f"{key}: {pf.low}..{pf.high} (every run has {lo:.4g})")
                        out.append(pf)
                    continue
                want = (max(lo, pf.low) if pf and pf.low is not None else lo,
                        min(hi, pf.high) if pf and pf.high is not None else hi)
                if pf is not None and want[0] > want[1]:  # a link's range outside the data: kept, no rows
                    st.caption(f"{key}: {pf.low}..{pf.high} (outside the runs' {lo:.4g}..{hi:.4g})")
                    out.append(pf)
                    continue
                _seed(wkey, want)
                got = st.slider(key, min_value=lo, max_value=hi, step=(hi - lo) / 200, format="%.4g", key=wkey)
                if got[0] > lo or got[1] < hi:
                    out.append(data.ParamFilter(key=key, low=float(got[0]) if got[0] > lo else None,
                                                high=float(got[1]) if got[1] < hi else None))
            else:
                # a link's value the runs do not have stays selected (no rows), as in _multiselect
                chosen = list(pf.values) if pf else []
                values = [*(str(v) for v in domain), *(v for v in chosen if v not in {str(d) for d in domain})]
                if len(values) < 2:  # one value and no link filter on it: nothing to filter
                    if pf is not None:
                        out.append(pf)
                    continue
                _seed(wkey, chosen)
                picked = st.multiselect(key, values, key=wkey)
                if picked:
                    out.append(data.ParamFilter(key=key, values=tuple(picked)))
        # a URL filter on a parameter the store does not list (yet): kept, not silently dropped
        out += [pf for k, pf in by_key.items() if k not in opts.params]
    return tuple(out)


def _view_label(v: data.BenchmarkView) -> str:
    limit = v.spec.get("limit")
    return (f"{v.benchmark_version} · spec {v.compare_hash[:8]} · {v.n_completed} evaluations"
            + (f" · limit {limit}" if limit else "") + (" (default)" if v.is_default else ""))


def _sidebar(opts: data.FilterOptions, query: data.LeaderboardQuery, benchmarks: list[str]) -> data.LeaderboardQuery:
    f = query.filters
    sb = st.sidebar
    sb.header("Filters")
    sweeps = _multiselect("Sweep", "f_sweep", opts.sweeps, f.sweeps)
    _seed("f_run", ", ".join(f.runs))
    runs = state._items(sb.text_input("Run (names or globs, comma-separated)", key="f_run"))
    methods = _multiselect("Method", "f_method", opts.methods, f.methods)
    bases = _multiselect("Base model", "f_base", opts.base_models, f.base_models)
    tags = _multiselect("Tags", "f_tag", opts.tags, f.tags)
    weights = _multiselect("Weights", "f_weights", list(state.WEIGHTS), f.weights)
    params = _param_widgets(opts, f.params)
    specs: list[tuple[str, str]] = []
    chosen_specs = dict(f.specs)
    for bench, views in sorted(opts.views.items()):
        if len(views) < 2:
            continue
        hashes = [v.compare_hash for v in views]
        labels = {v.compare_hash: _view_label(v) for v in views}
        _seed(f"f_spec.{bench}", chosen_specs.get(bench) if chosen_specs.get(bench) in hashes else hashes[0])
        picked = sb.selectbox(f"{bench}: benchmark version and spec", hashes, format_func=labels.__getitem__,
                              key=f"f_spec.{bench}")
        if picked != hashes[0]:
            specs.append((bench, picked))
    # a link's spec that no view has: kept, so the page says so instead of silently showing another
    specs += [(b, h) for b, h in f.specs if h not in {v.compare_hash for v in opts.views.get(b, [])}]
    span = f"checkpoints from {opts.first_date} to {opts.last_date}" if opts.first_date else None
    _seed("f_since", f.since)
    _seed("f_until", f.until)
    since = sb.date_input("Checkpoints since", key="f_since", help=span)
    until = sb.date_input("Checkpoints until", key="f_until", help=span)
    sb.header("Order")
    sorts = [f"score:{b}" for b in benchmarks] + list(FIXED_SORTS) + [f"param:{k}" for k in sorted(opts.params)]
    current_sort = query.sort or (sorts[0] if benchmarks else "run")
    if current_sort not in sorts:
        sorts.append(current_sort)
    _seed("f_sort", current_sort)
    sort = sb.selectbox("Sort by", sorts, key="f_sort")
    _seed("f_desc", query.descending)
    desc = sb.checkbox("Descending", key="f_desc")
    _seed("f_size", query.page_size if query.page_size in PAGE_SIZES else 50)
    size = sb.selectbox("Rows per page", PAGE_SIZES, key="f_size")
    filters = data.Filters(sweeps=sweeps, runs=runs, methods=methods, base_models=bases, tags=tags, weights=weights,
                           params=params, specs=tuple(sorted(specs)),
                           since=since if isinstance(since, date) else None,
                           until=until if isinstance(until, date) else None)
    new = data.LeaderboardQuery(filters=filters, sort="" if sort == (f"score:{benchmarks[0]}" if benchmarks else "")
                                else sort, descending=bool(desc), page=query.page, page_size=int(size))
    if dataclasses.replace(new, page=0) != dataclasses.replace(query, page=0):
        new = dataclasses.replace(new, page=0)  # other rows: back to the first page
    return new


def _sync_url(query: data.LeaderboardQuery) -> None:
    """Write the page state into the URL (so a link reproduces it) when it changed."""
    want = {"view": "leaderboard", **state.leaderboard_params(query)}
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def _rank_map(ctx: Ctx, query: data.LeaderboardQuery, sort_bench: str | None) -> dict[str, Any]:
    """Rank intervals of the top RANK_LIMIT rows of this sort (score sorts only: a rank is by score)."""
    if sort_bench is None or (query.sort and not query.sort.startswith("score:")) or not query.descending:
        return {}
    top = ctx.read(data.leaderboard, dataclasses.replace(query, page=0, page_size=RANK_LIMIT))
    if not top.rows:
        return {}
    return ctx.read(data.rank_rows, top.rows, sort_bench, RANK_LIMIT)


def _table(page: data.LeaderboardPage, rows: list[data.LeaderboardRow], ranks: dict[str, Any],
           offset: int) -> pd.DataFrame:
    records = []
    for i, r in enumerate(rows):
        rec: dict[str, Any] = {}
        ri = ranks.get(r.key)
        if r.is_base:
            rec["rank"], rec["rank interval"], rec["tie group"] = "base", "", None
        else:
            rec["rank"] = str(ri.rank if ri else offset + i + 1)
            rec["rank interval"] = (f"{ri.low}" if ri.low == ri.high else f"{ri.low}–{ri.high}") if ri else ""
            rec["tie group"] = ri.group if ri else None
        rec["row"] = common.row_label(r)
        for b in page.benchmarks:
            s = r.scores.get(b)
            rec[b] = None if s is None else round(s.score, 4)
            rec[f"{b} 95% CI"] = "" if s is None else fmt_ci(s.ci_low, s.ci_high)
        rec["GPU-h"] = None if r.gpu_hours is None or r.is_base else round(r.gpu_hours, 3)
        rec["reward/GPU-h"] = None if r.reward_per_gpu_hour is None else round(r.reward_per_gpu_hour, 4)
        rec["weights"] = r.weights
        rec["run"] = r.run_name or "(base model)"
        rec["sweep/trial"] = f"{r.sweep_name}#{r.trial_number}" if r.sweep_name else ""
        rec["step"] = r.step
        rec["method"] = method_label(r.method) if r.method else ""
        rec["base model"] = r.base_model or ""
        rec["date"] = common.fmt_date(r.created_at)
        rec["spec"] = "full"
        rec["page"] = (state.url("checkpoint", run=r.run_name, step=r.step) if r.run_name and r.step is not None
                       else None)
        rec["key"] = r.key
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _column_config(df: pd.DataFrame, benchmarks: list[str]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "page": st.column_config.LinkColumn("page", display_text="open"),
        "key": None,  # hidden: the row id (compare links)
        "tie group": st.column_config.NumberColumn("tie group", help="rows in one group are statistically tied"),
    }
    for b in benchmarks:
        values = df[b].dropna() if b in df else pd.Series(dtype=float)
        if len(values) and values.between(0.0, 1.0).all():  # accuracies, similarities: a bar reads faster
            cfg[b] = st.column_config.ProgressColumn(b, format="%.4f", min_value=0.0, max_value=1.0)
        else:
            cfg[b] = st.column_config.NumberColumn(b, format="%.4f")
    return cfg


def _inloop(ctx: Ctx, filters: data.Filters) -> None:
    rows = ctx.read(data.inloop_rows, filters, 200)
    if not rows:
        return
    st.subheader("In-loop metrics (no benchmark evaluation yet)")
    st.caption("The trainer's own eval/* metrics at these checkpoints: a different measurement from the "
               "benchmark scores above, never ranked with them.")
    df = pd.DataFrame.from_records([{"run": r.run_name, "sweep": r.sweep_name or "", "step": r.step, "kind": "in-loop",
                                     **{k: round(v, 4) for k, v in sorted(r.metrics.items())}} for r in rows])
    st.dataframe(df, hide_index=True, key="inloop_table")


def _partial(ctx: Ctx, filters: data.Filters) -> None:
    rows = ctx.read(data.partial_evaluations, filters, 200)
    if not rows:
        return
    st.subheader("Partial evaluations (--limit): not ranked")
    st.caption("Scored on the first prompts of a set only: comparable with each other, never with full evaluations.")
    records = []
    for r in rows:
        for b, s in sorted(r.scores.items()):
            records.append({"row": common.row_label(r), "benchmark": b, "score": round(s.score, 4),
                            "95% CI": fmt_ci(s.ci_low, s.ci_high), "samples": s.n, "spec": "partial",
                            "page": state.url("checkpoint", run=r.run_name, step=r.step) if r.run_name else None})
    st.dataframe(pd.DataFrame.from_records(records), hide_index=True, key="partial_table",
                 column_config={"page": st.column_config.LinkColumn("page", display_text="open")})


def _compare_picker(page: data.LeaderboardPage, rows: list[data.LeaderboardRow], sort_bench: str | None,
                    specs: tuple[tuple[str, str], ...]) -> None:
    choices = {common.row_label(r): r.key for r in [*page.base_rows, *rows]}
    picked = st.multiselect("Compare 2-4 rows", list(choices), max_selections=state.MAX_COMPARE, key="compare_pick")
    if len(picked) >= 2:
        link = state.url("compare", rows=[choices[p] for p in picked], benchmark=sort_bench,
                         **{f"spec.{b}": h for b, h in specs})  # the same views as this page
        st.markdown(f"[Compare the {len(picked)} selected rows →]({link})")


def render(ctx: Ctx) -> None:
    st.title("Leaderboard")
    opts: data.FilterOptions = ctx.read(data.filter_options)
    benchmarks = sorted(opts.views)
    query = _sidebar(opts, ctx.page.query, benchmarks)
    try:
        # the total depends on the filters only: cached apart, sorting and paging never recount
        total: int = ctx.read(data.leaderboard_total, query.filters)
        if query.page * query.page_size >= total and query.page > 0:  # a link past the last page
            query = dataclasses.replace(query, page=0)
        page: data.LeaderboardPage = ctx.read(data.leaderboard, query)
    except ValueError as exc:
        st.error(f"bad filter: {exc}")
        return
    _sync_url(query)
    if not page.benchmarks and not page.base_rows:
        common.empty_state()
        _inloop(ctx, query.filters)
        return
    sort_bench = (query.sort.split(":", 1)[1] if query.sort.startswith("score:")
                  else (page.benchmarks[0] if page.benchmarks else None))
    views = ", ".join(f"{b}: {v.benchmark_version} spec {v.compare_hash[:8]}" for b, v in sorted(page.views.items()))
    st.caption(f"One row per checkpoint and weights; scores with 95% bootstrap CIs ({views}). "
               f"Rank interval and tie group from one joint paired bootstrap over the top {RANK_LIMIT} rows by "
               f"{sort_bench or 'score'}: rows sharing a tie group are statistically tied.")
    ranks = _rank_map(ctx, query, sort_bench)
    n_pages = max(1, -(-total // query.page_size))
    first = query.page * query.page_size
    st.markdown(f"**{total} rows** · showing {first + 1 if page.rows else 0}–{first + len(page.rows)} · "
                f"page {query.page + 1} of {n_pages}")
    df = _table(page, [*page.base_rows, *page.rows], ranks, first - len(page.base_rows))
    st.dataframe(df, hide_index=True, column_config=_column_config(df, page.benchmarks), key="leaderboard_table")
    if n_pages > 1:
        cols = st.columns(3)
        for col, page_no, text in ((cols[0], query.page - 1, "← previous page"), (cols[2], query.page + 1,
                                                                                  "next page →")):
            if 0 <= page_no < n_pages:
                link = state.url("leaderboard", **{**state.leaderboard_params(query), "page": page_no})
                col.markdown(f"[{text}]({link})")
    if not page.rows:
        st.info("No checkpoint matches these filters." if page.benchmarks else
                "Only the base model has been evaluated so far.")
        if not page.benchmarks:
            st.code(common.SCHEDULE_HINT, language="bash")
    _compare_picker(page, page.rows, sort_bench, query.filters.specs)
    _inloop(ctx, query.filters)
    _partial(ctx, query.filters)
