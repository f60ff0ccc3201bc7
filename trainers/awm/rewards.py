"""Reward functions: interface, registry, weighted combination, asynchronous scoring.

``RewardFn``: ``(images: list[PIL.Image], prompts: list[str], metadata: list[dict]) ->
{component name: float array of len(images)}``.  A reward registered as ``name`` must return
the key ``name`` (its score); it may return extra keys (logged only).

Registry (``name -> "module:factory"``, imported lazily so importing this module is cheap):

* ``jpeg_compressibility`` / ``jpeg_incompressibility``: built in, exactly DDPO's
  (``ddpo_pytorch/rewards.py``): JPEG quality 95, size in kB = bytes / 1000, score ``-kB`` /
  ``+kB``.  (Flow-GRPO's copy divides by 500 in addition; we keep DDPO's scale.)
* ``geneval`` / ``ocr`` / ``pickscore``: ``benchmarks.<name>.reward:make_reward(**kwargs)``.
* any other name of the form ``"package.module:factory"`` is imported as is (custom rewards).

:class:`CombinedReward` evaluates every configured reward and adds ``avg = sum_k w_k score_k``
(upstream ``multi_score``); :class:`AsyncRewardPool` runs it in a thread pool so scoring overlaps
the next rollout round (upstream L913-916).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

RewardFn = Callable[[Sequence["Image.Image"], Sequence[str], Sequence[dict]], dict[str, np.ndarray]]

TOTAL_KEY = "avg"

REGISTRY: dict[str, str] = {
    "jpeg_compressibility": "trainers.awm.rewards:jpeg_compressibility",
    "jpeg_incompressibility": "trainers.awm.rewards:jpeg_incompressibility",
    "geneval": "benchmarks.geneval.reward:make_reward",
    "ocr": "benchmarks.ocr.reward:make_reward",
    "pickscore": "benchmarks.pickscore.reward:make_reward",
}


class RewardError(RuntimeError):
    pass


# ---------------------------------------------------------------------- built-ins
def _jpeg_sizes_kb(images: Sequence[Image.Image]) -> np.ndarray:
    sizes = []
    for im in images:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=95)
        sizes.append(buf.tell() / 1000)
    return np.asarray(sizes, dtype=np.float64)


def jpeg_incompressibility(**kwargs: Any) -> RewardFn:
    if kwargs:
        raise RewardError(f"jpeg_incompressibility takes no options, got {sorted(kwargs)}")

    def _fn(images, prompts, metadata):
        return {"jpeg_incompressibility": _jpeg_sizes_kb(images)}

    return _fn


def jpeg_compressibility(**kwargs: Any) -> RewardFn:
    if kwargs:
        raise RewardError(f"jpeg_compressibility takes no options, got {sorted(kwargs)}")

    def _fn(images, prompts, metadata):
        return {"jpeg_compressibility": -_jpeg_sizes_kb(images)}

    return _fn


# ---------------------------------------------------------------------- registry
def resolve(name: str) -> Callable[..., RewardFn]:
    target = REGISTRY.get(name, name if ":" in name else None)
    if target is None:
        raise RewardError(f"unknown reward {name!r}; known: {', '.join(sorted(REGISTRY))} "
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
