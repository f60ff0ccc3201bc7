"""Reward functions: building the configured rewards, weighted combination, asynchronous scoring.

``RewardFn`` (:mod:`benchmarks.base`): ``(images: list[PIL.Image], prompts: list[str],
metadata: list[dict]) -> {component name: float array of len(images)}``.  A reward registered
as ``name`` must return the key ``name`` (its score); it may return extra keys (logged only).

Reward names are looked up in the one registry, :data:`benchmarks.registry.REWARDS`
(``name -> "module:factory"``, imported lazily): DDPO's JPEG rewards (:mod:`benchmarks.jpeg`) and
``geneval`` / ``ocr`` / ``pickscore`` (``benchmarks.<name>.reward:make_reward(**kwargs)``).
Any other name of the form ``"package.module:factory"`` is imported as is (custom rewards).

:class:`CombinedReward` evaluates every configured reward and adds ``avg = sum_k w_k score_k``
(upstream ``multi_score``); :class:`AsyncRewardPool` runs it in a thread pool so scoring overlaps
the next rollout round (upstream L913-916).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.base import RewardFn
from benchmarks.errors import RewardError
from benchmarks.registry import REWARDS

TOTAL_KEY = "avg"


# ---------------------------------------------------------------------- registry
def resolve(name: str) -> Callable[..., RewardFn]:
    target = REWARDS.get(name, name if ":" in name else None)
    if target is None:
        raise RewardError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))} "
                          "(or give 'package.module:factory')")
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise RewardError(f"reward {name!r}: cannot import {mod_name} ({exc})") from exc
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise RewardError(f"reward {name!r}: {mod_name} has no attribute {attr!r}") from None


def build_reward_fn(name: str, kwargs: Mapping[str, Any] | None = None) -> RewardFn:
    return resolve(name)(**dict(kwargs or {}))


class CombinedReward:
    """Weighted sum of rewards. Returns every component plus ``avg`` (the training reward)."""

    def __init__(self, weights: Mapping[str, float], kwargs: Mapping[str, Mapping[str, Any]] | None = None):
        if not weights:
            raise RewardError("no reward configured")
        kwargs = kwargs or {}
        self.weights = {str(k): float(v) for k, v in weights.items()}
        self.fns: dict[str, RewardFn] = {n: build_reward_fn(n, kwargs.get(n)) for n in self.weights}

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def __call__(self, images, prompts, metadata) -> dict[str, np.ndarray]:
        n = len(images)
        out: dict[str, np.ndarray] = {}
        total = np.zeros(n, dtype=np.float64)
        for name, fn in self.fns.items():
            res = fn(list(images), list(prompts), list(metadata))
            if not isinstance(res, Mapping):  # tolerate (scores, info) tuples and bare arrays
                res = {name: res[0] if isinstance(res, tuple) else res}
            if name not in res:
                raise RewardError(f"reward {name!r} returned keys {sorted(res)} without its own key {name!r}")
            for key, val in res.items():
                arr = np.asarray(val, dtype=np.float64).reshape(-1)
                if arr.shape[0] != n:
                    raise RewardError(f"reward {name!r} key {key!r}: {arr.shape[0]} values for {n} images")
                out_key = key if (key == name or key.startswith(name)) else f"{name}_{key}"
                out[out_key] = arr
            total += self.weights[name] * out[name]
        if TOTAL_KEY in out:
            raise RewardError(f"a reward returned the reserved key {TOTAL_KEY!r}")
        out[TOTAL_KEY] = total
        return out


def build_reward(weights: Mapping[str, float], kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> CombinedReward:
    return CombinedReward(weights, kwargs)


class AsyncRewardPool:
    """Thread pool computing rewards while the main thread samples the next round."""

    def __init__(self, reward: RewardFn, max_workers: int = 4):
        self.reward = reward
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="awm-reward")

    def submit(self, images, prompts, metadata) -> Future:
        return self.executor.submit(self.reward, list(images), list(prompts), list(metadata))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AsyncRewardPool:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()
