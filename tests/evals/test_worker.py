"""The evaluation worker on real parts: the tiny model and a tiny trained checkpoint, the real
RapidOCR scorer, a real SQLite store, PNGs on disk (platform/evals/worker.py, images.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
    job = write_job(tmp_path / "job", store.url)
    result = _run(job, [ev.id])
    assert result["completed"] == [ev.id] and result["failed"] == []
    assert (result["generated"], result["reused"]) == (3, 3)  # prompts 1, 3, 5 generated; 0, 2, 4 cached

    ev = store.get_evaluation(ev.id)
    assert ev.status == "COMPLETED" and ev.num_samples == 6 and ev.error is None
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
    assert sorted(_images_of(ev)) == [f"{p:05d}_00.png" for p in range(6)]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in link.glob("*.png"))
    manifest = json.loads((link.parent / "manifest.json").read_text())
    assert manifest["eval_key"] == ev.key and manifest["spec"] == ev.spec
    assert manifest["checkpoint_sha256"] == ev.checkpoint_sha256 and len(manifest["prompt_file_sha256"]) == 64

    # a second job finds nothing to do and changes nothing
    second = _run(job, [ev.id])
    assert (second["generated"], second["reused"], second["shards_done"], second["completed"]) == (0, 0, [], [])
    assert store.get_evaluation(ev.id).score == ev.score and len(store.get_sample_scores(ev.id)) == 6
