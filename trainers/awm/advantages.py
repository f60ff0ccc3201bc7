"""GRPO-style group advantages for AWM (spec section 1.5, trap 9.1 / 9.10 / 9.11).

Upstream (``flow_grpo/stat_tracking.py`` + ``train_sd3_awm.py`` L996-1051, L1293-1299):

* per prompt: ``mean_g = mean(r in g)``;
* ``std = std(all N rewards) + 1e-4`` (``global_std``) or ``std(r in g) + 1e-4``
  (population std, ``ddof=0``, as ``numpy.std``);
* ``A_i = (r_i - mean_g(i)) / std``;
* without per-prompt tracking: ``A = (r - mean(r)) / (std(r) + 1e-4)`` over the whole batch;
* inside the update: ``A' = clamp(A, -adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max``
  (a *rescale*, not a clip to +-1; trap 9.1).

Everything is computed in float64 (upstream converts to a float64 numpy array) and returned as
float32.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = ["AdvantageResult", "compute_advantages", "rescale_advantages"]


@dataclass
class AdvantageResult:
    """Output of :func:`compute_advantages`.

    ``advantages`` is A' (clamped and rescaled, float32), ``raw_advantages`` is A (before the
    clamp, float32), ``keep`` marks samples to train on (all True unless
    ``zero_std_policy="drop"``), ``stats`` holds logging scalars.
    """

    advantages: Tensor
    raw_advantages: Tensor
    keep: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def rescale_advantages(raw: Tensor, *, adv_clip_max: float, advantage_max: float) -> Tensor:
    """``A' = clamp(A, -adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max`` (L1293-1299)."""
    if not adv_clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    return torch.clamp(raw, -adv_clip_max, adv_clip_max) / adv_clip_max * advantage_max


def _group_indices(group_ids: Sequence[Hashable]) -> tuple[list[Hashable], Tensor]:
    """Map each sample to a group index (groups numbered in order of first appearance)."""
    order: dict[Hashable, int] = {}
    idx = []
    for g in group_ids:
        try:
            k = order.setdefault(g, len(order))
        except TypeError as exc:  # unhashable key
            raise ValueError(f"group id {g!r} is not hashable") from exc
        idx.append(k)
    return list(order), torch.tensor(idx, dtype=torch.long)


