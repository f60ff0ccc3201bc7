"""Training-time sampling for the AWM loss (spec section 2.1, ``train_sd3_awm.py`` L1138-1207).

All variants return a (T, B) float32 tensor of t values (= SD3 sigma in (0, 1]). Row k is the
k-th training time; upstream flattens this timestep-major (``repeat_interleave(t, B)``), i.e.
``out.reshape(-1)`` gives upstream's [t0:b0..b_{B-1}, t1:...] layout.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["TIME_TYPES", "TimeType", "exponential_shift_time", "sample_training_times", "shift_time", "stratum_bounds"]

TimeType = Literal["discrete_wo_init", "discrete", "discrete_with_init", "uniform", "logit_normal"]
TIME_TYPES: tuple[str, ...] = (
    "discrete_wo_init",
    "discrete",
    "discrete_with_init",
    "uniform",
    "logit_normal",
)

# ``uniform`` stratifies [0.2, 1.0] (L1163).
_UNIFORM_LOWER, _UNIFORM_UPPER = 0.20, 1.0
# ``logit_normal``: clamp of the Phi^-1 input (L1147) and final clamp (L1159).
_ICDF_EPS = 1e-7
_LOGIT_NORMAL_MIN_T = 0.01


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3 time shift ``s*t / (1 + (s-1)*t)``."""
    return shift * t / (1 + (shift - 1) * t)


def exponential_shift_time(t: Tensor, mu: float) -> Tensor:
    """FLUX's resolution-dependent ("dynamic") shift ``e^mu / (e^mu + 1/t - 1)`` (diffusers'
    ``time_shift_type="exponential"``); it equals :func:`shift_time` with ``s = e^mu``."""
    e = math.exp(mu)
    return e * t / (e * t + (1 - t))


