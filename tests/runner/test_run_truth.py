"""Run state tells the truth (issue 9 §3): a recycled pid is not a live job, a run whose
submitter died before recording a job id is failed after a grace period, a failing
`launcher.setup` line is reported with its number, exit code and output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import wait_terminal

AWM = [sys.executable, "-m", "awm_platform.cli.main"]


def _register(store, name: str, run_dir: Path, *, job_ids: list[str], status: str = "RUNNING") -> None:
    store.create_run(name=name, config_hash="h", resolved_config={}, output_dir=run_dir, cluster="local",
                     status=status)
    for job in job_ids:
        store.append_job_id(name, job)


def test_recycled_pid_is_not_taken_for_a_live_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real process whose pid is recorded with another start time (what a recycled pid looks
    like): the poller fails the run, `cancel_run` does not signal the stranger, and a sweep
    orchestrator recorded with that pid is not alive. With its true start time it is live."""
    from awm_platform.runner.backends.local import LOCAL_JOBS_FILE, record_local_job
    from awm_platform.runner.proc import is_alive, process_start_time
    from awm_platform.runner.state import cancel_run, refresh_states
    from awm_platform.store import Store
    from awm_platform.sweeps.orchestrator import orchestrator_alive, this_host

    monkeypatch.setenv("AWM_POLL_INTERVAL_S", "0")
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start_time(stranger.pid)
        assert started is not None and is_alive(stranger.pid, started)
        assert not is_alive(stranger.pid, started - 3.0)
        with Store.default() as store:
            mine, other = tmp_path / "mine", tmp_path / "other"
            mine.mkdir()
            other.mkdir()
            record_local_job(mine, stranger.pid)  # the true identity: a live job
            _register(store, "mine", mine, job_ids=[str(stranger.pid)])
            (other / LOCAL_JOBS_FILE).write_text(f'{{"{stranger.pid}": {started - 3.0}}}')
            _register(store, "recycled", other, job_ids=[str(stranger.pid)])
            assert refresh_states(store, force=True) == {"mine": "RUNNING", "recycled": "FAILED"}
            assert "without reporting" in store.get_run("recycled").error
            store.update_run("recycled", status="RUNNING", ended_at=None)
            cancel_run("recycled", store, timeout_s=5)
            assert store.get_run("recycled").status == "CANCELLED"
            assert stranger.poll() is None, "cancel_run signalled a process that is not its job"

        beat = {"pid": stranger.pid, "host": this_host(), "heartbeat": time.time()}
        assert orchestrator_alive({**beat, "started": started}, 60)
        assert not orchestrator_alive({**beat, "started": started - 3.0}, 60)
    finally:
        stranger.kill()
        stranger.wait()


