"""Sweeps: every study, and one study's trials (parameters, objective, state), the best trial (the
Pareto front with two objectives), parallel coordinates, parameter-vs-objective plots, GPU-hours,
and how to open optuna-dashboard and MLflow's parent run."""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from awm_platform.store import NotFoundError
from awm_platform.ui import data
from awm_platform.ui.views import common, state
from awm_platform.ui.views.common import Ctx, fmt

STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#2ca02c",
                "WAITING": "#7f7f7f"}


def _list(ctx: Ctx) -> None:
    st.title("Sweeps")
    sweeps: list[data.SweepInfo] = ctx.read(data.sweep_list)
    if not sweeps:
        st.info("No sweep in this store yet. Start one with `awm sweep start CONFIG` (configs/quickstart_sweep.yaml).")
        return
    st.dataframe(pd.DataFrame.from_records([{
        "sweep": s.name, "page": state.url("sweeps", sweep=s.name), "status": s.status, "trials": s.n_trials,
        "completed": s.n_completed, "pruned": s.n_pruned, "failed": s.n_failed, "GPU-h": round(s.gpu_hours, 2),
        "created": common.fmt_date(s.created_at)} for s in sweeps]), hide_index=True, key="sweeps_table",
        column_config={"page": st.column_config.LinkColumn("page", display_text="open")})


def _objective_names(detail: data.SweepDetail) -> list[str]:
    return [str(o.get("metric") or f"objective {i}") for i, o in enumerate(detail.objectives)] or ["objective"]


def _trials_frame(detail: data.SweepDetail) -> pd.DataFrame:
    names = _objective_names(detail)
    best = set(detail.best)
    records = []
    for t in detail.trials:
        rec: dict[str, Any] = {"trial": t.number, "state": t.state, "best": "★" if t.number in best else "",
                               "run": t.run_name or "", "run status": t.run_status or "",
                               "GPU-h": round(t.gpu_hours, 3)}
        for i, name in enumerate(names):
            rec[name] = None if not t.values or i >= len(t.values) else t.values[i]
        for k, v in sorted(t.params.items()):
            rec[k] = v
        rec["page"] = state.url("leaderboard", run=t.run_name) if t.run_name else None
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _charts(detail: data.SweepDetail, df: pd.DataFrame) -> None:
    names = _objective_names(detail)
    params = sorted({k for t in detail.trials for k in t.params})
    obj = names[0]
    if not params or df.empty or obj not in df or df[obj].isna().all():
        return
    st.subheader("Parallel coordinates")
    st.caption(f"Each line is a trial; every axis scaled to [0, 1] over the trials; color: {obj}. "
               "Pruned and failed trials are drawn dashed.")
    axes = [*params, obj]
    long: list[dict[str, Any]] = []
    for _, row in df.iterrows():
        for a in axes:
            col = pd.to_numeric(df[a], errors="coerce")
            lo, hi = col.min(), col.max()
            v = pd.to_numeric(pd.Series([row[a]]), errors="coerce").iloc[0]
            if pd.isna(v) or pd.isna(lo):
                continue
            long.append({"trial": int(row["trial"]), "axis": a, "scaled": 0.5 if hi == lo else (v - lo) / (hi - lo),
                         "value": float(v), "state": row["state"],
                         "objective": None if pd.isna(row[obj]) else float(row[obj])})
    pc = pd.DataFrame.from_records(long)
    st.altair_chart(alt.Chart(pc).mark_line(point=True).encode(
        x=alt.X("axis:N", sort=axes, title=None), y=alt.Y("scaled:Q", title=None), detail="trial:N",
        color=alt.Color("objective:Q", scale=alt.Scale(scheme="viridis")),
        strokeDash=alt.condition(alt.datum.state == "COMPLETE", alt.value([1, 0]), alt.value([4, 4])),
        tooltip=["trial", "state", "axis", "value", "objective"]), width="stretch")
    st.subheader("Parameter vs objective")
    for p in params:
        sub = df[["trial", "state", p, obj]].rename(columns={p: "param", obj: "objective"})
        st.altair_chart(alt.Chart(sub).mark_circle(size=80).encode(
            x=alt.X("param:Q", title=p, scale=alt.Scale(type="log" if _is_log(detail, p) else "linear")),
            y=alt.Y("objective:Q", title=obj),
            color=alt.Color("state:N", scale=alt.Scale(domain=list(STATE_COLORS), range=list(STATE_COLORS.values()))),
            tooltip=["trial", "state", "param", "objective"]), width="stretch")
    if len(names) == 2 and len(df.dropna(subset=names)) > 0:
        st.subheader("Pareto front")
        front = set(detail.best)
        pf = df.dropna(subset=names).rename(columns={names[0]: "a", names[1]: "b"})
        pf["on front"] = pf["trial"].isin(front)
        st.caption(f"{names[0]} ({detail.objectives[0].get('direction')}) vs {names[1]} "
                   f"({detail.objectives[1].get('direction')}); the non-dominated trials: "
                   f"{', '.join(map(str, sorted(front))) or 'none'}")
        chart = alt.Chart(pf).mark_circle(size=90).encode(
            x=alt.X("a:Q", title=names[0]), y=alt.Y("b:Q", title=names[1]), color="on front:N",
            tooltip=["trial", "state", "a", "b"])
        line = alt.Chart(pf[pf["on front"]].sort_values("a")).mark_line(strokeDash=[3, 3]).encode(x="a:Q", y="b:Q")
        st.altair_chart(chart + line, width="stretch")


