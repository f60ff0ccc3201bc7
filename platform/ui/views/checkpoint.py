"""The checkpoint / run page: its evaluations, GenEval's per-tag breakdown, curves over the run's
steps with CI bands, the resolved config and its diff against another run, links, GPU-hours."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from awm_platform.store import NotFoundError
from awm_platform.ui import data
from awm_platform.ui.views import common, state
from awm_platform.ui.views.common import Ctx, fmt, fmt_ci
from trainers.awm.config import method_label


def _evaluations(detail: data.CheckpointDetail) -> None:
    st.subheader("Evaluations")
    if not detail.evaluations:
        st.info("This checkpoint has no benchmark evaluation yet. Schedule one with:")
        st.code(common.SCHEDULE_HINT, language="bash")
        return
    records = [{"id": e.id, "benchmark": e.benchmark, "weights": e.weights, "status": e.status,
                "score": None if e.score is None else round(e.score, 4), "95% CI": fmt_ci(e.ci_low, e.ci_high),
                "samples": e.n, "spec": "partial" if e.partial else "full", "version": e.benchmark_version,
                "view": e.compare_hash[:8], "error": common.safe(e.error) if e.error else ""}
               for e in detail.evaluations]
    st.dataframe(pd.DataFrame.from_records(records), hide_index=True, key="evaluations_table")
    for e in detail.evaluations:
        if e.status == "FAILED":
            st.error(f"{e.benchmark} ({e.weights}) evaluation {e.id} FAILED: {common.safe(e.error or '')} — "
                     f"retry it with `awm eval retry {e.id}`")


def _geneval(ctx: Ctx, detail: data.CheckpointDetail) -> None:
    evs = [e for e in detail.evaluations if e.benchmark == "geneval" and e.status == "COMPLETED"]
    if not evs:
        return
    st.subheader("GenEval per task")
    records = []
    for e in evs:
        fig = ctx.read(data.geneval_figures, e.id)
        label = f"{e.weights}{' (partial)' if e.partial else ''}"
        cols = st.columns(3)
        cols[0].metric(f"overall ({label})", fmt(e.score))
        cols[1].metric("correct images", f"{fig['correct_images']}/{fig['n_images']}")
        cols[2].metric("correct prompts", f"{fig['correct_prompts']}/{fig['n_prompts']}")
        records += [{"task": t, "accuracy": acc, "weights": label} for t, acc in sorted(fig["per_tag"].items())]
    df = pd.DataFrame.from_records(records)
    st.altair_chart(alt.Chart(df).mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("task:N"), color="weights:N",
        yOffset="weights:N", tooltip=["task", "weights", alt.Tooltip("accuracy:Q", format=".3f")]),
        width="stretch")
    st.dataframe(df.pivot(index="task", columns="weights", values="accuracy").round(4), key="per_tag_table")


def _curves(ctx: Ctx, run: str, step: int) -> None:
    curves: data.RunCurves = ctx.read(data.run_curves, run)
    st.subheader("Over training")
    charts: list[Any] = []
    bench = [{"step": s, "score": v, "lo": lo, "hi": hi, "series": f"{b} ({w})"}
             for (b, w), pts in sorted(curves.benchmarks.items()) for s, v, lo, hi in pts]
    if bench:
        df = pd.DataFrame.from_records(bench)
        base = alt.Chart(df).encode(x="step:Q", color="series:N")
        band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title="benchmark score (95% CI)"), y2="hi:Q")
        line = base.mark_line(point=True).encode(y="score:Q", tooltip=["series", "step", "score", "lo", "hi"])
        rule = alt.Chart(pd.DataFrame({"step": [step]})).mark_rule(strokeDash=[4, 4]).encode(x="step:Q")
        charts.append(("Benchmark scores", band + line + rule))
    lines = [{"step": s, "value": v, "series": "train reward"} for s, v in curves.train_reward]
    lines += [{"step": s, "value": v, "series": f"{k} (in-loop)"} for k, pts in sorted(curves.inloop.items())
              for s, v in pts]
    if lines:
        df = pd.DataFrame.from_records(lines)
        charts.append(("Training reward and in-loop eval", alt.Chart(df).mark_line(point=True).encode(
            x="step:Q", y="value:Q", color="series:N", tooltip=["series", "step", "value"])))
    if not charts:
        st.caption("No metric logged for this run yet.")
    for title, chart in charts:
        st.caption(title)
        st.altair_chart(chart, width="stretch")


def _config(ctx: Ctx, detail: data.CheckpointDetail) -> None:
    st.subheader("Config")
    run = detail.run
    others = [r for r in ctx.read(data.filter_options).runs if r != run.name]
    default = ctx.page.vs if ctx.page.vs in others else None
    if default is None and run.sweep_name:  # compare with the sweep's first other trial by default
        default = next((r for r in others if r.startswith(f"{run.sweep_name}-")), None)
    options = ["(none)", *others]
    vs = st.selectbox("Diff against run", options, index=options.index(default) if default else 0, key="diff_vs")
    if vs != "(none)":
        try:
            other: data.RunInfo = ctx.read(data.run_info, vs)
        except NotFoundError as exc:
            st.error(str(exc))
        else:
            diff = data.config_diff(run.resolved_config, other.resolved_config)
            st.caption(f"{len(diff)} keys differ between {run.name} and {vs} "
                       f"([open {vs}]({state.url('checkpoint', run=vs, step=detail.step)}))")
            st.dataframe(pd.DataFrame([{"key": k, run.name: str(a), vs: str(b)} for k, a, b in diff]),
                         hide_index=True, key="config_diff")
    with st.expander("Resolved config", expanded=False):
        st.json(run.resolved_config, expanded=False)


def render(ctx: Ctx) -> None:
    run_name, step = ctx.page.run, ctx.page.step
    assert run_name is not None and step is not None  # state.parse insists
    try:
        detail: data.CheckpointDetail = ctx.read(data.checkpoint_detail, run_name, step)
    except NotFoundError as exc:
        st.error(f"{exc}: see the [leaderboard]({state.url('leaderboard')}) for the checkpoints there are")
        return
    run = detail.run
    st.title(f"{run.name} @ step {step}")
    # the leaderboard's own figure: the run's GPU-hours * step / its last checkpointed step
    rows = ctx.read(data.leaderboard, data.LeaderboardQuery(filters=data.Filters(runs=(run.name,)), sort="step",
                                                            page_size=data.MAX_PAGE_SIZE)).rows
    to_step = next((r.gpu_hours for r in rows if r.step == step), None)
    cols = st.columns(5)
    cols[0].metric("run status", run.status)
    cols[1].metric("method", method_label(run.method))
    cols[2].metric("GPU-hours (run)", fmt(run.gpu_hours, 2))
    cols[3].metric("GPU-hours to this step", fmt(to_step, 2))
    cols[4].metric("sweep / trial", f"{run.sweep_name}#{run.trial_number}" if run.sweep_name else "–")
    st.caption(f"base model {run.base_model or '–'} · checkpoint sha256 {detail.sha256[:16]}…")
    links = [f"[gallery of {run.name}]({state.url('gallery', run=run.name)})"]
    if run.sweep_name:
        links.append(f"[sweep {run.sweep_name}]({state.url('sweeps', sweep=run.sweep_name)})")
    mlflow = common.mlflow_link(ctx.tracking_uri, run.mlflow_run_id)
    if mlflow:
        links.append(f"[MLflow run]({mlflow})")
    st.markdown(" · ".join(links))
    st.markdown(f"Run directory: `{common.safe(run.output_dir)}` · checkpoint: `{common.safe(detail.checkpoint_path)}`")
    if run.mlflow_run_id and not mlflow:
        st.caption(f"MLflow run {run.mlflow_run_id}: `{common.mlflow_hint(ctx.tracking_uri)}`")
    _evaluations(detail)
    _geneval(ctx, detail)
    _curves(ctx, run.name, step)
    _config(ctx, detail)
