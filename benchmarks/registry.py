"""The one registry of benchmarks and rewards: name -> ``"module:factory"`` (imported lazily).

A benchmark factory is called with keyword options only (``engine``, ``workers`` and benchmark
specific ones such as ``model_path``) and returns a :class:`benchmarks.base.Benchmark`.
Each benchmark package also has ``reward.py: make_reward(**kwargs)``, registered here as the
reward of the same name, and ``testing.py``, the test kit the conformance suite finds (see
:mod:`benchmarks.base`). Adding a benchmark is adding its folder and its line in ``BENCHMARKS``.

Rewards are what the trainer's ``reward_fn`` names and what the config validation checks
against: every benchmark's reward plus DDPO's JPEG rewards (:mod:`benchmarks.jpeg`). Any other
name of the form ``"package.module:factory"`` is a custom reward, imported as is by the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from benchmarks.errors import BenchmarkError

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.base import Benchmark

BENCHMARKS: dict[str, str] = {
    "geneval": "benchmarks.geneval.benchmark:make_benchmark",
    "ocr": "benchmarks.ocr.benchmark:make_benchmark",
    "pickscore": "benchmarks.pickscore.benchmark:make_benchmark",
}

REWARDS: dict[str, str] = {
    "jpeg_compressibility": "benchmarks.jpeg:jpeg_compressibility",
    "jpeg_incompressibility": "benchmarks.jpeg:jpeg_incompressibility",
    **{name: f"benchmarks.{name}.reward:make_reward" for name in BENCHMARKS},
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
