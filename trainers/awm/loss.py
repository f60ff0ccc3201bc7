"""The AWM objective (spec sections 2.2-2.7, ``train_sd3_awm.py`` L210-252, L1293-1354).

Shapes: T training times x B samples; predictions are (T, B, C, H, W) (the trainer reshapes its
timestep-major (T*B, ...) forward batch with ``.view(T, B, ...)``).

Precision: the surrogate and both KL terms are computed in float64 like upstream
(``noise_pred.double()``); ``std_dev_t`` keeps the dtype of ``t`` (float32 upstream).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "WEIGHTINGS",
    "KLWeighting",
    "LossType",
    "Weighting",
    "awm_loss",
    "compute_awm_loss",
    "flow_matching_target",
    "noised_latents",
    "per_sample_log_prob",
    "policy_loss",
    "std_dev_t",
    "velocity_kl",
]

Weighting = Literal["Uniform", "t", "t**2", "huber", "ghuber"]
KLWeighting = Literal["Uniform", "ELBO"]
LossType = Literal["exp_first", "sum_first"]
WEIGHTINGS: tuple[str, ...] = ("Uniform", "t", "t**2", "huber", "ghuber")

_MSE_EPS = 1e-10  # added inside sqrt / pow (L244-247)
_HUBER_OFFSET = 1e-5  # = sqrt(1e-10): makes lp = 0 at mse = 0


def noised_latents(clean: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``x_t = (1 - t) x0 + t eps`` (L1268). ``t`` broadcasts from the left: (T, B) against
    (T, B, C, H, W) or (N,) against (N, C, H, W)."""
    tt = t.reshape(*t.shape, *([1] * (clean.ndim - t.ndim)))
    return (1 - tt) * clean + tt * noise


def flow_matching_target(noise: Tensor, clean: Tensor) -> Tensor:
    """Target velocity ``u = eps - x0`` in float64, as upstream (``noise.double() - clean.double()``)."""
    return noise.double() - clean.double()


def _check_pred_target_t(pred: Tensor, other: Tensor, t: Tensor, other_name: str) -> None:
    if pred.shape != other.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and {other_name} {tuple(other.shape)} must have the same shape"
        )
    if pred.ndim < 3:
        raise ValueError(f"pred must be (T, B, C, ...) with at least 3 dims, got {tuple(pred.shape)}")
    if tuple(t.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"t must have shape (T, B) = {tuple(pred.shape[:2])}, got {tuple(t.shape)}")


def per_sample_log_prob(
    pred: Tensor,
    target: Tensor,
    t: Tensor,
    *,
    weighting: Weighting,
    ghuber_power: float = 0.25,
) -> tuple[Tensor, Tensor]:
    """Per-(t, sample) surrogate log-likelihood ``lp`` and ``mse`` (spec table 2.3), float64.

    ``mse = mean_chw (pred - target)^2``;
      Uniform: ``-mse``; t: ``-t mse``; t**2: ``-t^2 mse``;
      huber: ``-t (sqrt(mse + 1e-10) - 1e-5)``;
      ghuber: ``-(t/p) ((mse + 1e-10)^p - (1e-10)^p)``, p = ``ghuber_power``.
    """
    _check_pred_target_t(pred, target, t, "target")
    diff = pred.double() - target.double()
    mse = (diff**2).mean(dim=tuple(range(2, diff.ndim)))
    tt = t.double()
    if weighting == "Uniform":
        lp = -mse
    elif weighting == "t":
        lp = -mse * tt
    elif weighting == "t**2":
        lp = -mse * tt**2
    elif weighting == "huber":
        lp = -(torch.sqrt(mse + _MSE_EPS) - _HUBER_OFFSET) * tt
    elif weighting == "ghuber":
        p = float(ghuber_power)
        if not p > 0:
            raise ValueError(f"ghuber_power must be > 0, got {ghuber_power}")
        floor = torch.tensor(_MSE_EPS, dtype=torch.float64, device=mse.device) ** p
        lp = -(torch.pow(mse + _MSE_EPS, p) - floor) * tt / p
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    return lp, mse


def std_dev_t(t: Tensor) -> Tensor:
    """``0.7 * sqrt(t / (1 - clamp(t, 0, 0.99)))`` (L236), in the dtype of ``t``. Only used by ELBO KL."""
    return torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))) * 0.7


def velocity_kl(
    pred: Tensor,
    other: Tensor,
    t: Tensor,
    *,
    weighting: KLWeighting = "Uniform",
) -> Tensor:
    """``mean_{t,i} KL_{t,i}`` with ``KL = mean_chw (pred - other)^2`` (Uniform) or that divided by
    ``2 std_dev_t^2`` (ELBO). float64 scalar. Used for KL-to-reference (``other`` = v_ref, adapters
    off) and KL-EMA (``other`` = v of the "ema" adapter); ``other`` is detached."""
    _check_pred_target_t(pred, other, t, "other")
    diff = pred.double() - other.detach().double()
    kl = (diff**2).mean(dim=tuple(range(2, diff.ndim)))  # (T, B)
    if weighting == "ELBO":
        kl = kl / (2 * std_dev_t(t) ** 2)
    elif weighting != "Uniform":
        raise ValueError(f"unknown KL weighting {weighting!r}; expected 'Uniform' or 'ELBO'")
    return kl.mean()


