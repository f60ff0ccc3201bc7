"""In-loop evaluation (spec 5.1, with traps 9.16 / 9.23 / 9.24 fixed).

* Deterministic Euler ODE with ``sample.eval_num_steps`` steps (default 40) and
  ``eval.guidance_scale`` (default: ``sample.guidance_scale``, which upstream uses for both; 1.0 = no
  CFG, as upstream AWM; 4.5 = Flow-GRPO's evaluation).
* Every test prompt gets ONE image whose initial noise is seeded from ``(eval.seed, prompt
  index)``: the same noise at every evaluation and for live and EMA weights, independent of
  the world size and batch composition.
* Prompts are dealt round-robin to the processes (prompt ``i`` -> rank ``i % W``): no padding
  duplicates (upstream pads the last batch).
* Two passes: live LoRA (``eval/<key>``) and the weight EMA swapped in (``eval_ema/<key>``).
* Per-sample scores go to ``<run_dir>/evals/step-<N>/samples.jsonl`` (one line per prompt and
  weight set); the means are returned for the logger. Reward models are the training instances
  when ``eval.rewards`` is unset (upstream loads every reward model twice).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from benchmarks.files import atomic_write
from trainers.awm.samplers import euler_sample, randn_per_sample


def _finite_mean(vals: list[float]) -> float:
    arr = np.asarray([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else float("nan")


def run_eval(
    *,
    accelerator,
    family,
    module,
    prompts,
    indices: list[int],
    reward_pool,
    velocity_factory: Callable,
    guidance_scale: float,
    latent_shape: tuple[int, ...],
    sigmas,
    batch_size: int,
    eval_seed_fn: Callable[[int], int],
    weight_sets: list[tuple[str, Any]],
    max_sequence_length: int,
    progress=None,
    num_log_images: int = 4,
) -> tuple[dict[str, float], list[dict], dict[str, list]]:
    """Evaluate ``indices`` of ``prompts`` on this rank for each ``(prefix, context)`` weight set.

    Returns (metrics on the main process, all gathered records, images for logging).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = [i for i in indices if i % world == rank]
    records: list[dict] = []
    log_images: dict[str, list] = {}
    for prefix, ctx in weight_sets:
        futures = []
        task = progress.task(f"eval ({prefix})", len(mine)) if progress is not None else None
        with ctx if ctx is not None else nullcontext():
            for start in range(0, len(mine), batch_size):
                chunk = mine[start:start + batch_size]
                texts = [prompts.prompts[i] for i in chunk]
                metas = [prompts.metadata[i] for i in chunk]
                cond = family.encode_prompts(texts, max_sequence_length=max_sequence_length)
                gens = [torch.Generator().manual_seed(eval_seed_fn(i)) for i in chunk]
                lat = randn_per_sample((len(chunk), *latent_shape), gens, device=accelerator.device,
                                       dtype=torch.float32)
                vfn = velocity_factory(module, cond, guidance_scale)
                with torch.no_grad(), accelerator.autocast():
                    out = euler_sample(vfn, lat, sigmas, noise_level=0.0)
                images = family.decode(out.x0)
                if prefix not in log_images and images:
                    log_images[prefix] = list(zip(images[:num_log_images], texts[:num_log_images]))
                futures.append((chunk, texts, reward_pool.submit(images, texts, metas)))
                if progress is not None:
                    progress.advance(task, len(chunk))
        for chunk, texts, fut in futures:
            scores = fut.result()
            for j, (i, text) in enumerate(zip(chunk, texts)):
                rec = {"weights": prefix, "prompt_index": int(i), "prompt": text, "seed": int(eval_seed_fn(i))}
                for key, arr in scores.items():
                    v = float(arr[j])
                    rec[key] = v if math.isfinite(v) else None
                records.append(rec)
        if progress is not None:
            progress.remove(task)
    all_records = gather_object(records) if world > 1 else records
    all_records = sorted(all_records, key=lambda r: (r["weights"], r["prompt_index"]))
    metrics: dict[str, float] = {}
    for prefix, _ in weight_sets:
        recs = [r for r in all_records if r["weights"] == prefix]
        keys = sorted({k for r in recs for k in r} - {"weights", "prompt_index", "prompt", "seed"})
        for k in keys:
            metrics[f"{prefix}/{k}"] = _finite_mean([r.get(k) for r in recs])
        metrics[f"{prefix}/num_samples"] = float(len(recs))
    return metrics, all_records, log_images


def write_samples(run_dir: Path, step: int, records: list[dict]) -> Path:
    path = Path(run_dir) / "evals" / f"step-{int(step)}" / "samples.jsonl"
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path
