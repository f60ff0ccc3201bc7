"""Several runs as ONE SLURM job array with a concurrency limit (`--array=0-N%limit`)."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _sacct_tasks(array_job: str) -> dict[str, dict[str, str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array_job, "-o", "JobID,State,Start,End"],
                         capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        job_id, state, start, end = line.split("|")
        rows[job_id] = {"state": state, "start": start, "end": end}
    return rows


def test_job_array_runs_every_config_under_the_concurrency_limit(tiny_model: Path, slurm_cluster: Any) -> None:
    from awm_platform.runner.api import submit_runs
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import Store

    launcher = {"partition": slurm_cluster.partition, "cpus_per_task": 1, "gpus_per_node": 1, "time_min": 10,
                "array_parallelism": 1}
    cfgs = [tiny_config(tiny_model, f"arr-{i}", num_epochs=1, eval_freq=1000, launcher=launcher) for i in range(2)]
    store = Store.default()
    subs = submit_runs(cfgs, cluster="slurm", store=store)

    array_job = subs[0].job_id.split("_")[0]
    assert [s.job_id for s in subs] == [f"{array_job}_0", f"{array_job}_1"]
    assert "#SBATCH --array=0-1%1" in subs[0].sbatch_script
    assert all(store.get_run(s.name).job_ids == [s.job_id] for s in subs)

    deadline = time.monotonic() + 300
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = refresh_states(store, [s.name for s in subs], force=True)
        if all(v in ("COMPLETED", "FAILED", "CANCELLED") for v in states.values()):
            break
        time.sleep(1.0)
    assert states == {"arr-0": "COMPLETED", "arr-1": "COMPLETED"}, [store.get_run(s.name).error for s in subs]
    for s in subs:
        assert (s.run_dir / "checkpoints").is_dir() and any((s.run_dir / "checkpoints").glob("step-*"))

    # %1: the second task starts only after the first one ended. The store says COMPLETED as soon as
    # the job's controller records it; the job itself (closing its MLflow run, exiting) ends a little
    # later, so wait for SLURM's own accounting to show both tasks finished.
    deadline = time.monotonic() + 120
    tasks = _sacct_tasks(array_job)
    while time.monotonic() < deadline and any(
            v["state"] in ("RUNNING", "PENDING", "COMPLETING") for v in tasks.values()):
        time.sleep(1.0)
        tasks = _sacct_tasks(array_job)
    t0, t1 = tasks[f"{array_job}_0"], tasks[f"{array_job}_1"]
    assert t0["state"] == t1["state"] == "COMPLETED"
    assert datetime.fromisoformat(t1["start"]) >= datetime.fromisoformat(t0["end"])
    store.close()
