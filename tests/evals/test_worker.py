"""The evaluation worker on real parts: the tiny model and a tiny trained checkpoint, the real
RapidOCR scorer, a real SQLite store, PNGs on disk (platform/evals/worker.py, images.py)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.evals.conftest import OCR_OPTIONS, TrainedRun, copy_checkpoint, create_evaluation, write_job


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _store() -> Any:
    from awm_platform.store import Store

    return Store.default()


def _run(job_dir: Path, ids: list[int], prefer: int | None = None) -> dict[str, Any]:
    from awm_platform.evals.worker import EvalJob

    return EvalJob(job_dir, ids, prefer)()


def _images_of(ev: Any) -> dict[str, bytes]:
    d = Path(ev.images_dir)
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.png"))}


def _render_cached(ev: Any, prompt_indices: list[int]) -> None:
    """Put rendered text (the prompt's quoted target) in the image cache for these prompts: the
    worker must reuse them, and OCR reads them (a score the random tiny model never gets)."""
    from awm_platform.evals import images
    from awm_platform.evals.spec import EvalSpec, generation_key
    from benchmarks.ocr.scoring import extract_target
    from benchmarks.ocr.testing import render_text
    from benchmarks.registry import get_benchmark

    spec = EvalSpec.model_validate(ev.spec)
    prompts = get_benchmark("ocr", workers=1).prompt_sets()[spec.prompt_set]
    cache = images.ImageCache(generation_key(ev.checkpoint_sha256, spec, prompts.sha256))
    for p in prompt_indices:
        cache.save(p, 0, render_text(extract_target(prompts.prompts[p]), size=(448, 96), font_size=30))


def test_ocr_evaluation_stores_score_ci_rows_and_images(trained_run: TrainedRun, tmp_path: Path,
                                                        isolated_awm_home: Path) -> None:
    from awm_platform.evals.spec import EvalSpec
    from benchmarks.base import SampleRecord
    from benchmarks.registry import get_benchmark
    from trainers.awm.generate import image_seed

    store = _store()
    ev = create_evaluation(store, trained_run, "ocr", limit=6)
    _render_cached(ev, [0, 2, 4])
    mlflow_uri = f"sqlite:///{isolated_awm_home / 'mlflow.db'}"
    job = write_job(tmp_path / "job", store.url, tracking_uri=mlflow_uri, tracking_experiment="evals")
    result = _run(job, [ev.id])
    assert result["completed"] == [ev.id] and result["failed"] == []
    # prompts 1, 3, 5 generated, 0, 2, 4 cached; and 6, 7: the rest of the last batch of 4 (the
    # batches are the full prompt set's, so the full evaluation reuses them), made but not scored
    assert (result["generated"], result["reused"]) == (5, 3)

    ev = store.get_evaluation(ev.id)
    assert ev.status == "COMPLETED" and ev.num_samples == 6 and ev.error is None
    assert ev.mirrored and ev.mlflow_run_id  # the worker that completed it mirrored it
    assert ev.ci_low <= ev.score <= ev.ci_high
    assert ev.sub_scores["n_prompts"] == 6 and "bootstrap" in ev.sub_scores["ci_method"]
    assert ev.wall_s is not None and ev.wall_s > 0 and ev.gpu_hours == 0.0  # CPU: no GPU time
    rows = store.get_sample_scores(ev.id)
    assert [(r.prompt_index, r.sample_index) for r in rows] == [(p, 0) for p in range(6)]
    spec = EvalSpec.model_validate(ev.spec)
    assert [r.seed for r in rows] == [image_seed(spec.seed, p, 0) for p in range(6)]
    # the rendered signs are read (score near 1), the tiny random model's images are not
    assert all(rows[p].score > 0.8 for p in (0, 2, 4)), [r.score for r in rows]
    assert all(rows[p].score < 0.5 for p in (1, 3, 5)), [r.score for r in rows]
    assert all(r.extra["prompt"] and "recognized" in r.extra for r in rows)
    # the stored aggregate is the benchmark's aggregate of the stored rows
    again = get_benchmark("ocr", **OCR_OPTIONS).aggregate(
        [SampleRecord(r.prompt_index, r.sample_index, r.score, dict(r.extra)) for r in rows])
    assert (again.score, again.ci_low, again.ci_high) == (ev.score, ev.ci_low, ev.ci_high)
    assert ev.score == pytest.approx(np.mean([r.score for r in rows]))

    # images: a relative link into the cache, one 0640 PNG per sample, a manifest
    link = Path(ev.images_dir)
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert sorted(_images_of(ev)) == [f"{p:05d}_00.png" for p in range(8)]  # 6, 7: the rest of the last batch
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in link.glob("*.png"))
    manifest = json.loads((link.parent / "manifest.json").read_text())
    assert manifest["eval_key"] == ev.key and manifest["spec"] == ev.spec
    assert manifest["checkpoint_sha256"] == ev.checkpoint_sha256 and len(manifest["prompt_file_sha256"]) == 64

    # a second job finds nothing to do and changes nothing
    second = _run(job, [ev.id])
    assert (second["generated"], second["reused"], second["shards_done"], second["completed"]) == (0, 0, [], [])
    assert store.get_evaluation(ev.id).score == ev.score and len(store.get_sample_scores(ev.id)) == 6
    from mlflow.tracking import MlflowClient

    child = MlflowClient(tracking_uri=mlflow_uri).get_run(ev.mlflow_run_id)
    assert child.data.tags["awm.eval_key"] == ev.key and child.data.metrics["score"] == ev.score


def test_results_do_not_depend_on_the_shard_count(trained_run: TrainedRun, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same evaluation in two platform homes: 1 shard vs 3 shards (batches of 2, dealt to the
    shards; one job claims them all, its preferred shard first): the same seeds, rows, scores and
    bit-identical images (each image is made in the same batch whatever the shard count)."""
    from awm_platform.store import Store

    seen: dict[int, tuple[list[tuple[Any, ...]], dict[str, bytes], float]] = {}
    for shards in (1, 3):
        home = tmp_path / f"home{shards}"
        monkeypatch.setenv("AWM_HOME", str(home))
        store = Store.default()
        ev = create_evaluation(store, trained_run, "ocr", num_shards=shards, limit=6, batch_size=2)
        job = write_job(home / "job", store.url)
        out = _run(job, [ev.id], prefer=shards - 1)
        assert out["shards_done"] == [[ev.id, k] for k in [shards - 1, *range(shards - 1)]], out
        ev = store.get_evaluation(ev.id)
        assert ev.status == "COMPLETED" and [s.status for s in store.list_shards(ev.id)] == ["DONE"] * shards
        rows = [(r.prompt_index, r.sample_index, r.seed, r.score, r.extra) for r in store.get_sample_scores(ev.id)]
        pixels = {name: np.asarray(Image.open(io.BytesIO(png))).tobytes() for name, png in _images_of(ev).items()}
        seen[shards] = (rows, pixels, ev.score)
        store.close()
    assert seen[1][0] == seen[3][0] and len(seen[1][0]) == 6
    assert seen[1][1] == seen[3][1] and len(seen[1][1]) == 6
    assert seen[1][2] == seen[3][2]


def test_a_new_benchmark_version_rescores_the_cached_images(trained_run: TrainedRun, tmp_path: Path) -> None:
    """Same checkpoint and spec, another scorer version (OCR's score threshold changes its engine
    label): the second evaluation reads the first one's PNGs and generates nothing."""
    store = _store()
    first = create_evaluation(store, trained_run, "ocr", limit=4)
    out = _run(write_job(tmp_path / "job1", store.url), [first.id])
    assert (out["completed"], out["generated"], out["reused"]) == ([first.id], 4, 0)
    cache = Path(first.images_dir).resolve()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("*.png")}
    assert len(before) == 4

    options = {**OCR_OPTIONS, "score_threshold": 0.3}
    second = create_evaluation(store, trained_run, "ocr", limit=4, options=options)
    assert second.benchmark_version != first.benchmark_version and second.spec_hash == first.spec_hash
    out = _run(write_job(tmp_path / "job2", store.url, options={"ocr": options}), [second.id])
    assert (out["completed"], out["generated"], out["reused"]) == ([second.id], 0, 4)
    assert Path(second.images_dir).resolve() == cache
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.glob("*.png")} == before
    second = store.get_evaluation(second.id)
    assert second.status == "COMPLETED" and len(store.get_sample_scores(second.id)) == 4


