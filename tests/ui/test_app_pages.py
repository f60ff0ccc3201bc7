"""The checkpoint, compare, gallery and sweeps pages in AppTest against the seeded store; values
checked against the store, `stats.compare_evaluations` and the Optuna studies themselves."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from awm_platform.evals.stats import compare_evaluations
from awm_platform.ui.views import compare as compare_view
from awm_platform.ui.views import gallery as gallery_view
from tests.ui.conftest import (
    EMA_RUN,
    FAILED_RUN,
    FAILED_STEP,
    GAMMA_STORAGE,
    N_TRIALS,
    SECRET,
    STEPS,
    TRIAL_STATES,
    Seeded,
    page_text,
)

Open = Callable[..., AppTest]


def _df(at: AppTest, column: str) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if column in df.value.columns)


def _key(seeded: Seeded, run: str | None, step: int | None, weights: str = "policy") -> str:
    with seeded.store() as store:
        ev = store.get_evaluation(seeded.eval_ids[(run, step, "ocr", weights)])
    return f"{ev.checkpoint_sha256}:{weights}"


# ----------------------------------------------------------------------- checkpoint ----
def test_checkpoint_page_shows_its_evaluations_geneval_figures_curves_and_config(seeded: Seeded,
                                                                                 open_page: Open) -> None:
    at = open_page(view="checkpoint", run=EMA_RUN, step=50)
    assert at.title[0].value == f"{EMA_RUN} @ step 50"
    evals = _df(at, "benchmark")
    with seeded.store() as store:
        stored = {(e.benchmark, e.spec["weights"]): e for e in store.list_evaluations(run_name=EMA_RUN)
                  if e.step == 50}
        run = store.get_run(EMA_RUN)
        geneval = store.get_evaluation(seeded.eval_ids[(EMA_RUN, 50, "geneval", "policy")])
        samples = store.get_sample_scores(geneval.id)
        other = store.get_run("alpha-t1")
    assert len(evals) == len(stored) == 6  # 3 benchmarks x policy + EMA
    for _, r in evals.iterrows():
        assert r["score"] == pytest.approx(round(stored[(r["benchmark"], r["weights"])].score, 4))
    metrics = {m.label: m.value for m in at.metric}
    correct = sum(1 for s in samples if s.score == 1.0)
    prompts = {s.prompt_index for s in samples}
    any_ok = {s.prompt_index for s in samples if s.score == 1.0}
    assert metrics["correct images"] == f"{correct}/{len(samples)}"
    assert metrics["correct prompts"] == f"{len(any_ok)}/{len(prompts)}"
    assert metrics["overall (policy)"] == f"{geneval.score:.3f}"
    assert metrics["GPU-hours (run)"] == f"{run.gpu_hours:.2f}"
    assert metrics["GPU-hours to this step"] == f"{run.gpu_hours * 50 / 110:.2f}"  # last checkpoint: step 110
    per_tag = _df(at, "policy")
    assert dict(per_tag["policy"]) == pytest.approx({t: round(v, 4) for t, v in geneval.sub_scores["per_tag"].items()})
    assert len(at.get("vega_lite_chart")) >= 3  # per-tag bars, benchmark curves with CI bands, reward curves
    text = page_text(at)
    assert f"http://127.0.0.1:5999/#/runs/{run.mlflow_run_id}" in text and SECRET not in text
    diff = _df(at, "key")
    assert at.selectbox(key="diff_vs").value == "alpha-t1"
    beta = diff[diff["key"] == "train.beta"].iloc[0]
    assert beta[EMA_RUN] == str(run.resolved_config["train"]["beta"])
    assert beta["alpha-t1"] == str(other.resolved_config["train"]["beta"])


def test_checkpoint_page_says_why_an_evaluation_failed(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="checkpoint", run=FAILED_RUN, step=FAILED_STEP)
    assert any(f"evaluation {seeded.failed_id} FAILED: {seeded.failed_error}" in e.value
               and f"awm eval retry {seeded.failed_id}" in e.value for e in at.error)
    at = open_page(view="checkpoint", run="nope", step=1)
    assert len(at.error) == 1 and "no run named 'nope'" in at.error[0].value


# -------------------------------------------------------------------------- compare ----
def test_compare_shows_the_paired_differences_compare_evaluations_computes(seeded: Seeded, open_page: Open) -> None:
    rows = [(EMA_RUN, 100, "policy"), ("alpha-t1", 100, "policy"), (None, None, "base")]
    keys = [_key(seeded, r, s, w) for r, s, w in rows]
    at = open_page(view="compare", rows=",".join(keys), benchmark="ocr")
    table = _df(at, "p-value")
    ids = [seeded.eval_ids[(r, s, "ocr", w)] for r, s, w in rows]
    with seeded.store() as store:
        for i in (1, 2):
            pc = compare_evaluations(store, ids[0], ids[i], n_boot=compare_view.N_BOOT, n_perm=compare_view.N_BOOT)
            assert table.iloc[i]["diff"] == pytest.approx(round(pc.diff, 4))
            assert table.iloc[i]["diff 95% CI"] == f"[{pc.ci_low:.3f}, {pc.ci_high:.3f}]"
            assert table.iloc[i]["p-value"] == pytest.approx(round(pc.p_value, 4))
            assert table.iloc[i]["verdict"] == ("tied" if pc.tied else "better" if pc.diff > 0 else "worse")
        scores = {i: {(s.prompt_index, s.sample_index): s.score for s in store.get_sample_scores(i)} for i in ids}
    assert table.iloc[0]["diff 95% CI"] == "reference"
    grid = at.get("image")
    assert len(grid) == 3 * compare_view.PANEL_SIZE  # prompt x row, the fixed panel: prompts 0..5
    for n, img in enumerate(grid):
        p, col = divmod(n, 3)
        assert img.captions == [f"score {scores[ids[col]][(p, 0)]:.3f}"]


def test_compare_disagree_panel_shows_the_prompts_with_the_largest_spread(seeded: Seeded, open_page: Open) -> None:
    rows = [(EMA_RUN, 10, "policy"), ("alpha-t1", 100, "policy")]
    keys = [_key(seeded, r, s, w) for r, s, w in rows]
    at = open_page(view="compare", rows=",".join(keys), benchmark="ocr", panel="disagree")
    ids = [seeded.eval_ids[(r, s, "ocr", w)] for r, s, w in rows]
    with seeded.store() as store:
        means = []
        for i in ids:
            per: dict[int, list[float]] = {}
            for s in store.get_sample_scores(i):
                per.setdefault(s.prompt_index, []).append(s.score)
            means.append({p: sum(v) / len(v) for p, v in per.items()})
    spread = {p: abs(means[0][p] - means[1][p]) for p in means[0]}
    want = sorted(spread, key=lambda p: (-spread[p], p))[:compare_view.PANEL_SIZE]
    shown = [int(md.value[1:].split()[0]) for md in at.markdown if md.value.startswith("#")]
    assert shown == want


def test_compare_refuses_rows_without_a_comparable_evaluation(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="compare", rows=f"{'ab' * 32}:policy,{'cd' * 32}:policy", benchmark="ocr")
    assert any("nothing to compare on ocr" in e.value for e in at.error)


# -------------------------------------------------------------------------- gallery ----
def test_gallery_shows_the_fixed_panel_across_steps_with_scores(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="gallery", run="alpha-t1", benchmark="geneval")
    images = at.get("image")
    cols = min(len(STEPS), gallery_view.MAX_STEPS)
    assert len(images) == gallery_view.PANEL_SIZE * cols
    steps = [int(md.value.split("step ")[1].split("]")[0]) for md in at.markdown if md.value.startswith("**[step")]
    assert steps[0] == STEPS[0] and steps[-1] == STEPS[-1] and steps == sorted(steps)
    with seeded.store() as store:
        for n, img in enumerate(images):
            p, c = divmod(n, cols)
            ev_id = seeded.eval_ids[("alpha-t1", steps[c], "geneval", "policy")]
            score = next(s.score for s in store.get_sample_scores(ev_id) if (s.prompt_index, s.sample_index) == (p, 0))
            assert img.captions == [f"score {score:.3f}"]
    assert all(img.value[0] for img in images)  # served (the thumbnails, inside $AWM_HOME/evals)


def test_gallery_of_a_run_without_evaluations_says_what_to_run(open_page: Open) -> None:
    at = open_page(view="gallery", run="ghost")
    assert any("awm eval schedule" in c.value for c in at.code)


# --------------------------------------------------------------------------- sweeps ----
def test_sweeps_list_counts_trials(seeded: Seeded, open_page: Open) -> None:
    table = _df(open_page(view="sweeps"), "trials")
    assert sorted(table["sweep"]) == ["alpha", "beta", "gamma"]
    assert set(table["trials"]) == {N_TRIALS}
    assert set(table["failed"]) == {TRIAL_STATES.count("FAIL")}


def test_sweep_page_shows_the_studys_trials_best_trial_and_plots(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="sweeps", sweep="alpha")
    trials = _df(at, "state")
    study = optuna.load_study(study_name="alpha", storage=seeded.optuna_url)
    assert list(trials["trial"]) == [t.number for t in study.trials]
    assert list(trials["state"]) == [t.state.name for t in study.trials] == list(TRIAL_STATES)
    assert trials[trials["best"] == "★"]["trial"].tolist() == [study.best_trial.number]
    objective = "eval/jpeg_compressibility"
    for t in study.trials:
        row = trials[trials["trial"] == t.number].iloc[0]
        assert row["train.beta"] == pytest.approx(t.params["train.beta"])
        if t.state.name == "COMPLETE":
            assert row[objective] == pytest.approx(t.value)
    # parallel coordinates + one parameter-vs-objective plot per parameter
    assert len(at.get("vega_lite_chart")) == 1 + 2
    assert any("optuna-dashboard 'sqlite:///" in c.value for c in at.code)
    assert any(f"trial {study.best_trial.number}" in md.value for md in at.markdown)


def test_two_objective_sweep_draws_its_pareto_front(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="sweeps", sweep="beta")
    study = optuna.load_study(study_name="beta", storage=seeded.optuna_url)
    front = sorted(t.number for t in study.best_trials)
    trials = _df(at, "state")
    assert sorted(trials[trials["best"] == "★"]["trial"]) == front
    assert any(f"the non-dominated trials: {', '.join(map(str, front))}" in c.value for c in at.caption)
    assert len(at.get("vega_lite_chart")) == 1 + 2 + 1


def test_unreachable_study_is_said_with_the_storage_redacted(seeded: Seeded, open_page: Open) -> None:
    at = open_page(view="sweeps", sweep="gamma")
    assert any("cannot open the Optuna study 'gamma'" in w.value and "optuna:***@127.0.0.1:1" in w.value
               for w in at.warning)
    trials = _df(at, "state")
    assert len(trials) == N_TRIALS  # from the store's runs
    assert SECRET not in page_text(at) and SECRET in GAMMA_STORAGE


@pytest.mark.parametrize("params", [
    {}, {"view": "sweeps"}, {"view": "sweeps", "sweep": "gamma"}, {"view": "checkpoint", "run": "gamma-t0", "step": 10},
    {"view": "gallery", "run": "gamma-t0"},
], ids=["leaderboard", "sweeps", "sweep-gamma", "checkpoint", "gallery"])
def test_no_page_ever_shows_a_password(seeded: Seeded, open_page: Open, params: dict) -> None:
    at = open_page(**params)
    text = page_text(at)
    assert text and SECRET not in text


def test_compare_per_task_bars_are_the_evaluations_geneval_tags(seeded: Seeded, open_page: Open) -> None:
    rows = [(EMA_RUN, 100), ("alpha-t1", 100)]
    ids = [seeded.eval_ids[(r, s, "geneval", "policy")] for r, s in rows]
    with seeded.store() as store:
        evs = [store.get_evaluation(i) for i in ids]
    at = open_page(view="compare", rows=",".join(f"{e.checkpoint_sha256}:policy" for e in evs), benchmark="geneval")
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1
    bars = pa.ipc.open_stream(charts[0].proto.datasets[0].data.data).read_all().to_pandas()
    for (run, step), ev in zip(rows, evs):
        got = bars[bars["row"] == f"{run}@{step}"].set_index("tag")["accuracy"].to_dict()
        assert got == pytest.approx(ev.sub_scores["per_tag"]) and len(got) == 6
