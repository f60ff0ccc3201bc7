"""Sweep behaviours that the fake backend (tests/sweeps/fake_backend.py) also covers, here
through the real runner and real submitit jobs on the local executor: the GPU-hour budget with
the controller's own GPU-hour accounting, retries running out on trainers that really fail,
journal storage, and the orchestrator's branches for an invalid trial config, a failed
submission and a run that completed without logging its objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from awm_platform.store import Store
from awm_platform.sweeps.optuna_bridge import storage_url
from awm_platform.sweeps.orchestrator import Orchestrator, SweepContext
from perf.noop_backend import NoopBackend
from tests.runner.conftest import segment_seconds
from tests.sweeps.helpers import sweep_section

OBJECTIVE = "eval/jpeg_compressibility"


def _ctx(base: dict[str, Any], name: str, **sweep: Any) -> SweepContext:
    from awm_platform.config import config_from_dict

    cfg = config_from_dict({**base, "name": name, "sweep": sweep_section(poll_interval_s=0.3, **sweep)})
    assert cfg.sweep is not None
    return SweepContext(study_name=name, cfg=cfg, cluster="local", storage_url=storage_url(cfg.sweep))


def _drive(ctx: SweepContext, store: Store, backend: Any = None) -> tuple[Any, list[str]]:
    lines: list[str] = []
    orch = Orchestrator(ctx, store=store, backend=backend, echo=lines.append, track=False)
    orch.create()
    return orch.run(), lines


@pytest.mark.slow
def test_gpu_hour_budget_counts_the_controllers_accounting(trial_base: dict[str, Any]) -> None:
    """A real trial's GPU-hours (accounted by its job controller: elapsed x GPUs) exceed a
    tiny budget, so the sweep asks for no second trial and ends COMPLETED."""
    ctx = _ctx(trial_base, "budget", n_trials=3, parallelism=1, budget_gpu_hours=1e-4)
    store = Store.default()
    result, lines = _drive(ctx, store)
    assert result.status == "COMPLETED"
    study = optuna.load_study(study_name="budget", storage=ctx.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # 1 of 3: the budget stopped it
    run = store.get_run("budget-t0")
    assert run.status == "COMPLETED" and run.num_gpus == 1
    segments = segment_seconds(Path(run.output_dir))
    assert len(segments) == 1
    # the controller accounts its wall time up to its report, which comes after the trainer's exit
    # (opening the store: ~0.5-1 s under load, a tenth of an 8 s segment on a fast machine)
    assert segments[0] * 0.9 <= run.gpu_hours * 3600 <= segments[0] + 5.0, (run.gpu_hours * 3600, segments)
    assert run.gpu_hours >= 1e-4
    assert any(line.startswith(f"budget reached: {run.gpu_hours:.3f} of 0.0001 GPU-hours") for line in lines), lines
    store.close()


@pytest.mark.slow
def test_retries_run_out_on_real_failing_trainers_with_journal_storage(
    trial_base: dict[str, Any], tmp_path: Path
) -> None:
    """Every trial's trainer dies (its model directory does not exist): the trial fails, its
    retry (same params) fails, and then no retry is left. The study lives in a journal file
    that optuna's own reader opens."""
    base = {**trial_base, "pretrained": {**trial_base["pretrained"], "model": str(tmp_path / "no-model")}}
    journal = tmp_path / "study.journal"
    ctx = _ctx(base, "doomed", n_trials=1, parallelism=1, max_retries=1, journal_path=str(journal))
    assert ctx.storage_url.startswith("journal:")
    store = Store.default()
    result, lines = _drive(ctx, store)
    assert result.status == "COMPLETED"

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="doomed", storage=JournalStorage(JournalFileBackend(str(journal))))
    first, retry = study.trials
    assert first.state == retry.state == TrialState.FAIL
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["attempt"] == 1
    assert retry.params == first.params and retry.user_attrs["seed"] == first.user_attrs["seed"]
    for t in (first, retry):
        run = store.get_run(f"doomed-t{t.number}")
        assert run.status == "FAILED" and run.job_ids  # a real job ran and died
        assert "no-model" in run.error  # the trainer's own traceback tail, not a guess
        assert t.user_attrs["error"] == run.error[:2000]
    assert any(line.startswith("[t1] FAIL") and line.endswith("no retries left") for line in lines), lines
    assert len(study.trials) == 2  # nothing after the last retry
    store.close()


def test_invalid_trial_config_and_failed_submission_fail_their_trials(trial_base: dict[str, Any]) -> None:
    """Real runner, no job: (1) a combination of params that each pass validation but not
    together (off-policy needs a lagged EMA) fails its trial before anything is submitted;
    (2) a submission the runner refuses (a left-over run directory) fails its trial."""
    from awm_platform import paths

    base = {**trial_base, "per_prompt_stat_tracking": False}
    ctx = _ctx(base, "badcombo", n_trials=1, parallelism=1, max_retries=2,
               params={"per_prompt_stat_tracking": {"type": "categorical", "choices": [True]},
                       "sample.num_image_per_prompt": {"type": "categorical", "choices": [1]}})
    store = Store.default()
    result, lines = _drive(ctx, store)
    assert result.status == "COMPLETED"
    (trial,) = optuna.load_study(study_name="badcombo", storage=ctx.storage_url).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"].startswith("invalid trial config: ")
    assert "per_prompt_stat_tracking" in trial.user_attrs["error"]
    assert store.find_run("badcombo-t0") is None and not paths.run_dir("badcombo-t0").exists()
    assert any("FAIL invalid config" in line for line in lines), lines

    leftover = paths.run_dir("refused-t0")
    leftover.mkdir(parents=True)
    (leftover / "old.txt").write_text("a deleted run's files\n")
    ctx = _ctx(trial_base, "refused", n_trials=1, parallelism=1, max_retries=2)
    result, lines = _drive(ctx, store)
    assert result.status == "COMPLETED"
    (trial,) = optuna.load_study(study_name="refused", storage=ctx.storage_url).trials  # not retried
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"].startswith("submission failed: run directory") and str(leftover) in \
        trial.user_attrs["error"]
    assert store.find_run("refused-t0") is None
    assert (leftover / "old.txt").read_text() == "a deleted run's files\n"  # nothing overwritten
    store.close()


@pytest.mark.slow
def test_run_completed_without_its_objective_fails_the_trial(tmp_path: Path) -> None:
    """A real submitit job (the no-op worker) completes having logged another metric: the
    trial FAILs, naming the objective and the keys that were logged, and is not retried."""
    from tests.sweeps.helpers import make_ctx

    ctx = make_ctx("silent", n_trials=1, parallelism=1, max_retries=2, poll_interval_s=0.3)
    store = Store.default()
    backend = NoopBackend("local", tmp_path / "jobs", "eval/something_else")
    try:
        result, lines = _drive(ctx, store, backend)
    finally:
        backend.jobs.clear()  # submitit's LocalJob.__del__ is noisy at interpreter exit
    assert result.status == "COMPLETED"
    (trial,) = optuna.load_study(study_name="silent", storage=ctx.storage_url).trials
    assert store.get_run("silent-t0").status == "COMPLETED"
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["error"] == (f"run completed but never logged {OBJECTIVE} "
                                         f"(logged: {store.metric_keys('silent-t0')})")
    assert "eval/something_else" in trial.user_attrs["error"]
    assert any(f"objective metric {OBJECTIVE} never logged" in line for line in lines), lines
    store.close()
