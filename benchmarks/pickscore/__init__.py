"""PickScore benchmark. Import-light: torch / transformers load lazily."""

from __future__ import annotations

from typing import Any

#: bump whenever scoring semantics change (the model is reported as the engine)
VERSION = "pickscore-1.0"


def make_benchmark(**options: Any):
    """Registry factory: ``model_path``, ``processor_path``, ``device``, ``dtype``, ``batch_size``."""
    from benchmarks.pickscore.benchmark import PickScoreBenchmark

    return PickScoreBenchmark(**options)


def is_nsfw(caption: str) -> bool:
    """Display filter for NSFW-looking captions (see :mod:`benchmarks.pickscore.nsfw`)."""
    from benchmarks.pickscore.nsfw import is_nsfw as _is_nsfw

    return _is_nsfw(caption)
