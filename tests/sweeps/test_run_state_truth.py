"""Tracking and run state tell the truth (issue 9 §3), on real sweeps with real local jobs:

* every terminal state closes its MLflow run with the matching status and an end time: a
  completed trial FINISHED, a pruned trial and an `awm cancel`ed run KILLED, the study's parent
  run FINISHED; no MLflow run is left RUNNING;
* `awm sweep start` / `resume` SIGKILLed at each step of a submission (AWM_FAULT_INJECT: before
  the store row, after it, before the job id is recorded, after the submission returned):
  `awm sweep resume` finishes the study with every trial accounted for and no run left PENDING.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from awm_platform.store import Store
from awm_platform.sweeps.optuna_bridge import storage_url
from awm_platform.sweeps.orchestrator import Orchestrator, SweepContext, consumed_trials
from tests.sweeps.conftest import OrchestratorThread
from tests.sweeps.helpers import sweep_section, wait_for

pytestmark = pytest.mark.slow

AWM = [sys.executable, "-m", "awm_platform.cli.main"]
OBJECTIVE = "eval/jpeg_compressibility"


def _mlflow_runs(cfg: Any) -> list[Any]:
    from mlflow.tracking import MlflowClient

    from awm_platform.sweeps.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg))
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=1000)


def _tracking_ready(store: Store, name: str) -> bool:
    run = store.find_run(name)
    return run is not None and run.status == "RUNNING" and run.mlflow_run_id is not None


def test_pruned_and_cancelled_runs_are_closed_in_mlflow(quickstart_trial: dict[str, Any], tmp_path: Path) -> None:
    from awm_platform.config import config_from_dict

    # evals at steps 0, 2, 4; the quickstart's epoch sizes keep t1 training long enough for its MLflow
    # run (created at the logger's first flush, late on a busy box) to exist well before its last eval
    base = {**quickstart_trial, "num_epochs": 4, "eval_freq": 2, "save_freq": 4}
    cfg = config_from_dict({**base, "name": "truth", "sweep": sweep_section(
        n_trials=2, parallelism=1, poll_interval_s=0.3,
        pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})})
    ctx = SweepContext(study_name="truth", cfg=cfg, cluster="local", storage_url=storage_url(cfg.sweep))
    store = Store.default()
    orch = Orchestrator(ctx, store=store, echo=print)
    parent = orch.create()
    th = OrchestratorThread(orch)
    # The median pruner compares a trial's *best* value so far with the completed trials' median at
    # the trial's latest step. Real values are all near the start's (t1's step 0 may beat t0's step 2),
    # so the verdict is forced at step 3, which no trainer evaluates: t0 "reports" a perfect value
    # there and t1, once it trains, a hopeless one. Whenever the orchestrator sees t1's step 3 (before
    # t1's last eval at step 4), the median at t1's latest step is t0's 1e9: prune, whatever else
    # t1 has logged by then.
    wait_for(lambda: _tracking_ready(store, "truth-t0"), 300, "trial 0 running with its MLflow run")
    store.log_metrics("truth-t0", {OBJECTIVE: 1e9}, step=3)
    wait_for(lambda: _tracking_ready(store, "truth-t1"), 300, "trial 1 running with its MLflow run")
    store.log_metrics("truth-t1", {OBJECTIVE: -1e9}, step=3)
    result = th.join(300)
    assert result.status == "COMPLETED" and result.counts["PRUNED"] == 1
    assert store.get_run("truth-t1").status == "PRUNED"

    # a standalone run cancelled through the CLI while it trains
    standalone = tmp_path / "standalone.yaml"
    standalone.write_text(yaml.safe_dump({**base, "name": "standalone", "num_epochs": 2000, "save_freq": 5000}))
    sub = subprocess.run([*AWM, "submit", str(standalone), "--cluster", "local"], capture_output=True, text=True,
                         check=False)
    assert sub.returncode == 0, sub.stderr
    wait_for(lambda: _tracking_ready(store, "standalone"), 300, "the standalone run's MLflow run")
    cancel = subprocess.run([*AWM, "cancel", "standalone"], capture_output=True, text=True, check=False)
    assert cancel.returncode == 0, cancel.stderr
    assert store.get_run("standalone").status == "CANCELLED"

    runs = {r.info.run_name: r for r in _mlflow_runs(cfg)}
    assert [n for n, r in runs.items() if r.info.status == "RUNNING"] == []
    expected = {"truth-t0": "FINISHED", "truth-t1": "KILLED", "standalone": "KILLED"}
    for name, status in expected.items():
        info = runs[name].info
        assert info.run_id == store.get_run(name).mlflow_run_id
        assert info.status == status, (name, info.status)
        assert info.end_time is not None and info.end_time >= info.start_time, name
    parent_run = next(r for r in runs.values() if r.info.run_id == parent)
    assert parent_run.info.status == "FINISHED"


def _awm_sweep(*args: str, fault: str | None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AWM_FAULT_INJECT"}
    if fault:
        env["AWM_FAULT_INJECT"] = fault
    return subprocess.run([*AWM, "sweep", *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def test_orchestrator_killed_at_each_submission_step_resumes_to_the_end(
        trial_base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One study, killed (SIGKILL, no cleanup) once at each fault point in turn, then resumed:
    before_store_row (t0 asked, no run) -> after_store_row (t0's run PENDING, no job) ->
    before_job_id (t0 failed after the grace period, its retry's job started but not recorded)
    -> after_submit (a submission complete, the orchestrator dead before noting it) -> resume."""
    from awm_platform.runner.proc import FAULT_POINTS, is_alive

    monkeypatch.setenv("AWM_JOB_ID_GRACE_S", "4")
    data = {**trial_base, "name": "fi", "sweep": sweep_section(
        n_trials=2, parallelism=1, max_retries=4, poll_interval_s=0.3)}
    config = tmp_path / "fi.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    store = Store.default()

    for i, point in enumerate(FAULT_POINTS):
        args = ("start", str(config), "--cluster", "local") if i == 0 else ("resume", "fi")
        res = _awm_sweep(*args, fault=point)
        assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    after_kills = {r.name: r.status for r in store.list_runs(sweep_name="fi")}
    assert after_kills, "no trial ever reached the store"

    res = _awm_sweep("resume", "fi", fault=None)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    study = optuna.load_study(study_name="fi", storage=storage_url(SweepContext.load("fi").spec))
    trials = study.get_trials()
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials), [t.state for t in trials]
    assert consumed_trials(trials) == 2
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # every logical trial completed
    runs = {r.trial_number: r for r in store.list_runs(sweep_name="fi")}
    assert sorted(runs) == [t.number for t in trials]  # every trial has exactly one run
    for t in trials:
        run = runs[t.number]
        if t.state == TrialState.COMPLETE:
            assert run.status == "COMPLETED"
        else:  # a submission the orchestrator died in: failed with the reason, retried
            assert run.status == "FAILED" and run.error, run.name
            assert any(x.user_attrs.get("retry_of") == t.number for x in trials)
    assert "never submitted: no job id recorded" in runs[0].error
    assert store.get_sweep("fi").status == "COMPLETED"
    jobs = [int(j) for r in runs.values() for j in r.job_ids]
    wait_for(lambda: not any(is_alive(p) for p in jobs), 60, "every job process to end")
    from awm_platform.config import config_from_dict

    assert [r.info.run_name for r in _mlflow_runs(config_from_dict(data)) if r.info.status == "RUNNING"] == []
