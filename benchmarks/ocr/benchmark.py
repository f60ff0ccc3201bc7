"""OCR (visual text rendering) benchmark: Flow-GRPO / AWM ``OcrScorer`` semantics.

See ``benchmarks/ocr/README.md`` and ``docs`` (benchmarks.md §3) for the exact formula.
Scoring is CPU-bound; with ``workers > 1`` images are recognised in a process pool
(spawned once, reused, one engine thread per worker).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.base import (
    Benchmark,
    BenchmarkError,
    ModelStatus,
    ModelUnavailableError,
    PromptSet,
    to_rgb,
    validate_batch,
)
from benchmarks.ocr import VERSION
from benchmarks.ocr.engines import DEFAULT_ENGINE, EngineSpec, build_engine, engine_label, engine_status
from benchmarks.ocr.scoring import SCORE_THRESHOLD, concat_recognitions, extract_target, ocr_reward

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPT_SETS = {
    # name: (file, sha256)
    "test": ("test.txt", "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc"),
}


def auto_workers() -> int:
    """Default pool size: the CPUs per local process (LOCAL_WORLD_SIZE ranks share a node), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, cpus // local))


class OcrBenchmark(Benchmark):
    """``workers``: None -> :func:`auto_workers`; 1 -> in-process engine; N > 1 -> spawned process pool."""

    name = "ocr"
    version = VERSION

    def __init__(
        self,
        engine: str | None = None,
        workers: int | None = None,
        threads_per_worker: int = 1,
        score_threshold: float = SCORE_THRESHOLD,
        **engine_options: Any,
    ):
        self.spec = EngineSpec(engine or DEFAULT_ENGINE, dict(engine_options), int(threads_per_worker))
        workers = auto_workers() if workers is None else int(workers)
        if workers < 1:
            raise BenchmarkError(f"ocr: workers must be >= 1, got {workers}")
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise BenchmarkError(f"ocr: score_threshold must be in [0, 1], got {score_threshold}")
        self.workers = workers
        self.score_threshold = float(score_threshold)
        self._engine = None
        self._pool: ProcessPoolExecutor | None = None
        self._finalizer = None
        self._lock = threading.Lock()  # lazy engine / pool creation (rewards may run in a thread)
        self._label = engine_label(self.spec)

    # ------------------------------------------------------------------ interface
    @property
    def engine(self) -> str:
        if self.score_threshold != SCORE_THRESHOLD:
            return f"{self._label}:thr{self.score_threshold:g}"
        return self._label

    def prompt_sets(self) -> dict[str, PromptSet]:
        return {k: PromptSet.from_text(k, DATA_DIR / f, sha) for k, (f, sha) in PROMPT_SETS.items()}

    def check_models(self) -> ModelStatus:
        return engine_status(self.spec)

    def score_batch(self, images, prompts, metadata=None) -> list[dict]:
        md = validate_batch(self.name, images, prompts, metadata)
        if not images:
            return []
        targets = [self._target(p, m, i) for i, (p, m) in enumerate(zip(prompts, md))]
        arrays = [np.ascontiguousarray(np.asarray(to_rgb(im), dtype=np.uint8)) for im in images]
        results = self._recognize_all(arrays)
        out = []
        for target, res in zip(targets, results):
            recognized = concat_recognitions(res, self.score_threshold)
            reward, dist = ocr_reward(recognized, target)
            out.append({"score": float(reward), "target": target, "recognized": recognized, "distance": int(dist)})
        return out

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._pool = None

    # ------------------------------------------------------------------ internals
    def _target(self, prompt: str, meta: dict, i: int) -> str:
        if "target" in meta:
            t = meta["target"]
            if not isinstance(t, str) or not t.replace(" ", ""):
                raise BenchmarkError(f"ocr: sample {i}: metadata 'target' must be a non-empty string, got {t!r}")
            return t
        try:
            t = extract_target(prompt)
        except BenchmarkError as e:
            raise BenchmarkError(f"sample {i}: {e} (or pass metadata {{'target': ...}})") from None
        if not t.replace(" ", ""):
            raise BenchmarkError(f'ocr: sample {i}: empty quoted target in prompt {prompt[:120]!r}')
        return t

    def _ensure_available(self) -> None:
        st = engine_status(self.spec)
        if not st.available:
            raise ModelUnavailableError(st.detail)

    def _recognize_all(self, arrays: list[np.ndarray]) -> list[list[tuple[str, float]]]:
        if self.workers <= 1:
            with self._lock:
                if self._engine is None:
                    self._ensure_available()
                    self._engine = build_engine(self.spec)
            out = []
            for i, a in enumerate(arrays):
                try:
                    out.append(self._engine.recognize(a))
                except Exception as e:
                    raise BenchmarkError(f"ocr: sample {i}: engine {self.engine} failed: {type(e).__name__}: {e}") from e
            return out
        pool = self._get_pool()
        chunk = max(1, len(arrays) // (self.workers * 4))
        from concurrent.futures.process import BrokenProcessPool

        from benchmarks.ocr import _worker

        try:
            results = list(pool.map(_worker.recognize, arrays, chunksize=chunk))
        except BrokenProcessPool as e:
            self.close()
            raise BenchmarkError(
                f"ocr: the worker pool ({self.workers} spawned processes) died: {e}. Scripts that score with "
                "workers > 1 must guard their entry point with `if __name__ == '__main__':` (spawn start method)"
            ) from None
        out = []
        for i, (kind, payload) in enumerate(results):
            if kind == "unavailable":
                raise ModelUnavailableError(payload)
            if kind != "ok":
                raise BenchmarkError(f"ocr: sample {i}: engine {self.engine} failed: {payload}")
            out.append(payload)
        return out

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._get_pool_locked()

    def _get_pool_locked(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._ensure_available()
            from benchmarks.ocr import _worker

            pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_worker.init_worker,
                initargs=(self.spec,),
            )
            self._pool = pool
            self._finalizer = weakref.finalize(self, pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def warmup(self) -> None:
        """Start the engine (or every pool worker) and run it once on a blank image."""
        blank = np.full((64, 64, 3), 255, dtype=np.uint8)
        self._recognize_all([blank] * max(1, self.workers * 2 if self.workers > 1 else 1))


def make_benchmark(**options: Any) -> OcrBenchmark:
    return OcrBenchmark(**options)

