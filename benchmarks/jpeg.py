"""DDPO's JPEG rewards, exactly (``ddpo_pytorch/rewards.py``): JPEG quality 95, size in kB =
bytes / 1000, score ``-kB`` (compressibility) / ``+kB`` (incompressibility). Flow-GRPO's copy
divides by 500 in addition; we keep DDPO's scale. Registered in :mod:`benchmarks.registry`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.base import RewardFn
from benchmarks.errors import RewardError


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