def policy_loss(
    lp: Tensor,
    lp_old: Tensor,
    advantages: Tensor,
    *,
    clip_range: float,
    loss_type: LossType = "exp_first",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clipped ratio loss of spec 2.4 (L1301-1329).

    exp_first: ``rho_{t,i} = exp(lp - lp_old)``, ``L = mean_{t,i} max(-A_i rho, -A_i clip(rho, 1-c, 1+c))``.
    sum_first: ``rho_i = exp(mean_t lp - mean_t lp_old)``, ``L = mean_i max(...)``.
    ``lp_old`` is detached. On-policy (``lp_old = lp.detach()``) both give the gradient
    ``-mean_{t,i} A_i grad lp_{t,i}``.

    Returns ``(loss, info)``; info (detached): ``clipfrac`` = mean(|rho - 1| > c) as upstream,
    ``approx_kl`` = 0.5 mean((log rho)^2) (Flow-GRPO's estimator; upstream AWM logs none),
    ``ratio_mean``.
    """
    if lp.ndim != 2:
        raise ValueError(f"lp must be (T, B), got {tuple(lp.shape)}")
    if lp_old.shape != lp.shape:
        raise ValueError(f"lp_old {tuple(lp_old.shape)} must match lp {tuple(lp.shape)}")
    if tuple(advantages.shape) != (lp.shape[1],):
        raise ValueError(f"advantages must be (B,) = ({lp.shape[1]},), got {tuple(advantages.shape)}")
    if not clip_range >= 0:
        raise ValueError(f"clip_range must be >= 0, got {clip_range}")
    adv = advantages.detach().to(dtype=lp.dtype, device=lp.device)
    if loss_type == "exp_first":
        log_ratio = lp - lp_old.detach()
        adv_b = adv[None, :]
    elif loss_type == "sum_first":
        log_ratio = lp.mean(dim=0) - lp_old.detach().mean(dim=0)
        adv_b = adv
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected 'exp_first' or 'sum_first'")
    ratio = torch.exp(log_ratio)
    unclipped = -adv_b * ratio
    clipped = -adv_b * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    with torch.no_grad():
        info = {
            "clipfrac": (torch.abs(ratio - 1.0) > clip_range).double().mean(),
            "approx_kl": 0.5 * (log_ratio.double() ** 2).mean(),
            "ratio_mean": ratio.double().mean(),
        }
    return loss, info


def awm_loss(
    policy_loss: Tensor,
    kl: Tensor | None = None,
    ema_kl: Tensor | None = None,
    *,
    beta: float,
    ema_beta: float,
) -> dict[str, Tensor]:
    """``loss = L_pg + beta * kl + ema_beta * ema_kl`` (spec 2.6).

    Fixes trap 9.7: either coefficient may be 0, in which case the matching KL may be ``None``
    (the caller skips that forward pass), and the KL-EMA term does not depend on ``beta > 0``.
    A KL passed with a zero coefficient is reported but not added (no ``0 * nan`` hazard).

    Returns a dict of tensors: ``policy_loss``, ``kl_loss``, ``ema_kl_loss`` (detached zeros when
    not computed), ``loss`` (with grad).

    Raises:
        ValueError: a non-zero coefficient with a missing KL, or a negative coefficient.
    """
    if beta < 0 or ema_beta < 0:
        raise ValueError(f"beta and ema_beta must be >= 0, got beta={beta}, ema_beta={ema_beta}")
    if beta != 0 and kl is None:
        raise ValueError(f"beta={beta} > 0 but kl is None: run the reference forward pass")
    if ema_beta != 0 and ema_kl is None:
        raise ValueError(f"ema_beta={ema_beta} > 0 but ema_kl is None: run the 'ema' adapter forward pass")
    total = policy_loss
    if beta != 0:
        total = total + beta * kl
    if ema_beta != 0:
        total = total + ema_beta * ema_kl
    zero = torch.zeros((), dtype=policy_loss.dtype, device=policy_loss.device)
    return {
        "policy_loss": policy_loss,
        "kl_loss": kl if kl is not None else zero,
        "ema_kl_loss": ema_kl if ema_kl is not None else zero.clone(),
        "loss": total,
    }


def compute_awm_loss(
    pred: Tensor,
    target: Tensor,
    t: Tensor,
    advantages: Tensor,
    *,
    weighting: Weighting,
    ghuber_power: float,
    clip_range: float,
    loss_type: LossType,
    beta: float,
    ema_beta: float,
    lp_old: Tensor | None = None,
    pred_ref: Tensor | None = None,
    pred_ema: Tensor | None = None,
    kl_weighting: KLWeighting = "Uniform",
    kl_ema_weighting: KLWeighting = "Uniform",
) -> dict[str, Tensor]:
    """Whole AWM micro-batch loss from model outputs (spec 2.8).

    ``lp_old=None`` means on-policy (``lp.detach()``). ``pred_ref`` / ``pred_ema`` may be None
    when ``beta`` / ``ema_beta`` is 0. Returns :func:`awm_loss`'s dict plus ``lp``, ``mse``
    (detached, (T, B)) and ``clipfrac``, ``approx_kl``, ``ratio_mean``.
    """
    lp, mse = per_sample_log_prob(pred, target, t, weighting=weighting, ghuber_power=ghuber_power)
    old = lp.detach() if lp_old is None else lp_old
    pg, info = policy_loss(lp, old, advantages, clip_range=clip_range, loss_type=loss_type)
    kl = velocity_kl(pred, pred_ref, t, weighting=kl_weighting) if pred_ref is not None else None
    ema_kl = velocity_kl(pred, pred_ema, t, weighting=kl_ema_weighting) if pred_ema is not None else None
    out = awm_loss(pg, kl, ema_kl, beta=beta, ema_beta=ema_beta)
    out.update(info)
    out["lp"] = lp.detach()
    out["mse"] = mse.detach()
    return out
