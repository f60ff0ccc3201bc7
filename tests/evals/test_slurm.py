"""`awm eval run ... --cluster slurm --shards 2 --weights both --wait` on the real local SLURM: the two
evaluations (policy and EMA LoRA) of two shards each are ONE job array of four tasks (`<id>_0` ..
`<id>_3` in sacct) serving both; every shard is done once and both evaluations complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def test_shards_of_two_evaluations_run_as_one_slurm_array(trained_run: TrainedRun, isolated_awm_home: Path, slurm_cluster: Any) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "OMP_NUM_THREADS": "1",
           # --wait polls every second, not 2, 3, 4.5, 6.8, 10 s...: that overshoots the end by a third
           "AWM_EVAL_WAIT_MAX_POLL_S": "1"}
    out = subprocess.run(
        [AWM, "eval", "run", f"{RUN_NAME}@2", "--benchmarks", "ocr", "--cluster", "slurm", "--shards", "2",
         "--weights", "both", "--limit", "4", "--wait", "--json",
         "--set", f"launcher.partition={slurm_cluster.partition}", "--set", "launcher.cpus_per_task=1",
         "--set", "launcher.time_min=10", "--set", "eval.service.num_steps=2",
         "--set", "eval.service.batch_size=2", "--set", "eval.service.weights_dirs.ocr.workers=1"],  # 2 batches
        capture_output=True, text=True, env=env, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    recs = data["evaluations"]
    assert sorted(r["weights"] for r in recs) == ["ema", "policy"], out.stderr
    assert all(r["status"] == "COMPLETED" and r["n"] == 4 for r in recs), out.stderr
    jobs = data["summary"]["jobs"]
    array_job = jobs[0].split("_")[0]
    assert jobs == [f"{array_job}_{k}" for k in range(4)]  # ONE sbatch array: a task per shard of the group
    with Store.default() as store:
        for rec in recs:
            ev = store.get_evaluation(rec["id"])
            shards = store.list_shards(ev.id)
            assert ev.cluster == "slurm" and ev.job_ids == jobs
            assert [s.status for s in shards] == ["DONE", "DONE"] and [s.num_images for s in shards] == [2, 2]
            assert [s.attempts for s in shards] == [1, 1]
    sbatch = list((Path(ev.job_dir) / "submitit").glob("*_submission.sh"))
    assert any("#SBATCH --array=0-3%" in p.read_text() for p in sbatch), [p.name for p in sbatch]
    # the evaluations may complete before the last tasks even start (two tasks did all the work):
    # those find nothing to claim and end; wait for SLURM to have run them all
    deadline = time.monotonic() + 180
    tasks = _sacct(array_job)
    while time.monotonic() < deadline and (set(jobs) - set(tasks) or any(
            state.split()[0] in ("PENDING", "RUNNING", "COMPLETING") for state in tasks.values())):
        time.sleep(1.0)
        tasks = _sacct(array_job)
    assert {tasks.get(j, "").split(" ")[0] for j in jobs} == {"COMPLETED"}, tasks


def test_a_rejected_submission_gives_its_claim_back(trained_run: TrainedRun, isolated_awm_home: Path,
                                                    slurm_cluster: Any) -> None:
    """sbatch refuses the job (no such partition): one error line naming the key, no job directory
    left, and the evaluation is claimable at once, so the corrected command submits right away."""
    from awm_platform.evals import images
    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "OMP_NUM_THREADS": "1"}
    args = [AWM, "eval", "run", f"{RUN_NAME}@2", "--benchmarks", "ocr", "--cluster", "slurm", "--limit", "2",
            "--set", "launcher.cpus_per_task=1", "--set", "launcher.time_min=10", "--set", "eval.service.num_steps=2"]
    bad = subprocess.run([*args, "--set", "launcher.partition=no-such-partition"], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.count("error:") == 1 and "launcher.partition" in bad.stderr, bad.stderr
    with Store.default() as store:
        [ev] = store.list_evaluations()
        assert (ev.status, ev.submit_token, ev.submitted_at, ev.job_ids) == ("PENDING", None, None, [])
    jobs_dir = images.evals_root() / "jobs"
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    good = subprocess.run([*args, "--set", f"launcher.partition={slurm_cluster.partition}"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert good.returncode == 0, good.stderr
    with Store.default() as store:
        assert len(store.get_evaluation(ev.id).job_ids) == 1
        for job in store.get_evaluation(ev.id).job_ids:
            subprocess.run(["scancel", job], check=False)
