"""Trainer reward hook: ``make_reward(**reward_kwargs.ocr) -> RewardFn`` returning ``{"ocr": array}``."""

from __future__ import annotations

from typing import Any

from benchmarks.base import RewardFn
from benchmarks.ocr.benchmark import OcrBenchmark


def make_reward(**kwargs: Any) -> RewardFn:
    """Options as for the benchmark: ``engine``, ``workers`` (default: a process pool sized by
    ``auto_workers()``), ``threads_per_worker``, model paths."""
    return OcrBenchmark(**kwargs).as_reward()