def test_missing_benchmark_weights_fail_the_evaluation_before_any_image(trained_run: TrainedRun,
                                                                         tmp_path: Path) -> None:
    store = _store()
    missing = tmp_path / "no-pickscore-weights"
    options = {"model_path": str(missing), "processor_path": str(missing)}
    ev = create_evaluation(store, trained_run, "pickscore", options=options, limit=2)
    out = _run(write_job(tmp_path / "job", store.url, options={"pickscore": options}), [ev.id])
    assert out["failed"] == [ev.id] and out["generated"] == 0
    ev = store.get_evaluation(ev.id)
    assert ev.status == "FAILED" and ev.ended_at is not None
    assert f"model_path={missing}" in ev.error and "eval.service.weights_dirs.pickscore" in ev.error, ev.error
    assert [s.attempts for s in store.list_shards(ev.id)] == [0]  # no shard was even claimed
    assert not list(Path(ev.images_dir).parent.parent.glob("images/*/*.png"))
    assert store.get_sample_scores(ev.id) == []


@pytest.mark.parametrize("damage", ["modified", "deleted", "replaced"])
def test_a_checkpoint_that_no_longer_matches_fails_with_the_reason(trained_run: TrainedRun, tmp_path: Path,
                                                                   damage: str) -> None:
    import shutil

    store = _store()
    ckpt = copy_checkpoint(trained_run, tmp_path / "ckpt" / "step-2")
    ev = create_evaluation(store, trained_run, "ocr", checkpoint=ckpt, limit=2)
    if damage == "modified":
        with open(ckpt / "lora" / "pytorch_lora_weights.safetensors", "ab") as fh:
            fh.write(b"\0")
        reason = "checkpoint no longer matches its manifest: " + str(ckpt) + \
            ": sha256 mismatch for lora/pytorch_lora_weights.safetensors"
    elif damage == "deleted":
        shutil.rmtree(ckpt)
        reason = f"checkpoint deleted: {ckpt}"
    else:  # the folder now holds another (valid) checkpoint: its manifest differs
        manifest = json.loads((ckpt / "manifest.json").read_text())
        (ckpt / "manifest.json").write_text(json.dumps({**manifest, "created": manifest["created"] + 1}))
        reason = f"checkpoint {ckpt}: its manifest's sha256 is "
    out = _run(write_job(tmp_path / "job", store.url), [ev.id])
    assert out["failed"] == [ev.id] and out["generated"] == 0
    ev = store.get_evaluation(ev.id)
    assert ev.status == "FAILED" and ev.error.startswith(reason), ev.error
    assert [s.attempts for s in store.list_shards(ev.id)] == [0]


