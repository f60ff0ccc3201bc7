"""Orchestrator bookkeeping against an in-process fake runner (fast; no jobs)."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import TrialState

from awm_platform.store import Store
from awm_platform.sweeps.optuna_bridge import trial_seed
from awm_platform.sweeps.orchestrator import Orchestrator, SweepError, consumed_trials
from tests.sweeps.fake_backend import FakeBackend
from tests.sweeps.helpers import make_ctx


def _run(ctx, backend, **kw):
    orch = Orchestrator(ctx, backend=backend, echo=lambda m: None, track=False, **kw)
    orch.create()
    return orch, orch.run()


def test_sweep_completes_with_linked_runs_and_derived_seeds():
    ctx = make_ctx(n_trials=4, parallelism=2)
    backend = FakeBackend(steps=3)
    _, result = _run(ctx, backend)
    assert result.status == "COMPLETED"
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.metric_names == ["eval/jpeg_compressibility"]  # optuna-dashboard's name for the objective
    store = Store.default()
    for t in trials:
        run = store.get_run(f"study-t{t.number}")
        assert (run.sweep_name, run.trial_number) == ("study", t.number)
        assert t.user_attrs["run_name"] == run.name and t.user_attrs["job_id"] == f"fake-{t.number}"
        # objective = the last logged value; the seed derives from the study seed and the number
        assert t.value == pytest.approx(1000 * t.params["train.beta"] * 3)
        assert backend.params[run.name]["seed"] == trial_seed(7, t.number)
        assert backend.params[run.name]["beta"] == t.params["train.beta"]
        assert backend.params[run.name]["tags"]["awm.sweep.trial"] == str(t.number)
        assert sorted(t.intermediate_values) == [0, 1, 2]
    assert store.get_sweep("study").status == "COMPLETED"


def test_best_of_objective_option():
    ctx = make_ctx(objective={"metric": "eval/jpeg_compressibility", "final": "best", "direction": "minimize"},
                   n_trials=2)
    _run(ctx, FakeBackend(steps=3))
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    for t in study.trials:  # values grow with the step: the best (minimum) is the first
        assert t.value == pytest.approx(1000 * t.params["train.beta"])


def test_failed_trial_is_retried_with_same_params_and_accounted():
    ctx = make_ctx(n_trials=3, parallelism=1, max_retries=2)
    _run(ctx, FakeBackend(fail_once={1}))
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == failed[0].params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["attempt"] == 1 and retry.user_attrs["root_trial"] == 1
    assert retry.user_attrs["seed"] == failed[0].user_attrs["seed"]  # the retry reruns the same seed
    # Optuna's own retry marks, read back with Optuna's API
    assert RetryFailedTrialCallback.retried_trial_number(retry) == 1
    assert RetryFailedTrialCallback.retry_history(retry) == [1]
    assert all(RetryFailedTrialCallback.retried_trial_number(t) is None for t in trials if t is not retry)
    assert consumed_trials(trials) == 3 and len(trials) == 4
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_retries_are_bounded_and_the_failure_is_accounted():
    ctx = make_ctx(n_trials=2, parallelism=2, max_retries=1)
    backend = FakeBackend(fail_always=set(range(100)))
    _, result = _run(ctx, backend)
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    trials = study.get_trials()
    # 2 logical trials, each tried 1 + max_retries times, all failed, and the sweep ends
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert consumed_trials(trials) == 2 and result.status == "COMPLETED"


def test_retry_chain_carries_optunas_failed_trial_and_history():
    ctx = make_ctx(n_trials=1, parallelism=1, max_retries=2)
    _run(ctx, FakeBackend(fail_always={0, 1, 2}))
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    t0, r1, r2 = study.get_trials()
    assert [t.state for t in (t0, r1, r2)] == [TrialState.FAIL] * 3
    assert (r1.user_attrs["retry_of"], r2.user_attrs["retry_of"]) == (0, 1)
    assert [RetryFailedTrialCallback.retried_trial_number(t) for t in (t0, r1, r2)] == [None, 0, 0]
    assert [RetryFailedTrialCallback.retry_history(t) for t in (t0, r1, r2)] == [[], [0], [0, 1]]
    assert r1.params == r2.params == t0.params


def test_pruned_trial_job_is_cancelled():
    ctx = make_ctx(n_trials=4, parallelism=1, pruner={"name": "median", "n_startup_trials": 1},
                   sampler={"name": "grid"},
                   params={"train.beta": {"type": "categorical", "choices": [0.01, 0.0001, 0.005, 0.00015]}})
    backend = FakeBackend(steps=4)
    _run(ctx, backend)
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    store = Store.default()
    for t in pruned:
        assert t.params["train.beta"] < 0.001
        assert (f"study-t{t.number}", "PRUNED") in backend.cancelled
        assert store.get_run(f"study-t{t.number}").status == "PRUNED"


def test_restarted_orchestrator_adopts_running_trials():
    ctx = make_ctx(n_trials=4, parallelism=2)
    backend = FakeBackend(steps=5)
    first = Orchestrator(ctx, backend=backend, echo=lambda m: None, track=False)
    parent = first.create()
    first.opened = first._open_study(create=False)
    first._pass(parent)
    first._pass(parent)  # two trials in flight, neither done; now "crash" (no cleanup)
    assert len(backend.submitted) == 2
    second = Orchestrator(ctx, backend=backend, echo=lambda m: None, track=False)
    result = second.run(resume=True)
    assert result.status == "COMPLETED"
    names = [n for n, _ in backend.submitted]
    assert len(names) == len(set(names)) == 4  # the two in flight were adopted, not resubmitted


def test_live_orchestrator_blocks_resume():
    ctx = make_ctx(n_trials=1)
    orch = Orchestrator(ctx, backend=FakeBackend(), echo=lambda m: None, track=False)
    orch.create()
    orch.opened = orch._open_study(create=False)
    orch._beat(force=True)
    with pytest.raises(SweepError, match="live orchestrator"):
        Orchestrator(ctx, backend=FakeBackend(), echo=lambda m: None, track=False).run(resume=True)


def test_start_twice_is_refused():
    ctx = make_ctx(n_trials=1)
    _run(ctx, FakeBackend())
    with pytest.raises(SweepError, match="already exist"):
        Orchestrator(ctx, backend=FakeBackend(), echo=lambda m: None, track=False).create()


def test_gpu_hour_budget_stops_new_trials():
    ctx = make_ctx(n_trials=6, parallelism=1, budget_gpu_hours=0.5)
    backend = FakeBackend(steps=1, gpu_hours_per_run=0.3)
    _, result = _run(ctx, backend)
    assert result.status == "COMPLETED" and len(backend.submitted) == 2  # 0.6 >= 0.5 after two


def test_grid_sampler_caps_trials_at_grid_size():
    ctx = make_ctx(n_trials=10, parallelism=2, sampler={"name": "grid"},
                   params={"train.beta": {"type": "categorical", "choices": [0.001, 0.002, 0.003]}})
    _run(ctx, FakeBackend(steps=1))
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    assert sorted(t.params["train.beta"] for t in study.trials) == [0.001, 0.002, 0.003]


def test_multi_objective_study():
    ctx = make_ctx(n_trials=3, parallelism=3, sampler={"name": "nsga2", "seed": 1}, pruner={"name": "none"},
                   objective=[{"metric": "eval/jpeg_compressibility", "direction": "maximize"},
                              {"metric": "eval/jpeg_compressibility", "direction": "minimize", "final": "best"}])
    _, result = _run(ctx, FakeBackend(steps=2))
    study = optuna.load_study(study_name="study", storage=ctx.storage_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["eval/jpeg_compressibility", "eval/jpeg_compressibility (best)"]
    for t in study.trials:
        b = t.params["train.beta"]
        assert t.values == pytest.approx([2000 * b, 1000 * b])
    assert result.best  # the Pareto front


def test_journal_storage_backend(tmp_path):
    ctx = make_ctx(n_trials=3, parallelism=2, journal_path=str(tmp_path / "study.journal"))
    assert ctx.storage_url.startswith("journal:")
    _, result = _run(ctx, FakeBackend(steps=2))
    assert result.status == "COMPLETED"
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="study",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal"))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert {t.user_attrs["run_name"] for t in study.trials} == {"study-t0", "study-t1", "study-t2"}
