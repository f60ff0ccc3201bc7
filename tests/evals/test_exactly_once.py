"""Exactly once: the evaluation worker SIGKILLed at each of its step boundaries
(`AWM_FAULT_INJECT`, platform/evals/worker.py FAULT_POINTS), then run again: one COMPLETED
evaluation, every (prompt, sample) row once, an aggregate that is the aggregate of those rows, and
never a half-written one.

The dying worker is a real process: `python -m awm_platform.evals.worker` for one point, a child
of a multiprocessing fork server for the others (the same code; the server imports torch,
diffusers and the worker once, instead of 10 s per process on this box, and forks from a clean
single-threaded interpreter, not from the test process and its threads); its shard's lease is
short (2 s) and the rerun starts once it has expired, as a later job would. The worker takes the
store from job.json and the images folder from the evaluation row, not from the environment the
fork server was started with. Smallest evaluation
that has every boundary: OCR (in-process engine), 2 shards x 2 prompts, 1 sample, 2 Euler steps,
batches of 1 image (so there is a "mid" in generation and in scoring)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from awm_platform.evals.worker import FAULT_POINTS
from tests.evals.conftest import OCR_OPTIONS, TrainedRun, create_evaluation, write_job

LEASE_S = 2.0
# the point whose worker is a fresh interpreter started with the worker's command line
EXEC_POINT = "eval_mid_generation"


def _die_at(point: str, job: Path, eval_id: int) -> None:
    """Run the job with AWM_FAULT_INJECT=point in another process; it must die by SIGKILL there."""
    if point == EXEC_POINT:
        env = {**os.environ, "AWM_FAULT_INJECT": point, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "awm_platform.evals.worker", str(job), "--evals", str(eval_id)],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
        return
    child = _processes().Process(target=_child, args=(point, job, eval_id))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL, child.exitcode


def _processes() -> Any:
    """The fork-server context, its server preloading what a worker imports."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "awm_platform.evals.worker", "trainers.awm.generate",
                                "benchmarks.ocr.benchmark", "tests.evals.test_exactly_once"])
    return ctx


def _child(point: str, job: Path, eval_id: int) -> None:  # pragma: no cover - runs in the child
    from awm_platform.evals.worker import EvalJob

    os.environ["AWM_FAULT_INJECT"] = point
    EvalJob(job, [eval_id])()
    os._exit(0)  # not killed: the parent sees exit code 0 and fails


def _state(store: Any, eval_id: int) -> tuple[Any, list[Any], list[Any]]:
    return store.get_evaluation(eval_id), store.list_shards(eval_id), store.get_sample_scores(eval_id)


