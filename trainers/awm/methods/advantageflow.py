"""AdvantageFlow (arXiv 2605.26013) as DERIVED in objectives.md section 3 -- derived, not the paper's code.

The paper's exact loss, weighting, lambda and defaults could not be obtained offline (section 3.1);
everything here is the derivation of sections 3.2-3.4:

    L_AF = mean_{t,i} w(t) [ A~_i mean_D (v - u)^2 + lambda_i mean_D (v - v_roll)^2 ]
           + beta_KL mean_{t,i} mean_D (v - v_ref)^2

with the rescaled advantage A~ = clip(A, +-c)/c, target velocity u = eps - x0, v_roll the rollout
("old") policy on the same x_t without grad (the "rollout policy regularisation", section 3.2 step 3),
and w(t) one of (section 3.4):
    ``velocity``: w = 1;
    ``x0`` (default): w = t^2, i.e. least squares on x0_hat = x_t - t v (x0_hat - x0 = t (u - v));
    ``nft_adaptive``: w = t^2 / sg(max(mean_D |x0_hat - x0|, 1e-5)), NFT's normalisation applied to
        the policy's own x0 error (NFT itself applies it per implicit branch: see ``methods/nft.py``).
Per sample the bracket is (A~ + lambda) ||delta||^2 + 2 A~ <a, delta> + const (delta = v - v_roll,
a = v_roll - u): convex in v iff A~_i + lambda_i > 0 for every sample, which :func:`advantageflow_loss`
asserts (trap 13; never clipped silently).

NFT is the special case lambda_i = nft_beta - A~_i with the ``x0`` weighting and NFT's adaptive weights
off (section 3.3): ``grad L_NFT / adv_clip_max == grad L_AF`` (tests/trainer_math/test_advantageflow.py).

Shapes follow ``trainers.awm.loss``: predictions (T, B, *D), t (T, B), advantages (B,).
Computed in float64, like the AWM loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from trainers.awm.loss import flow_matching_target
from trainers.awm.methods.nft import ADAPTIVE_WEIGHT_FLOOR, ForwardProcessMethod, check_pair_shapes

__all__ = ["AF_WEIGHTINGS", "AFWeighting", "AdvantageFlowMethod", "advantageflow_loss", "check_lambda",
           "time_weight"]

AFWeighting = Literal["velocity", "x0", "nft_adaptive"]
AF_WEIGHTINGS: tuple[str, ...] = ("velocity", "x0", "nft_adaptive")


def check_lambda(advantages: Tensor, lam: float | Tensor) -> None:
    """Raise unless ``A~_i + lambda_i > 0`` for every sample (trap 13: otherwise the loss is unbounded below)."""
    s = advantages.detach().double() + (lam.detach().double() if isinstance(lam, Tensor) else float(lam))
    if not bool(torch.all(s > 0)):
        i = int(torch.argmin(s))
        worst = float(advantages.detach().double().flatten()[i]) if advantages.ndim else float(advantages)
        raise ValueError(f"advantageflow needs lambda + A~ > 0 for every sample (section 3.2, trap 13); "
                         f"got A~ = {worst:.6g} with lambda = {float(s.flatten()[i]) - worst:.6g}: raise "
                         "train.af_lambda above the largest |A~| (1: A~ is the advantage clipped and scaled to [-1, 1])")


def time_weight(t: Tensor, weighting: AFWeighting, abs_x0_err: Tensor | None = None) -> Tensor:
    """w(t) of section 3.4 in float64, shape of ``t``; ``abs_x0_err`` = mean_D |x0_hat - x0| (``nft_adaptive``)."""
    tt = t.double()
    if weighting == "velocity":
        return torch.ones_like(tt)
    if weighting == "x0":
        return tt**2
    if weighting == "nft_adaptive":
        if abs_x0_err is None:
            raise ValueError("weighting 'nft_adaptive' needs abs_x0_err = mean_D |x0_hat - x0|")
        return tt**2 / abs_x0_err.detach().double().clamp(min=ADAPTIVE_WEIGHT_FLOOR)  # NFT's floor
    raise ValueError(f"unknown AdvantageFlow weighting {weighting!r}; expected one of {AF_WEIGHTINGS}")


def advantageflow_loss(
    pred: Tensor,
    pred_roll: Tensor,
    target: Tensor,
    t: Tensor,
    advantages: Tensor,
    *,
    lam: float | Tensor,
    weighting: AFWeighting = "x0",
    kl_beta: float = 0.0,
    pred_ref: Tensor | None = None,
) -> dict[str, Tensor]:
    """The derived AdvantageFlow micro-batch loss (section 3.2 step 3, 3.4), mean over the (T, B) pairs.

    Args:
        pred: v of the trained adapter on x_t, with grad, (T, B, *D).
        pred_roll: v of the rollout (``"old"``) adapter on the same x_t (detached here).
        target: u = eps - x0, (T, B, *D).
        t: sigma of each pair, (T, B).
        advantages: A~ of each sample, (B,).
        lam: lambda, a number or a per-sample (B,) tensor (the NFT identity uses lambda_i = beta - A~_i).
        weighting: ``velocity`` | ``x0`` | ``nft_adaptive`` (see the module docstring).
        kl_beta, pred_ref: the reference-KL term, as NFT's (pred_ref required when kl_beta > 0).

    Returns: ``loss`` (with grad), ``policy_loss`` (the weighted bracket), ``kl_loss`` and, detached,
    ``data_loss`` (mean w A~ mse), ``roll_loss`` (mean w lambda ||v - v_roll||^2), ``mse`` ((T, B)
    mean_D (v - u)^2), ``roll_deviate`` (mean (v - v_roll)^2).
    """
    check_pair_shapes(pred, t, advantages, pred_roll=pred_roll, target=target)
    if isinstance(lam, Tensor) and tuple(lam.shape) not in ((), (pred.shape[1],)):
        raise ValueError(f"lam must be a number or (B,) = ({pred.shape[1]},), got {tuple(lam.shape)}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta != 0 and pred_ref is None:
        raise ValueError(f"kl_beta={kl_beta} > 0 but pred_ref is None: run the reference forward pass")
    check_lambda(advantages, lam)
    dims = tuple(range(2, pred.ndim))
    v = pred.double()
    diff = v - target.double()  # v - u
    mse = (diff**2).mean(dim=dims)  # (T, B)
    roll = ((v - pred_roll.detach().double()) ** 2).mean(dim=dims)
    abs_err = None
    if weighting == "nft_adaptive":
        with torch.no_grad():
            abs_err = (t.double().reshape(*t.shape, *([1] * len(dims))) * diff).abs().mean(dim=dims)
    w = time_weight(t.to(pred.device), weighting, abs_err)
    adv = advantages.detach().double().to(pred.device)[None, :]
    lam_b = lam.detach().double().to(pred.device) if isinstance(lam, Tensor) else float(lam)
    if isinstance(lam_b, Tensor) and lam_b.ndim == 1:
        lam_b = lam_b[None, :]
    data = w * adv * mse
    reg = w * lam_b * roll
    policy = (data + reg).mean()
    zero = torch.zeros((), dtype=torch.float64, device=pred.device)
    kl = ((v - pred_ref.detach().double()) ** 2).mean(dim=dims).mean() if pred_ref is not None else zero
    total = policy + kl_beta * kl if kl_beta != 0 else policy
    return {
        "loss": total,
        "policy_loss": policy,
        "kl_loss": kl.detach(),
        "data_loss": data.detach().mean(),
        "roll_loss": reg.detach().mean(),
        "mse": mse.detach(),
        "roll_deviate": roll.detach().mean(),
    }


class AdvantageFlowMethod(ForwardProcessMethod):
    """AdvantageFlow (derived, not the paper's code) on the trainer seam: DiffusionNFT's infrastructure
    (old-adapter ODE rollouts, J per-sample grid sigmas, end-of-epoch old update; section 3.4) with
    :func:`advantageflow_loss` (``train.af_lambda``, ``train.af_weighting``, ``train.beta`` = beta_KL)."""

    name = "advantageflow"
    metric_keys = ("policy_loss", "kl_loss", "loss", "data_loss", "roll_loss", "roll_deviate", "mse")

    def _loss(self, pred, v_old, xt, x0, eps, t, adv, v_ref):
        tcfg = self.cfg.train
        return advantageflow_loss(pred, v_old, flow_matching_target(eps, x0), t, adv, lam=tcfg.af_lambda,
                                  weighting=tcfg.af_weighting, kl_beta=tcfg.beta, pred_ref=v_ref)