def test_pending_run_without_job_id_fails_after_the_grace_period(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import Store

    with Store.default() as store:
        _register(store, "orphan", tmp_path, job_ids=[], status="PENDING")
        monkeypatch.setenv("AWM_JOB_ID_GRACE_S", "3600")
        assert refresh_states(store, force=True) == {"orphan": "PENDING"}  # its submitter may be slow
        monkeypatch.setenv("AWM_JOB_ID_GRACE_S", "0")
        assert refresh_states(store, force=True) == {"orphan": "FAILED"}
        run = store.get_run("orphan")
        assert "never submitted: no job id recorded" in run.error and run.ended_at is not None


@pytest.mark.slow
def test_failing_setup_line_is_reported(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real local submit whose second setup line fails: the run is FAILED with the line's
    number, exit code and stderr, and `awm status` / `awm logs` say so."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import submit_run
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    monkeypatch.setenv("AWM_POLL_INTERVAL_S", "0")
    cfg = config_from_dict(tiny_experiment_dict(tiny_model, "bad-setup", launcher={
        "cluster": "local", "setup": ["export AWM_SETUP_TEST=1", "ls /nonexistent-awm-dir"]}))
    with Store.default() as store:
        sub = submit_run(cfg, cluster="local", store=store)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and refresh_states(store, ["bad-setup"])["bad-setup"] != "FAILED":
            time.sleep(0.2)
        error = store.get_run("bad-setup").error
    assert error is not None and error.startswith("launcher.setup line 2 failed with exit code 2: ls /nonexistent")
    assert "No such file or directory" in error
    assert (sub.run_dir / "setup" / "failed.json").exists()

    env = {**os.environ, "COLUMNS": "200"}
    status = subprocess.run([*AWM, "status", "bad-setup"], capture_output=True, text=True, env=env, check=False)
    assert status.returncode == 0, status.stderr
    assert "launcher.setup line 2 failed with exit code 2" in status.stdout and "No such file" in status.stdout
    logs = subprocess.run([*AWM, "logs", "bad-setup"], capture_output=True, text=True, env=env, check=False)
    assert logs.returncode == 0, logs.stderr
    assert "launcher.setup line 2 failed with exit code 2" in logs.stdout and "No such file" in logs.stdout


@pytest.mark.slurm
def test_failing_setup_line_is_reported_on_slurm(tiny_model: Path, slurm_cluster: Any) -> None:
    """The same on SLURM: the sbatch script sources setup.sh, whose failing line ends the job;
    the poller reads setup/failed.json instead of saying only 'SLURM state FAILED'."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    launcher = {"cluster": "slurm", "partition": slurm_cluster.partition, "cpus_per_task": 1,
                "gpus_per_node": 1, "time_min": 5, "setup": ["true", "ls /nonexistent-awm-dir"]}
    cfg = config_from_dict(tiny_experiment_dict(tiny_model, "bad-setup-slurm", launcher=launcher))
    with Store.default() as store:
        submit_run(cfg, cluster="slurm", store=store)
        assert wait_terminal(store, "bad-setup-slurm", 120) == "FAILED"
        error = store.get_run("bad-setup-slurm").error
    assert error is not None and error.startswith("launcher.setup line 2 failed with exit code 2: ls /nonexistent")
    assert "No such file or directory" in error


@pytest.mark.slow
def test_max_requeues_counts_time_outs_not_preemptions(tiny_model: Path) -> None:
    """`launcher.max_requeues: 0` on two real local jobs whose controller gets submitit's USR2.
    Time limit 2 min, signal 10 s in (`signal_delay_s`): submitit deems that a time-out, none may be
    requeued, so the run FAILS naming the key. Time limit 11 min, USR2 sent once by the test while
    the trainer works: a preemption (before submitit's guaranteed wall time), requeued whatever
    max_requeues says, and the run completes over two segments. (A `signal_delay_s` timer would fire
    again in every requeued attempt, so the second job is signalled by hand, exactly once.)"""
    import json
    import signal

    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    def cfg(name: str, time_min: int, signal_delay_s: int, num_epochs: int) -> object:
        return config_from_dict(tiny_experiment_dict(tiny_model, name, num_epochs=num_epochs, launcher={
            "cluster": "local", "cpus_per_task": 1, "max_requeues": 0,
            "time_min": time_min, "signal_delay_s": signal_delay_s}))

    def events(run_dir: Path) -> list[dict]:
        path = run_dir / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    with Store.default() as store:
        # far more work than 10 s on any machine (12 epochs finished before the signal on a fast one,
        # and the run COMPLETED): the signal 10 s in finds the job at work, and ends it
        timed_out = submit_run(cfg("timed-out", 2, 110, 200), cluster="local", store=store)
        assert wait_terminal(store, "timed-out", 300) == "FAILED"
        assert "launcher.max_requeues" in store.get_run("timed-out").error

        # 12 epochs: still at work when the signal lands (4 finished first on a fast machine, ~0.2 s each)
        preempted = submit_run(cfg("preempted", 11, 120, 12), cluster="local", store=store)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(
                e["event"] == "train_call" for e in events(preempted.run_dir)):
            time.sleep(0.2)
        controller = next(e["pid"] for e in events(preempted.run_dir) if e["event"] == "controller_start")
        os.kill(controller, signal.SIGUSR2)
        assert wait_terminal(store, "preempted", 600) == "COMPLETED", store.get_run("preempted").error
        assert len([e for e in events(preempted.run_dir) if e["event"] == "controller_start"]) == 2
        log = "".join(p.read_text() for p in (preempted.run_dir / "submitit").glob("*_log.*"))
        assert "this job is preempted" in log and "Requeued job" in log
        assert f"resumed from {preempted.run_dir / 'checkpoints'}/step-" in log  # the job log names it
    assert timed_out.run_dir.exists()


def test_scoped_environ_applies_and_restores_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one helper the submit path (MLFLOW_RUN_ID scrub, code snapshot path) and the tracking
    client (fail-fast HTTP) use: set, unset, and afterwards every key exactly as before."""
    from awm_platform.runner.proc import scoped_environ

    monkeypatch.setenv("AWM_T_SET", "before")
    monkeypatch.setenv("AWM_T_UNSET", "here")
    monkeypatch.delenv("AWM_T_NEW", raising=False)
    with scoped_environ({"AWM_T_SET": "during", "AWM_T_UNSET": None, "AWM_T_NEW": "x"}):
        assert (os.environ["AWM_T_SET"], os.environ.get("AWM_T_UNSET"), os.environ["AWM_T_NEW"]) == ("during", None, "x")
    assert (os.environ["AWM_T_SET"], os.environ["AWM_T_UNSET"], os.environ.get("AWM_T_NEW")) == ("before", "here", None)
