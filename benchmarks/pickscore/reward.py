"""Trainer reward hook: ``make_reward(**reward_kwargs.pickscore)`` -> ``{"pickscore": raw / 26}``."""

from __future__ import annotations

from typing import Any

from benchmarks.base import RewardFn
from benchmarks.pickscore.benchmark import PickScoreBenchmark


def make_reward(**kwargs: Any) -> RewardFn:
    """Options: ``model_path``, ``processor_path``, ``device``, ``dtype``, ``batch_size``."""
    return PickScoreBenchmark(**kwargs).as_reward()
