"""OCR (visual text rendering) benchmark. The package holds the version only; the scorer is
``benchmarks.ocr.benchmark`` (``make_benchmark``: ``engine`` rapidocr|paddleocr|tesseract, ``workers``,
engine options)."""

from __future__ import annotations

#: bump whenever scoring semantics change (the engine label is reported separately)
VERSION = "ocr-1.0"

