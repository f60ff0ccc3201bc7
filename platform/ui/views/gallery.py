"""Gallery: one run's fixed prompt panel across its evaluated steps (the policy changing over
training), same prompts and seeds at every step, each image with its score."""

from __future__ import annotations

import streamlit as st

from awm_platform.ui import data, media
from awm_platform.ui.views import common, state
from awm_platform.ui.views.common import Ctx

PANEL_SIZE = 4
MAX_STEPS = 8  # columns: evenly spread over the run's evaluated steps


def _spread(items: list[data.LeaderboardRow], n: int) -> list[data.LeaderboardRow]:
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def render(ctx: Ctx) -> None:
    run = ctx.page.run
    assert run is not None  # state.parse insists
    st.title(f"Gallery: {run}")
    page: data.LeaderboardPage = ctx.read(data.leaderboard, data.LeaderboardQuery(
        filters=data.Filters(runs=(run,), weights=("policy",)), sort="step", descending=False,
        page_size=data.MAX_PAGE_SIZE))
    if not page.rows:
        st.info(f"Run {run!r} has no completed benchmark evaluation (or no such run). Evaluate its checkpoints with:")
        st.code(common.SCHEDULE_HINT, language="bash")
        return
    benchmarks = [b for b in page.benchmarks if any(b in r.scores for r in page.rows)]
    bench = ctx.page.benchmark if ctx.page.benchmark in benchmarks else benchmarks[0]
    bench = st.selectbox("Benchmark", benchmarks, index=benchmarks.index(bench), key="gallery_benchmark")
    rows = _spread([r for r in page.rows if bench in r.scores], MAX_STEPS)
    evs = [ctx.read(data.evaluation_info, r.scores[bench].evaluation_id) for r in rows]
    matrix: data.SampleMatrix = ctx.read(data.sample_matrix, [e.id for e in evs])
    prompts = sorted({p for p, _ in matrix.keys})[:PANEL_SIZE]
    st.caption(f"{bench} {page.views[bench].benchmark_version}: prompts {', '.join(map(str, prompts))}, sample 0, "
               f"same seed at every step; score under each image. "
               f"[Leaderboard of this run]({state.url('leaderboard', run=run, sort='step', desc='0')})")
    roots = ctx.roots([e.images_dir for e in evs])
    header = st.columns([2] + [3] * len(rows))
    header[0].markdown("**prompt**")
    for col, r in zip(header[1:], rows):
        col.markdown(f"**[step {r.step}]({state.url('checkpoint', run=run, step=r.step)})**  \n"
                     f"{r.scores[bench].score:.3f}")
    for p in prompts:
        cols = st.columns([2] + [3] * len(rows))
        cols[0].markdown(f"#{p}  \n{matrix.prompts.get(p, '')}")
        for col, ev in zip(cols[1:], evs):
            score = matrix.scores[ev.id].get((p, 0))
            try:
                path = media.sample_image(ev.images_dir, p, 0, roots)
            except media.MediaError as exc:
                col.warning(f"image not served: {common.safe(exc)}")
                continue
            caption = f"score {score:.3f}" if score is not None else "no score"
            if path is None:
                col.caption(f"(no image) {caption}")
            else:
                col.image(str(path), caption=caption, width="stretch")