def stratum_bounds(start: int, stop: int, num: int) -> list[tuple[int, int]]:
    """Index strata ``[lo_k, hi_k)`` of ``floor(linspace(start, stop, num+1))``.

    Upstream computes ``torch.linspace(...)`` in float32 and truncates with ``.long()``. Here the
    same floor is evaluated in exact integer arithmetic, ``start + floor(k*(stop-start)/num)``,
    so that float rounding can never move a boundary that is mathematically an integer.
    """
    b = [start + (k * (stop - start)) // num for k in range(num + 1)]
    return [(b[k], b[k + 1]) for k in range(num)]


def _draw_indices(strata: list[tuple[int, int]], generator: torch.Generator) -> Tensor:
    """``idx_k = lo_k + floor(U_k * (hi_k - lo_k))``, one U per stratum (upstream order)."""
    lo = torch.tensor([s[0] for s in strata], dtype=torch.long)
    width = torch.tensor([s[1] - s[0] for s in strata], dtype=torch.long)
    u = torch.rand(len(strata), generator=generator, device=generator.device).cpu()
    return lo + (u * width).long()


def _check_strata(kind: str, strata: list[tuple[int, int]], n: int, m: int, t: int) -> None:
    empty = [k for k, (lo, hi) in enumerate(strata) if hi <= lo]
    if empty:
        raise ValueError(
            f"time_type={kind!r}: M = int(num_steps * timestep_fraction) = {m} (num_steps={n}) is "
            f"too small for {t} training times: strata {empty} of {strata} are empty. Increase "
            "timestep_fraction or sample.num_steps, or decrease train.train_timesteps"
        )


def sample_training_times(
    time_type: TimeType,
    *,
    grid: Tensor,
    num_train_timesteps: int,
    timestep_fraction: float,
    batch_size: int,
    time_shift: float,
    generator: torch.Generator,
    mu: float | None = None,
) -> Tensor:
    """Draw the T training times of one micro-batch.

    Args:
        time_type: see below.
        grid: (N,) rollout sigma grid, = ``scheduler.timesteps / 1000`` (unmodified; not the
            SA-Solver's edited copy and without the final 0). Only used by ``discrete*``.
        num_train_timesteps: T (``train.train_timesteps``).
        timestep_fraction: M = ``int(N * timestep_fraction)`` is the exclusive max grid index.
        batch_size: B (``train.batch_size``).
        time_shift: SD3 shift for ``uniform`` / ``logit_normal``.
        mu: when given (FLUX), ``uniform`` / ``logit_normal`` use the exponential shift with this mu
            (:func:`exponential_shift_time`, the shift of the model's own sampling grid) instead of
            ``time_shift`` (objectives.md 4.4). ``discrete*`` index the rollout grid and ignore both.
        generator: all randomness comes from it (its device decides where numbers are drawn).

    Variants (N = len(grid), M as above):
      * ``discrete_wo_init``: strata of ``floor(linspace(1, M, T+1))``; N=14, T=6, frac=0.9
        gives {1},{2,3},{4,5},{6,7},{8,9},{10,11}. Index 0 (t=1) is never drawn.
      * ``discrete``: strata of ``floor(linspace(0, M, T+1))``.
      * ``discrete_with_init``: index 0 plus T-1 strata of ``floor(linspace(1, M, T))``.
      * ``uniform``: per sample, ``(k + U_kb)/T`` mapped to [0.2, 1], each column's strata
        randomly permuted, then shifted. Columns differ.
      * ``logit_normal``: ``t_k = shift(sigmoid(Phi^-1((k+U_k)/T)))`` in a random order, clamped
        to >= 0.01. **Deviation (bug fix):** upstream clamps the Phi^-1 input to
        [1e-7, 1-1e-7] on L1147 and then overwrites it with an unclamped call on L1148; we keep
        the clamped version, so the k=0 stratum can never produce Phi^-1(0) = -inf (upstream
        then gets t = 0 -> 0.01 through the final clamp; we get t >= ~0.016).
    For ``discrete*`` and ``logit_normal`` the T times are shared by the B samples (identical
    columns), as upstream (``repeat_interleave``).

    Returns:
        (T, B) float32 tensor on ``grid.device``.

    Raises:
        ValueError: unknown ``time_type``, non-positive T/B, M > N, or too few grid indices to
            give every stratum at least one index (upstream would silently duplicate indices).
    """
    if time_type not in TIME_TYPES:
        raise ValueError(f"unknown time_type {time_type!r}; expected one of {TIME_TYPES}")
    t_count, b = int(num_train_timesteps), int(batch_size)
    if t_count < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if grid.ndim != 1 or grid.numel() == 0:
        raise ValueError(f"grid must be a non-empty 1-D tensor of sigmas, got shape {tuple(grid.shape)}")
    out_device = grid.device

    if time_type.startswith("discrete"):
        if not bool(((grid > 0) & (grid <= 1)).all()):
            raise ValueError(
                "grid must hold the N rollout sigmas in (0, 1] (scheduler.timesteps / 1000), without "
                f"the terminal 0 of scheduler.sigmas; got min={grid.min().item()}, max={grid.max().item()}"
            )
        n = grid.numel()
        m = int(n * timestep_fraction)  # upstream: int(num_steps * timestep_fraction)
        if m > n:
            raise ValueError(
                f"timestep_fraction={timestep_fraction} gives M={m} > N={n} grid points; it must be <= 1"
            )
        if time_type == "discrete_wo_init":
            strata = stratum_bounds(1, m, t_count)
            _check_strata(time_type, strata, n, m, t_count)
            idx = _draw_indices(strata, generator)
        elif time_type == "discrete":
            strata = stratum_bounds(0, m, t_count)
            _check_strata(time_type, strata, n, m, t_count)
            idx = _draw_indices(strata, generator)
        else:  # discrete_with_init
            init = torch.zeros(1, dtype=torch.long)
            if t_count > 1:
                strata = stratum_bounds(1, m, t_count - 1)
                _check_strata(time_type, strata, n, m, t_count - 1)
                idx = torch.cat([init, _draw_indices(strata, generator)])
            else:
                idx = init
        t = grid.detach().to(torch.float32)[idx.to(grid.device)]
        return t[:, None].expand(t_count, b).contiguous()

    if time_type == "uniform":
        gdev = generator.device
        rand_u = torch.rand(t_count, b, generator=generator, device=gdev, dtype=torch.float32)
        normalized = (torch.arange(t_count, device=gdev, dtype=torch.float32)[:, None] + rand_u) / t_count
        matrix = _UNIFORM_LOWER + normalized * (_UNIFORM_UPPER - _UNIFORM_LOWER)
        perm = torch.rand(t_count, b, generator=generator, device=gdev, dtype=torch.float32).argsort(dim=0)
        t = torch.gather(matrix, 0, perm)
        shifted = shift_time(t, time_shift) if mu is None else exponential_shift_time(t, mu)
        return shifted.to(out_device)

    # logit_normal
    gdev = generator.device
    base = (
        torch.arange(t_count, device=gdev, dtype=torch.float32)
        + torch.rand(t_count, generator=generator, device=gdev, dtype=torch.float32)
    ) / t_count
    u = torch.special.ndtri(torch.clamp(base, _ICDF_EPS, 1 - _ICDF_EPS))
    u = u[torch.randperm(t_count, generator=generator, device=gdev)]
    t = shift_time(torch.sigmoid(u), time_shift) if mu is None else exponential_shift_time(torch.sigmoid(u), mu)
    t = torch.clamp(t, min=_LOGIT_NORMAL_MIN_T)
    return t[:, None].expand(t_count, b).contiguous().to(out_device)