def test_a_shard_that_keeps_failing_fails_the_evaluation_after_max_attempts(trained_run: TrainedRun,
                                                                             tmp_path: Path) -> None:
    """Generation fails (a resolution whose latents the transformer's patches do not tile): each
    claim fails and gives the shard back; the claim after `max_attempts` fails the evaluation with
    the last error."""
    store = _store()
    ev = create_evaluation(store, trained_run, "ocr", limit=2, resolution=66)
    out = _run(write_job(tmp_path / "job", store.url, max_attempts=2), [ev.id])
    assert out["failed"] == [ev.id] and out["shards_done"] == []
    ev = store.get_evaluation(ev.id)
    assert ev.status == "FAILED"
    assert ev.error.startswith("shard 0/1 failed 2 times (eval.service.max_attempts=2); last error: "
                               "ValueError: velocity_fn returned shape"), ev.error
    assert [(s.status, s.attempts) for s in store.list_shards(ev.id)] == [("PENDING", 3)]


def test_a_model_that_cannot_load_fails_at_once(trained_run: TrainedRun, tmp_path: Path) -> None:
    """The base model's folder is gone: nothing a retry can fix, so preflight fails the evaluation
    with the path before any shard is claimed."""
    store = _store()
    model = tmp_path / "model-copy"
    ev = create_evaluation(store, trained_run, "ocr", limit=2, model=str(model))
    out = _run(write_job(tmp_path / "job", store.url), [ev.id])
    assert out["failed"] == [ev.id] and out["generated"] == 0
    ev = store.get_evaluation(ev.id)
    assert ev.status == "FAILED" and ev.error.startswith(f"cannot load {model}"), ev.error
    assert [s.attempts for s in store.list_shards(ev.id)] == [0]


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}", "--evals", "1"], "error: {missing}/job.json: no such file (not an evaluation job directory)"),
    (["{job}", "--evals", "1,x"], "error: --evals '1,x': expected comma-separated evaluation ids"),
    (["{job}", "--evals", ","], "error: --evals: no evaluation id given"),
])
def test_worker_entry_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    job = write_job(tmp_path / "job", "sqlite:///" + str(tmp_path / "awm.db"))
    (tmp_path / "bad").mkdir()
    fill = {"missing": str(tmp_path / "bad"), "job": str(job)}
    out = subprocess.run([sys.executable, "-m", "awm_platform.evals.worker", *(a.format(**fill) for a in args)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and out.stderr.strip() == message.format(**fill), out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_geneval_evaluation_is_stratified_per_tag(trained_run: TrainedRun, tmp_path: Path) -> None:
    """GenEval on the tiny random detector and CLIP (its real loading and scoring code): 2 shards,
    2 samples per prompt; per-tag accuracies and a CI stratified by tag in the aggregate."""
    from benchmarks.base import SampleRecord
    from benchmarks.geneval.testing import build_tiny_clip, build_tiny_detector
    from benchmarks.registry import get_benchmark

    options = {"detector_path": str(build_tiny_detector(tmp_path / "det")),
               "clip_path": str(build_tiny_clip(tmp_path / "clip")), "device": "cpu"}
    store = _store()
    ev = create_evaluation(store, trained_run, "geneval", options=options, num_shards=2, limit=6,
                           samples_per_prompt=2)
    out = _run(write_job(tmp_path / "job", store.url, options={"geneval": options}), [ev.id])
    assert out["completed"] == [ev.id] and out["generated"] == 12
    ev = store.get_evaluation(ev.id)
    rows = store.get_sample_scores(ev.id)
    assert sorted((r.prompt_index, r.sample_index) for r in rows) == [(p, s) for p in range(6) for s in range(2)]
    assert len({r.seed for r in rows}) == 12  # every image its own noise
    prompts = get_benchmark("geneval", **options).prompt_sets()["test"]
    tags = {prompts.metadata[p]["tag"] for p in range(6)}
    assert set(ev.sub_scores["per_tag"]) == tags and all(r.extra["tag"] in tags for r in rows)
    assert ev.sub_scores["n_prompts"] == 6 and "stratified by tag" in ev.sub_scores["ci_method"]
    recomputed = get_benchmark("geneval", **options).aggregate(
        [SampleRecord(r.prompt_index, r.sample_index, r.score, dict(r.extra)) for r in rows])
    assert (ev.score, ev.ci_low, ev.ci_high) == (recomputed.score, recomputed.ci_low, recomputed.ci_high)
    assert ev.score == pytest.approx(np.mean(list(ev.sub_scores["per_tag"].values())))


def test_eval_job_pickles_with_its_arguments_only(tmp_path: Path) -> None:
    """submitit pickles the job into the job folder and unpickles it in the task."""
    import pickle

    from awm_platform.evals.worker import EvalJob

    job = pickle.loads(pickle.dumps(EvalJob(tmp_path, [3, 4], 1)))
    assert (job.job_dir, job.eval_ids, job.prefer_shard) == (str(tmp_path), [3, 4], 1)
    again = job.checkpoint().function  # preempted: the same job again
    assert (again.job_dir, again.eval_ids, again.prefer_shard) == (str(tmp_path), [3, 4], 1)


@pytest.mark.parametrize("how", ["re-claimed", "cancelled"])
def test_a_shard_whose_lease_is_lost_is_never_committed(trained_run: TrainedRun, tmp_path: Path, how: str) -> None:
    """The worker's shard is taken over (its lease expired and another worker claimed it) or its
    evaluation is cancelled while it works: it drops the shard, nothing of it is written."""
    import time

    from awm_platform.evals.worker import EvalJobFile, Worker

    store = _store()
    ev = create_evaluation(store, trained_run, "ocr", limit=2)
    worker = Worker(EvalJobFile.read(write_job(tmp_path / "job", store.url, lease_s=0.3)))
    try:
        work = worker.preflight(ev)
        shard = store.claim_shard(ev.id, worker.holder, lease_s=0.05)
        if how == "re-claimed":
            time.sleep(0.1)
            assert store.claim_shard(ev.id, "another-worker", lease_s=60) is not None
        else:
            assert store.cancel_evaluation(ev.id)
        assert worker.run_shard(work, shard) == "lost"
    finally:
        worker.close()
    assert worker.stats.shards_done == [] and store.get_sample_scores(ev.id) == []
    (after,) = store.list_shards(ev.id)
    if how == "re-claimed":
        assert (after.status, after.lease_holder, after.attempts) == ("RUNNING", "another-worker", 2)
    else:
        assert after.status == "PENDING" and store.get_evaluation(ev.id).status == "CANCELLED"


def test_images_go_where_the_evaluation_row_points(trained_run: TrainedRun, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, isolated_awm_home: Path) -> None:
    """A job whose $AWM_HOME differs from the scheduler's (another working directory on a node)
    writes the images into the evals folder of the recorded `images_dir`."""
    store = _store()
    ev = create_evaluation(store, trained_run, "ocr", limit=2)
    job = write_job(tmp_path / "job", store.url)
    elsewhere = tmp_path / "node-home"
    monkeypatch.setenv("AWM_HOME", str(elsewhere))
    assert _run(job, [ev.id])["completed"] == [ev.id]
    assert Path(ev.images_dir).parent.parent == isolated_awm_home / "evals"
    # limit 2 in batches of 4: the batch's other two images are made (and cached) too
    assert sorted(p.name for p in Path(ev.images_dir).glob("*.png")) == [f"{p:05d}_00.png" for p in range(4)]
    assert [r.prompt_index for r in store.get_sample_scores(ev.id)] == [0, 1]
    assert not (elsewhere / "evals").exists()


def test_an_aggregate_that_cannot_be_computed_fails_the_evaluation(tmp_path: Path) -> None:
    """Every shard DONE but the aggregate raises (here: a spec the worker cannot read): the
    evaluation is FAILED with the reason; a crash would leave it RUNNING and resubmitted forever."""
    store = _store()
    ev, _ = store.ensure_evaluation(checkpoint_sha256="e" * 64, benchmark="ocr", benchmark_version="v",
                                    spec_hash="s", spec={"num_steps": "many"}, target="base:m", num_shards=1)
    shard = store.claim_shard(ev.id, "test", lease_s=60)
    assert store.commit_shard(shard.id, "test", [{"prompt_index": 0, "sample_index": 0, "score": 1.0}])
    out = _run(write_job(tmp_path / "job", store.url), [ev.id])
    assert out["failed"] == [ev.id]
    ev = store.get_evaluation(ev.id)
    assert ev.status == "FAILED" and ev.error.startswith("aggregate: ValidationError"), ev.error


def test_auto_device_spreads_local_tasks_over_the_gpus() -> None:
    from awm_platform.evals.worker import auto_device

    assert [auto_device(0, k) for k in range(3)] == ["cpu"] * 3
    assert [auto_device(1, k) for k in range(3)] == ["cuda:0"] * 3  # a SLURM task sees its own GPU
    assert [auto_device(4, k) for k in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
