"""Real sweeps on the local executor: real runner, real training jobs (tiny model), SQLite."""

from __future__ import annotations

import os
import signal
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from awm_platform.runner.proc import is_alive
from awm_platform.store import Store
from awm_platform.sweeps import commands
from awm_platform.sweeps.optuna_bridge import storage_url
from awm_platform.sweeps.orchestrator import Orchestrator, SweepContext, consumed_trials
from tests.sweeps.conftest import OrchestratorThread, kill_job_tree
from tests.sweeps.helpers import max_concurrent, sweep_section, wait_for

pytestmark = pytest.mark.slow


def _ctx(base: dict[str, Any], name: str, **sweep: Any) -> SweepContext:
    from awm_platform.config import config_from_dict

    cfg = config_from_dict({**base, "name": name, "sweep": sweep_section(poll_interval_s=0.3, **sweep)})
    return SweepContext(study_name=name, cfg=cfg, cluster="local", storage_url=storage_url(cfg.sweep))


def _job_pid(store: Store, name: str) -> int | None:
    run = store.find_run(name)
    return int(run.job_ids[-1]) if run is not None and run.job_ids and run.status == "RUNNING" else None


def test_four_trials_in_flight_sigkilled_trial_is_retried_and_tracked(trial_base):
    """Concurrency (4 in flight and never more, from the start/end times in the store, SQLite),
    a SIGKILLed trial retried with the same params, MLflow parent/child runs and summary
    artifacts, and optuna.load_study reading it all."""
    ctx = _ctx(trial_base, "conc", n_trials=4, parallelism=4, max_retries=1)
    store = Store.default()
    orch = Orchestrator(ctx, store=store, echo=print)
    parent = orch.create()
    assert parent
    th = OrchestratorThread(orch)
    # kill trial 1 once all 4 jobs have started (so its early death cannot hide the overlap)
    wait_for(lambda: len([r for r in store.list_runs(sweep_name="conc") if r.started_at]) == 4, 180, "4 started")
    pid = wait_for(lambda: _job_pid(store, "conc-t1"), 120, "trial 1 running")
    kill_job_tree(pid)
    result = th.join(300)
    assert result.status == "COMPLETED"

    study = optuna.load_study(study_name="conc", storage=ctx.storage_url)  # optuna's own reader
    trials = study.get_trials()
    assert len({t.number for t in trials}) == len(trials) == 5
    assert consumed_trials(trials) == 4
    killed = trials[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["error"]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    runs = {r.trial_number: r for r in store.list_runs(sweep_name="conc")}
    assert sorted(runs) == [t.number for t in trials]  # every trial has exactly one run
    assert max_concurrent(list(runs.values())) == 4  # 4 in flight at once, the retry never a 5th
    assert runs[1].status == "FAILED"
    for t in trials:
        assert t.user_attrs["run_name"] == runs[t.number].name == f"conc-t{t.number}"
        if t.state == TrialState.COMPLETE:
            hist = store.get_metric_history(t.user_attrs["run_name"], "eval/jpeg_compressibility")
            assert t.value == hist[-1][1] and set(t.intermediate_values) == {s for s, _ in hist}
            assert runs[t.number].resolved_config["seed"] == t.user_attrs["seed"]
            assert runs[t.number].resolved_config["train"]["beta"] == t.params["train.beta"]

    from mlflow.tracking import MlflowClient

    from awm_platform.sweeps.tracking import tracking_uri

    client = MlflowClient(tracking_uri(ctx.cfg))
    prun = client.get_run(parent)
    assert prun.info.status == "FINISHED" and prun.data.tags["awm.sweep.study"] == "conc"
    assert "train.beta" in prun.data.tags["awm.sweep.search_space"]
    arts = {a.path for a in client.list_artifacts(parent, "study")}
    assert {"study/best_trials.json", "study/optimization_history.png"} <= arts
    children = client.search_runs([prun.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {c.data.tags.get("awm.sweep.trial") for c in children} >= {"0", "2", "3", "4"}
    assert store.get_sweep("conc").mlflow_parent_run_id == parent


def test_orchestrator_killed_and_resumed_adopts_jobs_and_prunes(quickstart_trial):
    """SIGKILL the (detached) orchestrator with trials in flight; the resumed orchestrator
    adopts them (no duplicate jobs) and finishes exactly n_trials. Its pruner's decision on
    the last trial cancels the real job (gone from the executor) and marks the run PRUNED.
    (t1's injected perfect value keeps the median pruner from pruning t1 whichever of the two
    parallel trials completes first.)"""
    ctx = _ctx(quickstart_trial, "crash", n_trials=3, parallelism=2,
               pruner={"name": "median", "n_startup_trials": 1})
    pid = commands.start(ctx, detach=True, echo=print)
    assert isinstance(pid, int)
    assert (ctx.state_dir / "orchestrator.pid").read_text().strip() == str(pid)
    store = Store.default()
    wait_for(lambda: len([r for r in store.list_runs(sweep_name="crash") if r.job_ids]) == 2, 120, "2 jobs")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    jobs_before = {r.name: list(r.job_ids) for r in store.list_runs(sweep_name="crash")}
    assert set(jobs_before) == {"crash-t0", "crash-t1"}
    # The median pruner compares t2's best value so far (its real step 0 ties the others' step 0)
    # with the median at t2's latest step. Forcing the verdict at step 2, which no trainer evaluates
    # (1 epoch): t0 and t1 "report" a perfect value there (read when they are adopted), t2 below.
    for name in jobs_before:
        store.log_metrics(name, {"eval/jpeg_compressibility": 1e9}, step=2)

    th = OrchestratorThread(Orchestrator(SweepContext.load("crash"), store=store, echo=print), resume=True)
    job = wait_for(lambda: _job_pid(store, "crash-t2"), 240, "trial 2 running")
    store.log_metrics("crash-t2", {"eval/jpeg_compressibility": -1e9}, step=2)
    result = th.join(240)
    assert result.status == "COMPLETED"
    runs = store.list_runs(sweep_name="crash")
    assert sorted(r.trial_number for r in runs) == [0, 1, 2]
    for name, jobs in jobs_before.items():  # adopted: same job, not resubmitted
        assert store.get_run(name).job_ids == jobs
    study = optuna.load_study(study_name="crash", storage=ctx.storage_url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert store.get_run("crash-t2").status == "PRUNED" and not is_alive(job)
    assert result.counts["PRUNED"] == 1 and consumed_trials(study.trials) == 3
    assert store.get_sweep("crash").status == "COMPLETED"


def test_stop_cancels_in_flight_jobs(trial_base):
    ctx = _ctx({**trial_base, "num_epochs": 500, "save_freq": 500}, "halt", n_trials=4, parallelism=2)
    pid = commands.start(ctx, detach=True, echo=print)
    store = Store.default()
    wait_for(lambda: len([r for r in store.list_runs(sweep_name="halt") if r.status == "RUNNING"]) == 2, 120,
          "2 running")
    job_pids = [int(r.job_ids[-1]) for r in store.list_runs(sweep_name="halt")]
    n = commands.stop("halt", echo=print)
    wait_for(lambda: not is_alive(pid) or os.waitpid(pid, os.WNOHANG)[0], 60, "orchestrator exit")
    assert store.get_sweep("halt").status == "STOPPED"
    assert {r.status for r in store.list_runs(sweep_name="halt")} == {"CANCELLED"}
    assert not any(is_alive(p) for p in job_pids)
    study = optuna.load_study(study_name="halt", storage=ctx.storage_url)
    assert all(t.state == TrialState.FAIL and t.user_attrs["stopped"] for t in study.trials)
    assert n == 0  # the live orchestrator did the cancelling
    st = commands.status("halt")
    assert st["status"] == "STOPPED" and [r["run_status"] for r in st["trials"]] == ["CANCELLED"] * 2


def test_cli_resume_of_a_killed_orchestrator_runs_the_sweep_to_completion(trial_base, tmp_path):
    """`awm sweep start --detach`, SIGKILL the orchestrator with both trials in flight, then
    `awm sweep resume` (blocking) adopts the jobs and finishes the study; the sweep state file,
    which holds the unredacted storage URLs, is 0600."""
    import json
    import stat
    import subprocess
    import sys

    from awm_platform.runner.proc import is_alive
    from tests.sweeps.helpers import write_config

    cfg = write_config(tmp_path / "s.yaml", {**trial_base, "name": "cliresume",
                                             "sweep": sweep_section(n_trials=2, parallelism=2, poll_interval_s=0.3)})
    awm = [sys.executable, "-m", "awm_platform.cli.main", "sweep"]
    res = subprocess.run([*awm, "start", str(cfg), "--cluster", "local", "--detach", "--json"], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    pid = int(json.loads(res.stdout)["pid"])
    ctx = SweepContext.load("cliresume")
    assert stat.S_IMODE((ctx.state_dir / "sweep.json").stat().st_mode) == 0o600
    store = Store.default()
    wait_for(lambda: len([r for r in store.list_runs(sweep_name="cliresume") if r.job_ids]) == 2, 180, "2 jobs")
    os.kill(pid, signal.SIGKILL)  # not our child (the CLI started it): wait for it to vanish
    wait_for(lambda: not is_alive(pid), 30, "orchestrator gone")
    jobs = {r.name: list(r.job_ids) for r in store.list_runs(sweep_name="cliresume")}

    res = subprocess.run([*awm, "resume", "cliresume"], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sweep cliresume COMPLETED: complete=2" in res.stdout and "best trial t" in res.stdout
    assert {r.name: r.job_ids for r in store.list_runs(sweep_name="cliresume")} == jobs  # adopted, not resubmitted
    st = commands.status("cliresume")
    assert st["status"] == "COMPLETED" and [t["state"] for t in st["trials"]] == ["COMPLETE", "COMPLETE"]
    assert stat.S_IMODE((ctx.state_dir / "sweep.json").stat().st_mode) == 0o600  # still, after resume
