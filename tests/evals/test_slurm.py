"""`awm eval run ... --cluster slurm --shards 2 --wait` on the real local SLURM: the two shards are
ONE job array (`<id>_0`, `<id>_1` in sacct), each task claims its own shard, the evaluation completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.evals.conftest import RUN_NAME, TrainedRun, register_run

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

AWM = str(Path(sys.executable).parent / "awm")


def _sacct(array_job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array_job, "-o", "JobID,State"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line.strip())


def test_shards_run_as_one_slurm_array(trained_run: TrainedRun, isolated_awm_home: Path, slurm_cluster: Any) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [AWM, "eval", "run", f"{RUN_NAME}@2", "--benchmarks", "ocr", "--cluster", "slurm", "--shards", "2",
         "--limit", "4", "--wait", "--json",
         "--set", f"launcher.partition={slurm_cluster.partition}", "--set", "launcher.cpus_per_task=1",
         "--set", "launcher.time_min=10", "--set", "eval.service.num_steps=2",
         "--set", "eval.service.batch_size=4", "--set", 'eval.service.weights_dirs.ocr.workers="1"'],
        capture_output=True, text=True, env=env, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    [rec] = data["evaluations"]
    assert rec["status"] == "COMPLETED" and rec["n"] == 4, out.stderr
    jobs = data["summary"]["jobs"]
    array_job = jobs[0].split("_")[0]
    assert jobs == [f"{array_job}_0", f"{array_job}_1"]  # ONE sbatch array of two tasks
    with Store.default() as store:
        ev = store.get_evaluation(rec["id"])
        shards = store.list_shards(ev.id)
    assert ev.cluster == "slurm" and ev.job_ids == jobs
    assert [s.status for s in shards] == ["DONE", "DONE"] and [s.num_images for s in shards] == [2, 2]
    sbatch = (Path(ev.job_dir) / "submitit").glob("*_submission.sh")
    assert any("#SBATCH --array=0-1%" in p.read_text() for p in sbatch)
    tasks = _sacct(array_job)
    assert set(jobs) <= set(tasks), tasks
