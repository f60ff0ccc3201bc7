"""Job-state polling (batched sacct, rate limit, transient states) and status mapping."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SACCT = """\
41|REQUEUED|vm|12|2026-01-01T10:00:00|2026-01-01T10:00:12
41|RUNNING|vm|30|2026-01-01T10:02:20|Unknown
41.batch|RUNNING|vm|30|2026-01-01T10:02:20|Unknown
42|CANCELLED by 0|vm|5|2026-01-01T10:00:00|2026-01-01T10:00:05
43_1|COMPLETED|vm|100|2026-01-01T10:00:00|2026-01-01T10:01:40
44|WEIRD_NEW_STATE|vm|1|2026-01-01T10:00:00|Unknown
"""


def test_parse_sacct_sums_requeued_instances() -> None:
    from awm_platform.runner.backends.slurm import parse_sacct

    info = parse_sacct(SACCT)
    assert set(info) == {"41", "42", "43_1", "44"}
    assert info["41"]["state"] == "RUNNING" and info["41"]["instances"] == 2 and info["41"]["elapsed_s"] == 42
    assert info["42"]["state"] == "CANCELLED"


def _run(store, name: str, cluster: str, job_ids: list[str], status: str = "RUNNING", gpus: int = 2):
    store.create_run(
        name=name,
        config_hash="h",
        resolved_config={},
        output_dir=f"/tmp/{name}",
        cluster=cluster,
        num_gpus=gpus,
        status=status,
    )
    for j in job_ids:
        store.append_job_id(name, j)


def test_apply_slurm_states(tmp_path: Path) -> None:
    from awm_platform.runner.backends.slurm import observe, parse_sacct
    from awm_platform.runner.lifecycle import apply_observation
    from awm_platform.store import Store

    info = parse_sacct(SACCT)

    def _apply_slurm(store, run, info):  # what refresh_states does with the SLURM backend's poll
        observation = observe(run, info)
        if observation is None:
            return None
        outcome = apply_observation(store, run.name, observation)
        return outcome.status if outcome.changed else None

    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        _run(store, "a", "slurm", ["41"], status="PREEMPTED")
        _run(store, "b", "slurm", ["42"])
        _run(store, "c", "slurm", ["44"])
        _run(store, "d", "slurm", ["99"])  # not (yet) in sacct: transient
        assert _apply_slurm(store, store.get_run("a"), info) == "RUNNING"
        a = store.get_run("a")
        assert a.gpu_hours == pytest.approx(42 * 2 / 3600)  # preempted time included
        assert _apply_slurm(store, store.get_run("b"), info) == "CANCELLED"
        assert store.get_run("b").ended_at is not None
        assert _apply_slurm(store, store.get_run("c"), info) is None  # unknown state: transient
        assert store.get_run("c").status == "RUNNING"
        assert _apply_slurm(store, store.get_run("d"), info) is None
        assert store.get_run("d").status == "RUNNING"


def test_local_dead_process_is_failed_and_polls_are_rate_limited(tmp_path: Path, monkeypatch) -> None:
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import Store

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with Store.default() as store:
        _run(store, "alive", "local", [str(proc.pid)])
        monkeypatch.setenv("AWM_POLL_INTERVAL_S", "3600")
        assert refresh_states(store) == {"alive": "RUNNING"}
        proc.kill()
        proc.wait()
        # rate-limited: within the interval nothing is polled, the stored status is returned
        assert refresh_states(store) == {"alive": "RUNNING"}
        assert refresh_states(store, force=True) == {"alive": "FAILED"}
        assert "without reporting" in store.get_run("alive").error
        monkeypatch.setenv("AWM_POLL_INTERVAL_S", "0")
        _run(store, "done", "local", ["1"], status="COMPLETED")
        assert refresh_states(store)["done"] == "COMPLETED"  # terminal runs are never polled


@pytest.mark.slurm
def test_one_sacct_call_for_all_runs(slurm_cluster, tmp_path: Path, monkeypatch) -> None:
    """Real sacct: two real jobs, one poll, both states; plain sleeps (no trainer)."""
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import Store

    calls = []
    from awm_platform.runner.backends import slurm

    real = slurm.run_sacct

    def counting(ids):
        calls.append(list(ids))
        return real(ids)

    monkeypatch.setattr(slurm, "run_sacct", counting)
    # the test node may have a single CPU: the short job goes first, then the long one runs
    j2 = slurm_cluster.sbatch("--time=1", "--cpus-per-task=1", wrap="true")
    j1 = slurm_cluster.sbatch("--time=1", "--cpus-per-task=1", wrap="sleep 60")
    with Store.default() as store:
        _run(store, "s1", "slurm", [j1], status="PENDING", gpus=1)
        _run(store, "s2", "slurm", [j2], status="PENDING", gpus=1)
        deadline = time.monotonic() + 120
        got = {}
        while time.monotonic() < deadline:
            got = refresh_states(store, force=True)
            if got["s1"] == "RUNNING" and got["s2"] == "COMPLETED":
                break
            time.sleep(1)
        assert got == {"s1": "RUNNING", "s2": "COMPLETED"}
        assert all(sorted(c) == sorted([j1, j2]) for c in calls[:1])
        assert all(len(c) <= 2 for c in calls)
        subprocess.run(["scancel", j1], check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and refresh_states(store, force=True)["s1"] != "CANCELLED":
            time.sleep(1)
        assert store.get_run("s1").status == "CANCELLED"
    assert os.environ.get("MLFLOW_RUN_ID") is None
