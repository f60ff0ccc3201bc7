"""Benchmark registry: name -> ``"module:factory"`` (imported lazily).

A factory is called with keyword options only (``engine``, ``workers`` and benchmark
specific ones such as ``model_path``) and returns a :class:`benchmarks.base.Benchmark`.
Each benchmark package also has ``reward.py: make_reward(**kwargs)`` and ``testing.py``
(see :mod:`benchmarks.base`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from benchmarks.base import BenchmarkError

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.base import Benchmark

BENCHMARKS: dict[str, str] = {
    "geneval": "benchmarks.geneval:make_benchmark",
    "ocr": "benchmarks.ocr:make_benchmark",
    "pickscore": "benchmarks.pickscore:make_benchmark",
}


def list_benchmarks() -> list[str]:
    """Registered benchmark names, sorted."""
    return sorted(BENCHMARKS)


def _resolve(target: str):
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BenchmarkError(f"{module_name} has no attribute {attr!r} (registry entry {target!r})") from None


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """Build the benchmark ``name``. Unknown names raise BenchmarkError listing the known ones."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    factory = _resolve(BENCHMARKS[name])
    return factory(**options)


def benchmark_package(name: str) -> str:
    """Python package of a benchmark (``benchmarks.<name>``), for ``reward`` / ``testing`` modules."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    return f"benchmarks.{name}"
