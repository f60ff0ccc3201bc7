"""Compare 2-4 leaderboard rows: scores with paired differences and p-values against the first row
(`awm_platform.evals.stats.compare_evaluations`), GenEval's per-task bars, and a prompt x row
image grid on the same seeds (a fixed prompt panel, or the prompts where the rows disagree most)
with each image's score."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from awm_platform.evals.stats import ComparisonError, compare_evaluations
from awm_platform.ui import data, media
from awm_platform.ui.views import common
from awm_platform.ui.views.common import Ctx, fmt_ci

PANEL_SIZE = 6
N_BOOT = 2000  # the paired bootstrap's resamples (a few ms with tens of prompts)


@st.cache_data(show_spinner=False, max_entries=256)
def _paired(url: str, marker: str, a_id: int, b_id: int) -> dict[str, Any]:
    return compare_evaluations(common.open_store(url), a_id, b_id, n_boot=N_BOOT, n_perm=N_BOOT).to_dict()


def _label(ev: data.EvalInfo) -> str:
    if ev.weights == "base":
        return f"base model {ev.target.removeprefix('base:')}"
    where = f"{ev.run_name}@{ev.step}" if ev.run_name else ev.target
    return where if ev.weights == "policy" else f"{where} ({ev.weights})"


def render(ctx: Ctx) -> None:
    st.title("Compare")
    keys = list(ctx.page.rows)
    opts: data.FilterOptions = ctx.read(data.filter_options)
    if not opts.views:
        common.empty_state()
        return
    benchmarks = sorted(opts.views)
    bench = ctx.page.benchmark if ctx.page.benchmark in benchmarks else benchmarks[0]
    if ctx.page.benchmark and ctx.page.benchmark not in benchmarks:
        st.warning(f"benchmark {ctx.page.benchmark!r} has no completed evaluation; showing {bench}")
    bench = st.selectbox("Benchmark", benchmarks, index=benchmarks.index(bench), key="cmp_benchmark")
    chosen = dict(ctx.page.query.filters.specs).get(bench)
    views = opts.views[bench]  # the spec chosen on the leaderboard (?spec.B=...), else the default view
    view = next((v for v in views if v.compare_hash == chosen), views[0])
    st.caption(f"{bench} {view.benchmark_version}, spec {view.compare_hash[:8]}: the same prompts, seeds and sampler "
               "for every row, so the samples are paired.")
    evs: dict[str, data.EvalInfo] = ctx.read(data.comparable_evaluations, keys, bench, view.compare_hash)
    missing = [k for k in keys if k not in evs]
    if missing:
        st.warning(f"{len(missing)} of the rows have no completed {bench} evaluation in this view: "
                   + ", ".join(k.split(':')[0][:12] + '…' for k in missing))
    present = [k for k in keys if k in evs]
    if len(present) < 2:
        st.error(f"nothing to compare on {bench}: fewer than 2 of the rows have a completed evaluation there")
        return
    labels = {k: _label(evs[k]) for k in present}
    ref = present[0]
    _table(ctx, present, evs, labels, ref)
    _per_tag(present, evs, labels)
    _grid(ctx, present, evs, labels)


def _table(ctx: Ctx, keys: list[str], evs: dict[str, data.EvalInfo], labels: dict[str, str], ref: str) -> None:
    st.subheader("Scores and paired differences")
    st.caption(f"Differences are row minus {labels[ref]} on the shared (prompt, sample) pairs: paired bootstrap "
               "95% CI over prompts and a two-sided sign-flip permutation p-value (awm eval compare).")
    records = []
    for k in keys:
        ev = evs[k]
        rec: dict[str, Any] = {"row": labels[k], "score": round(ev.score or 0.0, 4), "95% CI": fmt_ci(ev.ci_low, ev.ci_high),
                               "samples": ev.n}
        if k == ref:
            rec.update({"diff": None, "diff 95% CI": "reference", "p-value": None, "verdict": ""})
        else:
            try:
                pc = _paired(ctx.url, ctx.marker, evs[ref].id, ev.id)
            except ComparisonError as exc:
                rec.update({"diff": None, "diff 95% CI": common.safe(exc), "p-value": None, "verdict": "not comparable"})
            else:
                rec.update({"diff": round(pc["diff"], 4), "diff 95% CI": fmt_ci(pc["ci_low"], pc["ci_high"]),
                            "p-value": round(pc["p_value"], 4),
                            "verdict": "tied" if pc["tied"] else ("better" if pc["diff"] > 0 else "worse")})
        records.append(rec)
    st.dataframe(pd.DataFrame.from_records(records), hide_index=True, key="compare_table")


def _per_tag(keys: list[str], evs: dict[str, data.EvalInfo], labels: dict[str, str]) -> None:
    records = [{"tag": t, "accuracy": float(v), "row": labels[k]} for k in keys
               for t, v in sorted((evs[k].sub_scores.get("per_tag") or {}).items())]
    if not records:
        return
    st.subheader("Per task")
    df = pd.DataFrame.from_records(records)
    st.altair_chart(alt.Chart(df).mark_bar().encode(
        x=alt.X("tag:N", title=None), y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])), color="row:N",
        xOffset="row:N", tooltip=["row", "tag", alt.Tooltip("accuracy:Q", format=".3f")]), width="stretch")


def _grid(ctx: Ctx, keys: list[str], evs: dict[str, data.EvalInfo], labels: dict[str, str]) -> None:
    st.subheader("Images: prompt x row, same seeds")
    ids = [evs[k].id for k in keys]
    matrix: data.SampleMatrix = ctx.read(data.sample_matrix, ids)
    if not matrix.keys:
        st.info("These evaluations share no (prompt, sample) pair.")
        return
    default = 1 if ctx.page.panel == "disagree" else 0
    mode = st.radio("Prompts", ["fixed panel", "where they disagree most"], index=default, horizontal=True,
                    key="cmp_panel")
    prompts = sorted({p for p, _ in matrix.keys})
    shown = (data.disagreement(matrix, PANEL_SIZE) if mode.startswith("where") else prompts[:PANEL_SIZE])
    roots = ctx.roots([evs[k].images_dir for k in keys])
    header = st.columns([2] + [3] * len(keys))
    header[0].markdown("**prompt**")
    for col, k in zip(header[1:], keys):
        col.markdown(f"**{labels[k]}**")
    for p in shown:
        cols = st.columns([2] + [3] * len(keys))
        tag = matrix.tags.get(p)
        cols[0].markdown(f"#{p}{f' · {tag}' if tag else ''}  \n{matrix.prompts.get(p, '')}")
        seed = matrix.seeds.get((p, 0))
        if seed is not None:
            cols[0].caption(f"seed {seed}")
        for col, k in zip(cols[1:], keys):
            ev = evs[k]
            score = matrix.scores[ev.id].get((p, 0))
            caption = f"score {score:.3f}" if score is not None else "no score"
            try:
                path = media.sample_image(ev.images_dir, p, 0, roots)
            except media.MediaError as exc:
                col.warning(f"image not served: {common.safe(exc)}")
                continue
            if path is None:
                col.caption(f"(no image) {caption}")
            else:
                col.image(str(path), caption=caption, width="stretch")
