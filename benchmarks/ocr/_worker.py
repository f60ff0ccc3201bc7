"""Worker-process side of the OCR process pool (kept import-light: threads are pinned first)."""

from __future__ import annotations

import os

from benchmarks.errors import ModelUnavailableError  # standard library only: no numpy before the pinning

_ENGINE = None
_SPEC = None


def init_worker(spec) -> None:
    """Pool initializer: pin every thread pool to ``spec.threads`` (1) before heavy imports."""
    global _SPEC
    n = str(max(1, int(spec.threads or 1)))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_THREAD_LIMIT"):
        os.environ[var] = n
    try:
        import cv2  # deferred: thread pools are sized when their libraries load; pinned just above

        cv2.setNumThreads(int(n))
    except ImportError:  # pragma: no cover - cv2 comes with rapidocr
        pass
    _SPEC = spec


def recognize(arr):
    """-> ("ok", [(text, conf), ...]) | ("unavailable", message) | ("error", message). Never raises."""
    global _ENGINE
    try:
        if _ENGINE is None:
            # deferred: loads numpy/onnxruntime/cv2, which must come after init_worker's pinning
            from benchmarks.ocr.engines import build_engine

            _ENGINE = build_engine(_SPEC)
        return ("ok", _ENGINE.recognize(arr))
    except Exception as e:  # noqa: BLE001 - reported back with the sample index by the parent
        kind = "unavailable" if isinstance(e, ModelUnavailableError) else "error"
        return (kind, f"{type(e).__name__}: {e}")
