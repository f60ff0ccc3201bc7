"""OCR (visual text rendering) benchmark. Import-light: the scorer loads lazily."""

from __future__ import annotations

from typing import Any

#: bump whenever scoring semantics change (the engine label is reported separately)
VERSION = "ocr-1.0"


def make_benchmark(**options: Any):
    """Registry factory: ``engine`` (rapidocr|paddleocr|tesseract), ``workers``, engine options."""
    from benchmarks.ocr.benchmark import OcrBenchmark

    return OcrBenchmark(**options)