def _wait_leases_expire(store: Any, eval_id: int) -> None:
    """Until no shard holds a live lease (the killed worker's expires after LEASE_S)."""
    from awm_platform.store import as_utc, utcnow

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = [s for s in store.list_shards(eval_id)
                if s.status == "RUNNING" and as_utc(s.lease_expires_at) >= utcnow()]
        if not live:
            return
        time.sleep(0.2)
    raise AssertionError("a lease did not expire")


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_worker_killed_at_each_boundary_then_rerun_completes_exactly_once(
        point: str, trained_run: TrainedRun, tmp_path: Path) -> None:
    import torch

    from awm_platform.evals.worker import EvalJob
    from awm_platform.store import Store
    from benchmarks.base import SampleRecord
    from benchmarks.registry import get_benchmark

    torch.set_num_threads(1)
    store = Store.default()
    ev = create_evaluation(store, trained_run, "ocr", num_shards=2, limit=4, batch_size=1)
    job = write_job(tmp_path / "job", store.url, lease_s=LEASE_S)

    _die_at(point, job, ev.id)

    # what the kill left: never a half-written aggregate
    dead, shards, rows = _state(store, ev.id)
    done = [s.shard_index for s in shards if s.status == "DONE"]
    if point == "eval_after_aggregate_commit":
        assert dead.status == "COMPLETED" and dead.score is not None and not dead.mirrored
    else:
        assert dead.status == "RUNNING" and dead.score is None and dead.ci_low is None and dead.sub_scores == {}
    assert len(rows) == 2 * len(done)  # rows exist exactly for the DONE shards
    expected_done = {"eval_after_claim": [], "eval_mid_generation": [], "eval_after_images": [],
                     "eval_mid_scoring": [], "eval_before_shard_commit": [], "eval_after_shard_commit": [0],
                     "eval_before_aggregate_commit": [0, 1], "eval_after_aggregate_commit": [0, 1]}[point]
    assert done == expected_done

    _wait_leases_expire(store, ev.id)
    again = EvalJob(job, [ev.id])()
    assert again["failed"] == []
    assert again["completed"] == ([] if point == "eval_after_aggregate_commit" else [ev.id])

    final, shards, rows = _state(store, ev.id)
    assert final.status == "COMPLETED" and final.error is None
    assert [s.status for s in shards] == ["DONE", "DONE"]
    assert sorted((r.prompt_index, r.sample_index) for r in rows) == [(p, 0) for p in range(4)]  # none lost or twice
    assert final.num_samples == 4
    # DONE shards were never redone: a shard committed before the kill was claimed once
    assert all(s.attempts == 1 for s in shards if s.shard_index in expected_done)
    if point == "eval_after_aggregate_commit":
        assert (final.score, final.ended_at) == (dead.score, dead.ended_at)  # the rerun changed nothing
    recomputed = get_benchmark("ocr", **OCR_OPTIONS).aggregate(
        [SampleRecord(r.prompt_index, r.sample_index, r.score, dict(r.extra)) for r in rows])
    assert (final.score, final.ci_low, final.ci_high) == (recomputed.score, recomputed.ci_low, recomputed.ci_high)
    assert final.sub_scores["n_prompts"] == 4
    # the images of the dead worker were kept or made again: one PNG per sample either way
    assert sorted(p.name for p in Path(final.images_dir).glob("*.png")) == [f"{p:05d}_00.png" for p in range(4)]
    store.close()


def _serve(job: Path, eval_id: int, out: Path) -> None:  # pragma: no cover - runs in the child
    import json

    from awm_platform.evals.worker import EvalJob

    out.write_text(json.dumps(EvalJob(job, [eval_id])()))
    os._exit(0)


@pytest.mark.postgres
def test_two_workers_racing_on_postgresql_do_each_shard_once(trained_run: TrainedRun, tmp_path: Path,
                                                              fresh_postgres_db: str) -> None:
    """Two jobs serve the same 3-shard evaluation at once (two array tasks, or a resubmission next
    to a live job): every shard is claimed by one of them only, one of them completes it."""
    import json

    import torch

    from awm_platform.store import Store

    torch.set_num_threads(1)
    store = Store(fresh_postgres_db)
    ev = create_evaluation(store, trained_run, "ocr", num_shards=3, limit=6, batch_size=1)
    job = write_job(tmp_path / "job", fresh_postgres_db, lease_s=60.0)
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    ctx = _processes()
    children = [ctx.Process(target=_serve, args=(job, ev.id, out)) for out in outs]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [c.exitcode for c in children] == [0, 0]
    results = [json.loads(out.read_text()) for out in outs]
    done = sorted(tuple(x) for r in results for x in r["shards_done"])
    assert done == [(ev.id, k) for k in range(3)]  # each shard by exactly one worker
    assert sorted(e for r in results for e in r["completed"]) == [ev.id]
    final = store.get_evaluation(ev.id)
    assert final.status == "COMPLETED" and final.num_samples == 6
    assert [(s.status, s.attempts) for s in store.list_shards(ev.id)] == [("DONE", 1)] * 3
    assert sorted((r.prompt_index, r.sample_index) for r in store.get_sample_scores(ev.id)) == \
        [(p, 0) for p in range(6)]
    store.close()
