"""Evaluation-service test setup: one tiny SD3 pipeline and one tiny trained run per session, the
run and its checkpoint registered in each test's store as the StoreLogger registers them, and
helpers that create evaluations the way the scheduler plans them (`spec.plan_evaluation` +
`Store.ensure_evaluation`) and write a job's `job.json`."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers run in child processes too: 1 thread each

RUN_NAME = "evalrun"
OCR_OPTIONS: dict[str, Any] = {"workers": 1}  # in-process RapidOCR: no pool to spawn per test


@pytest.fixture(scope="session")
def eval_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    from trainers.awm.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("eval-tiny") / "pipe")


@dataclass(frozen=True)
class TrainedRun:
    config: dict[str, Any]  # the experiment config (a dict, as the store keeps it)
    run_dir: Path
    checkpoint: Path  # checkpoints/step-2


@pytest.fixture(scope="session")
def trained_run(eval_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Two epochs of the smallest training (one optimizer step each), one checkpoint at step 2."""
    import torch

    from awm_platform.config import config_from_dict
    from trainers.awm.recipe import train
    from trainers.awm.tiny import tiny_experiment_dict

    torch.set_num_threads(1)
    data = tiny_experiment_dict(eval_tiny_model, RUN_NAME, num_epochs=2, save_freq=2, eval_freq=1000,
                                eval={"at_start": False, "max_prompts": 1})
    cfg = config_from_dict(data)
    run_dir = tmp_path_factory.mktemp("eval-run") / RUN_NAME
    result = train(cfg, run_dir)
    assert result.status == "completed", result
    ckpt = run_dir / "checkpoints" / "step-2"
    assert (ckpt / "manifest.json").is_file() and (ckpt / "lora").is_dir()
    return TrainedRun(config=cfg.resolved(1), run_dir=run_dir, checkpoint=ckpt)


def manifest_sha256(checkpoint: Path) -> str:
    return hashlib.sha256((checkpoint / "manifest.json").read_bytes()).hexdigest()


def register_run(store: Any, run: TrainedRun, checkpoint: Path | None = None) -> Any:
    """The run and one checkpoint in `store`, as `StoreLogger` records them (sha256 of the manifest)."""
    import json

    ckpt = checkpoint or run.checkpoint
    if store.find_run(RUN_NAME) is None:
        store.create_run(name=RUN_NAME, config_hash="0" * 16, resolved_config=run.config,
                         output_dir=str(run.run_dir), cluster="local")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    return store.add_checkpoint(RUN_NAME, step=int(manifest["step"]), path=str(ckpt),
                                sha256=manifest_sha256(ckpt), formats=list(manifest.get("formats", [])))


def copy_checkpoint(run: TrainedRun, dest: Path) -> Path:
    """A private copy of the trained checkpoint (for tests that tamper with or delete it)."""
    shutil.copytree(run.checkpoint, dest)
    return dest


def service_config(**over: Any) -> Any:
    """`eval.service` for the tiny model: 2 Euler steps, OCR-sized limits."""
    from awm_platform.evals.spec import EvalServiceConfig

    base: dict[str, Any] = {"num_steps": 2, "limit": 4, "batch_size": 4}
    base.update(over)
    return EvalServiceConfig.model_validate(base)


def create_evaluation(store: Any, run: TrainedRun, benchmark: str, *, checkpoint: Path | None = None,
                      num_shards: int = 1, options: dict[str, Any] | None = None,
                      weights: str = "policy", model: str | None = None, **service_over: Any) -> Any:
    """Plan and ensure the evaluation of the run's checkpoint on `benchmark`, as the scheduler does
    (`model`: pretend the run trained on this base model folder)."""
    import dataclasses

    from awm_platform.evals import images
    from awm_platform.evals.spec import ModelContext, plan_evaluation
    from awm_platform.store import eval_key
    from benchmarks.registry import get_benchmark

    ckpt_row = register_run(store, run, checkpoint)
    ckpt = Path(ckpt_row.path)
    weights_dirs = {k: str(v) for k, v in (options or {}).items() if k.endswith("_path")}
    if weights_dirs:  # the weights' identity is part of the benchmark version
        service_over.setdefault("weights_dirs", {benchmark: weights_dirs})
    service = service_config(**service_over)
    bench = get_benchmark(benchmark, **(options or {}))
    ctx = ModelContext.from_resolved(run.config)
    if model is not None:
        ctx = dataclasses.replace(ctx, model=model)
    plan = plan_evaluation(service, bench, ctx, ckpt_row.sha256, weights=weights)  # type: ignore[arg-type]
    key = eval_key(ckpt_row.sha256, benchmark, plan.benchmark_version, plan.spec.hash)
    ev, created = store.ensure_evaluation(
        checkpoint_sha256=ckpt_row.sha256, benchmark=benchmark, benchmark_version=plan.benchmark_version,
        spec_hash=plan.spec.hash, spec=plan.spec.model_dump(mode="json"), target=f"{RUN_NAME}@{ckpt_row.step}",
        num_shards=num_shards, run_name=RUN_NAME, step=ckpt_row.step, checkpoint_id=ckpt_row.id,
        checkpoint_path=str(ckpt), partial=plan.spec.partial, images_dir=str(images.eval_images_dir(key)))
    assert created
    bench.close()
    return ev


def write_job(job_dir: Path, store_url: str, *, options: dict[str, dict[str, Any]] | None = None,
              **over: Any) -> Path:
    from awm_platform.evals.worker import EvalJobFile

    fields: dict[str, Any] = {"store_url": store_url, "lease_s": 30.0, "max_attempts": 3,
                              "device": "cpu", "benchmark_options": options or {"ocr": OCR_OPTIONS}}
    fields.update(over)
    job_dir.mkdir(parents=True, exist_ok=True)
    EvalJobFile(**fields).write(job_dir)
    return job_dir