def _is_log(detail: data.SweepDetail, param: str) -> bool:
    spec = detail.search_space.get(param)
    return isinstance(spec, dict) and bool(spec.get("log"))


def _detail(ctx: Ctx, name: str) -> None:
    try:
        detail: data.SweepDetail = ctx.read(data.sweep_detail, name)
    except NotFoundError as exc:
        st.error(f"{exc}: [all sweeps]({state.url('sweeps')})")
        return
    info = detail.info
    st.title(f"Sweep {info.name}")
    cols = st.columns(6)
    cols[0].metric("status", info.status)
    cols[1].metric("trials", info.n_trials)
    cols[2].metric("completed", info.n_completed)
    cols[3].metric("pruned", info.n_pruned)
    cols[4].metric("failed", info.n_failed)
    cols[5].metric("GPU-hours", fmt(info.gpu_hours, 2))
    if detail.error:
        st.warning(f"{common.safe(detail.error)}. Trials below come from the platform store's runs (no "
                   "parameters or objective values).")
    objectives = ", ".join(f"{o.get('metric')} ({o.get('direction')})" for o in detail.objectives)
    names = _objective_names(detail)
    best = [t for t in detail.trials if t.number in set(detail.best)]
    if best:
        what = "Pareto front" if len(detail.objectives) > 1 else "Best trial"
        st.markdown(f"**{what}** ({objectives}): " + "; ".join(
            f"trial {t.number} ({t.run_name}) " + ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, t.values or [])
                                                          if math.isfinite(v))
            for t in best))
    st.subheader("Trials")
    df = _trials_frame(detail)
    st.dataframe(df, hide_index=True, key="trials_table",
                 column_config={"page": st.column_config.LinkColumn("checkpoints", display_text="leaderboard")})
    _charts(detail, df)
    st.subheader("Elsewhere")
    st.markdown(f"Leaderboard of this sweep: [{name}]({state.url('leaderboard', sweep=name)})")
    st.markdown("Optuna dashboard (the storage URL as the store keeps it; put the password back if it shows `***`):")
    st.code(f"optuna-dashboard '{detail.optuna_storage}'", language="bash")
    if detail.mlflow_parent_run_id:
        link = common.mlflow_link(ctx.tracking_uri, detail.mlflow_parent_run_id)
        st.markdown(f"MLflow parent run: [{detail.mlflow_parent_run_id}]({link})" if link else
                    f"MLflow parent run `{detail.mlflow_parent_run_id}`: `{common.mlflow_hint(ctx.tracking_uri)}`")


def render(ctx: Ctx) -> None:
    if ctx.page.sweep:
        _detail(ctx, ctx.page.sweep)
    else:
        _list(ctx)