def compute_advantages(
    rewards: Tensor,
    group_ids: Sequence[Hashable],
    *,
    per_prompt_stat_tracking: bool,
    global_std: bool,
    adv_clip_max: float,
    advantage_max: float,
    zero_std_policy: Literal["keep", "drop"] = "keep",
    eps: float = 1e-4,
) -> AdvantageResult:
    """Compute A (raw) and A' (clamped + rescaled) for N gathered rewards.

    Args:
        rewards: (N,) rewards of the whole epoch (gathered over all ranks).
        group_ids: len-N prompt keys (samples of the same prompt share a key).
        per_prompt_stat_tracking: use per-prompt means (GRPO). Without it, a single batch mean.
        global_std: with per-prompt tracking, divide by the std over all N rewards (upstream
            default) instead of the per-prompt std.
        adv_clip_max, advantage_max: see module docstring.
        zero_std_policy: what to do with groups whose rewards are all equal (their A is 0).
            ``"keep"``: keep them (upstream AWM; they still feed the KL terms, trap 9.10).
            ``"drop"``: ``keep=False`` for their samples (Flow-GRPO-like filtering). Only
            meaningful with per-prompt tracking: with a single batch baseline those samples
            have a non-zero advantage, so nothing is dropped.
        eps: added to the std (upstream 1e-4).

    Zero-std groups are detected exactly (``max == min`` within the group) and their raw
    advantage is set to exactly 0 (upstream gets ``(r - mean)/std`` which can be ~1e-13 when
    the float mean is not bit-equal to the common value).

    Stats (upstream helper ``calculate_zero_std_ratio``, L147-195; ratios are over *groups*):
      ``zero_std_ratio`` fraction of groups with all-equal rewards;
      ``positive_zero_std_ratio`` of those, the fraction (of all groups) whose common reward is
      close to 1.0 ("all correct", ``np.isclose`` defaults rtol=1e-5, atol=1e-8);
      ``negative_zero_std_ratio`` same with 0.0 ("all wrong"). Both are only informative for
      rewards in [0, 1] (GenEval/OCR); for PickScore/26 they are ~0;
      ``reward_std_mean`` mean over groups of the population std of each group;
      ``group_size_mean/min/max``, ``num_groups``, ``kept_ratio``, ``adv_abs_mean`` (mean |A'|
      over all N samples), ``raw_adv_abs_mean``, ``adv_clip_frac`` (fraction |A| >
      adv_clip_max), ``reward_mean``, ``reward_std`` (global population std).
    """
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    n = rewards.shape[0]
    if n == 0:
        raise ValueError("rewards is empty: cannot compute advantages for 0 samples")
    if len(group_ids) != n:
        raise ValueError(f"group_ids has {len(group_ids)} entries but rewards has {n}")
    if zero_std_policy not in ("keep", "drop"):
        raise ValueError(f"zero_std_policy must be 'keep' or 'drop', got {zero_std_policy!r}")
    if not adv_clip_max > 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    if not advantage_max >= 0:
        raise ValueError(f"advantage_max must be >= 0, got {advantage_max}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it guards the division by the std), got {eps}")
    r = rewards.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(r).all():
        bad = torch.nonzero(~torch.isfinite(r)).flatten()[:5].tolist()
        raise ValueError(f"rewards contain non-finite values (e.g. at indices {bad})")

    keys, gidx = _group_indices(group_ids)
    num_groups = len(keys)
    sizes = torch.bincount(gidx, minlength=num_groups)
    group_sum = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, gidx, r)
    group_mean = group_sum / sizes.to(torch.float64)
    group_var = torch.zeros(num_groups, dtype=torch.float64).index_add_(
        0, gidx, (r - group_mean[gidx]) ** 2
    ) / sizes.to(torch.float64)
    group_std = group_var.sqrt()  # population std (numpy.std, ddof=0)
    gmax = torch.full((num_groups,), -math.inf, dtype=torch.float64).scatter_reduce_(0, gidx, r, "amax")
    gmin = torch.full((num_groups,), math.inf, dtype=torch.float64).scatter_reduce_(0, gidx, r, "amin")
    zero_std = gmax == gmin  # exact "all rewards equal"

    global_mean = r.mean()
    global_pop_std = r.std(correction=0)

    if per_prompt_stat_tracking:
        if bool((sizes < 2).any()):
            singles = [keys[i] for i in torch.nonzero(sizes < 2).flatten()[:3].tolist()]
            raise ValueError(
                "per_prompt_stat_tracking needs at least 2 samples per prompt, but group(s) "
                f"{singles!r} have a single sample (upstream disables the tracker when "
                "num_image_per_prompt == 1; set per_prompt_stat_tracking=false for that)"
            )
        std = (global_pop_std + eps) if global_std else (group_std[gidx] + eps)
        raw = (r - group_mean[gidx]) / std
        raw = torch.where(zero_std[gidx], torch.zeros_like(raw), raw)
        keep = ~zero_std[gidx] if zero_std_policy == "drop" else torch.ones(n, dtype=torch.bool)
    else:
        raw = (r - global_mean) / (global_pop_std + eps)
        keep = torch.ones(n, dtype=torch.bool)

    adv = rescale_advantages(raw, adv_clip_max=adv_clip_max, advantage_max=advantage_max)

    group_means_zero = group_mean[zero_std]
    ones = torch.ones_like(group_means_zero)
    stats = {
        "zero_std_ratio": float(zero_std.double().mean()),
        "positive_zero_std_ratio": float(
            torch.isclose(group_means_zero, ones, rtol=1e-5, atol=1e-8).sum() / num_groups
        ),
        "negative_zero_std_ratio": float(
            torch.isclose(group_means_zero, 0 * ones, rtol=1e-5, atol=1e-8).sum() / num_groups
        ),
        "reward_std_mean": float(group_std.mean()),
        "group_size_mean": float(sizes.double().mean()),
        "group_size_min": float(sizes.min()),
        "group_size_max": float(sizes.max()),
        "num_groups": float(num_groups),
        "kept_ratio": float(keep.double().mean()),
        "adv_abs_mean": float(adv.abs().mean()),
        "raw_adv_abs_mean": float(raw.abs().mean()),
        "adv_clip_frac": float((raw.abs() > adv_clip_max).double().mean()),
        "reward_mean": float(global_mean),
        "reward_std": float(global_pop_std),
    }
    device = rewards.device
    return AdvantageResult(
        advantages=adv.to(device=device, dtype=torch.float32),
        raw_advantages=raw.to(device=device, dtype=torch.float32),
        keep=keep.to(device=device),
        stats=stats,
    )
