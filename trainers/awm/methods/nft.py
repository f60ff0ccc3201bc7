"""DiffusionNFT's objective (objectives.md section 2; NVlabs/DiffusionNFT ``scripts/train_nft_sd3.py``
L862-972, ``return_decay`` L169-189, ``config/nft.py``).

Notation (awm-algorithm.md section 2): ``x_t = (1 - t) x0 + t eps``, target velocity ``u = eps - x0``,
data prediction ``x0_hat = x_t - t v``. Shapes follow ``trainers.awm.loss``: predictions are
(T, B, *D) (T training times per sample, B samples), ``t`` is (T, B) -- NFT draws a *different*
sigma per sample in each column (trap 3), which this layout carries as is -- and advantages are (B,).

Paper form (section 2.1, arXiv 2509.16117 section 3), for reference:
    r = 1/2 + 1/2 clip((R - E[R]) / Z, -1, 1),
    v+ = (1 - beta) v_old + beta v,   v- = (1 + beta) v_old - beta v,
    L = E[ r ||v+ - u||^2 + (1 - r) ||v- - u||^2 ].
Code form (section 2.2, what :func:`nft_loss` computes; the two differ by the x0-space factor t^2,
the division by beta, the factor ``adv_clip_max`` and the adaptive weights):
    r = clamp(A~/2 + 1/2, 0, 1) with A~ = clip(A, +-5)/5   (the trainer's rescaled advantage),
    l+- = mean_D (x0_hat+- - x0)^2 / w+-,   w+- = sg(max(mean_D |x0_hat+- - x0|, 1e-5)) (float64),
    L_pol = adv_clip_max * mean_{t,i} [ r l+ / beta + (1 - r) l- / beta ],
    L = L_pol + beta_KL * mean_{t,i} mean_D (v - v_ref)^2.

Naming (trap 11): the mixing coefficient upstream calls ``config.beta`` is ``nft_beta`` here; the KL
coefficient (upstream ``config.train.beta``) is ``kl_beta``. They never share a name.

The trainer strategy (``NFTMethod``, and ``ForwardProcessMethod`` which AdvantageFlow shares) is at
the end of the module: rollouts with the ``old`` adapter (the trainer's ``"ema"`` adapter) on an Euler
ODE, J = int(N * train.timestep_fraction) per-sample grid sigmas, one backward per column, and
``old <- d old + (1 - d) theta`` after each epoch (``train.old_decay_type``).

Precision: everything is computed in float64 (upstream computes the squared errors in the
prediction's dtype and only the adaptive weights in float64); on CPU fp32 the difference is rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainers.awm import lora as L
from trainers.awm.advantages import AdvantageResult, rescale_advantages
from trainers.awm.ema import update_ema_adapter_
from trainers.awm.loss import noised_latents
from trainers.awm.methods.base import RolloutChunk
from trainers.awm.model import Cond
from trainers.awm.prompts import derive_seed, train_seed
from trainers.awm.samplers import VelocityFn, euler_sample

if TYPE_CHECKING:  # the trainer passes itself; importing it at run time would be circular
    from trainers.awm.recipe import AWMTrainer, EpochBuffer

__all__ = [
    "NFT_DECAY_TYPES",
    "ForwardProcessMethod",
    "NFTMethod",
    "draw_grid_times",
    "grid_columns",
    "implicit_policies",
    "nft_loss",
    "old_adapter_decay",
    "optimality_probability",
]

NFT_DECAY_TYPES: tuple[int, ...] = (0, 1, 2)
# return_decay(step, type): (flat, uprate, uphold); d = 0 for step < flat, else min((step - flat) uprate, uphold)
_DECAY_SCHEDULES: dict[int, tuple[int, float, float]] = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}
ADAPTIVE_WEIGHT_FLOOR = 1e-5  # upstream .clip(min=0.00001) on the adaptive weights


def old_adapter_decay(step: int, decay_type: int) -> float:
    """Mixing ``d`` of the end-of-epoch update ``old <- d old + (1 - d) theta`` (``return_decay``).

    ``step`` is ``global_step`` after the epoch's optimizer steps (trap 22). Type 0: d = 0 (old = theta);
    type 1 (default): ``min(0.001 step, 0.5)``; type 2 (OCR): 0 below step 75, then
    ``min(0.0075 (step - 75), 0.999)``.
    """
    if decay_type not in _DECAY_SCHEDULES:
        raise ValueError(f"unknown NFT decay type {decay_type!r}; expected one of {NFT_DECAY_TYPES}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    flat, uprate, uphold = _DECAY_SCHEDULES[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


def optimality_probability(adv: Tensor) -> Tensor:
    """``r = clamp(A~/2 + 1/2, 0, 1)`` from the rescaled advantage ``A~ = clip(A, +-c)/c`` (L920-921).

    In the paper's terms (section 2.1) ``Z_c = c * std_global``; A = 0 gives r = 1/2 (trap 12)."""
    return torch.clamp(adv / 2.0 + 0.5, 0.0, 1.0)


def implicit_policies(v: Tensor, v_old: Tensor, nft_beta: float) -> tuple[Tensor, Tensor]:
    """``(v+, v-) = (beta v + (1 - beta) v_old, (1 + beta) v_old - beta v)``, ``v_old`` detached (L926-929)."""
    old = v_old.detach()
    return nft_beta * v + (1.0 - nft_beta) * old, (1.0 + nft_beta) * old - nft_beta * v


def check_pair_shapes(pred: Tensor, t: Tensor, advantages: Tensor, **like_pred: Tensor) -> None:
    """The forward-process losses' inputs (NFT's and AdvantageFlow's): `pred` (T, B, *D), every
    `like_pred` tensor of its shape, `t` (T, B), `advantages` (B,); a ValueError naming the bad one."""
    if pred.ndim < 3:
        raise ValueError(f"pred must be (T, B, *D) with at least 3 dims, got {tuple(pred.shape)}")
    for name, other in like_pred.items():
        if other.shape != pred.shape:
            raise ValueError(f"{name} {tuple(other.shape)} must have pred's shape {tuple(pred.shape)}")
    if tuple(t.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"t must have shape (T, B) = {tuple(pred.shape[:2])}, got {tuple(t.shape)}")
    if tuple(advantages.shape) != (pred.shape[1],):
        raise ValueError(f"advantages must be (B,) = ({pred.shape[1]},), got {tuple(advantages.shape)}")


def nft_loss(
    pred: Tensor,
    pred_old: Tensor,
    xt: Tensor,
    x0: Tensor,
    t: Tensor,
    advantages: Tensor,
    *,
    nft_beta: float,
    adv_clip_max: float = 5.0,
    adaptive_weighting: bool = True,
    kl_beta: float = 0.0,
    pred_ref: Tensor | None = None,
) -> dict[str, Tensor]:
    """DiffusionNFT's micro-batch loss (section 2.2), mean over the (T, B) pairs.

    Args:
        pred: v of the trained (``"default"``) adapter on ``xt``, with grad, (T, B, *D).
        pred_old: v of the ``"old"`` adapter on the same ``xt`` (detached here).
        xt, x0: the noised latents and the clean rollout latents (x0 broadcast to (T, B, *D)).
        t: sigma of each pair, (T, B).
        advantages: the rescaled advantage A~ = clip(A, +-c)/c of each sample, (B,).
        nft_beta: the mixing coefficient (upstream ``config.beta``; 1.0, OCR 0.1), > 0.
        adv_clip_max: the loss factor (upstream ``config.train.adv_clip_max`` = 5).
        adaptive_weighting: upstream's per-pair normalisation by sg(mean_D |x0_hat - x0|);
            off gives the plain x0-space squared error (= t^2 times the paper's velocity form).
        kl_beta: the reference-KL coefficient (upstream ``config.train.beta`` = 1e-4).
        pred_ref: v with the adapters disabled; required when ``kl_beta > 0``.

    Returns: ``loss`` (with grad), ``policy_loss``, ``kl_loss`` and, detached, ``positive_loss``,
    ``negative_loss`` (means of l+ and l-), ``old_deviate`` (mean (v - v_old)^2, upstream's name).
    """
    check_pair_shapes(pred, t, advantages, pred_old=pred_old, xt=xt, x0=x0)
    if not nft_beta > 0:
        raise ValueError(f"nft_beta must be > 0, got {nft_beta}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta != 0 and pred_ref is None:
        raise ValueError(f"kl_beta={kl_beta} > 0 but pred_ref is None: run the reference forward pass")
    dims = tuple(range(2, pred.ndim))
    tt = t.double().reshape(*t.shape, *([1] * len(dims)))
    v, x0d, xtd = pred.double(), x0.double(), xt.double()
    v_pos, v_neg = implicit_policies(v, pred_old.double(), nft_beta)
    err_pos = xtd - tt * v_pos - x0d  # x0_hat+ - x0
    err_neg = xtd - tt * v_neg - x0d
    if adaptive_weighting:
        with torch.no_grad():
            w_pos = err_pos.abs().mean(dim=dims, keepdim=True).clamp(min=ADAPTIVE_WEIGHT_FLOOR)
            w_neg = err_neg.abs().mean(dim=dims, keepdim=True).clamp(min=ADAPTIVE_WEIGHT_FLOOR)
    else:
        w_pos = w_neg = torch.ones((), dtype=torch.float64, device=pred.device)
    l_pos = (err_pos**2 / w_pos).mean(dim=dims)  # (T, B)
    l_neg = (err_neg**2 / w_neg).mean(dim=dims)
    r = optimality_probability(advantages.detach().double().to(pred.device))[None, :]
    policy = adv_clip_max * (r * l_pos / nft_beta + (1.0 - r) * l_neg / nft_beta).mean()
    zero = torch.zeros((), dtype=torch.float64, device=pred.device)
    kl = ((v - pred_ref.detach().double()) ** 2).mean(dim=dims).mean() if pred_ref is not None else zero
    total = policy + kl_beta * kl if kl_beta != 0 else policy
    with torch.no_grad():
        stats = {
            "positive_loss": l_pos.mean(),
            "negative_loss": l_neg.mean(),
            "old_deviate": ((v - pred_old.double()) ** 2).mean(),
        }
    return {"loss": total, "policy_loss": policy, "kl_loss": kl.detach() if pred_ref is not None else zero, **stats}


# ------------------------------------------------------------------ the method on the trainer seam ----
# DiffusionNFT's infrastructure (section 2.2, 2.5), which AdvantageFlow reuses (section 3.4): rollouts
# with the "old" adapter on a deterministic ODE, x0 re-noised at J per-sample grid sigmas with fresh
# noise, one backward per trained column j (upstream's loop), the old adapter updated at the end of
# the epoch. The trainer's "ema" adapter IS the old adapter (a copy of the policy at step 0).

_TAG_NFT_NOISE = 0x4E4654  # derive_seed tag of the per-(micro-batch, column) training noise


def grid_columns(num_grid: int, fraction: float) -> int:
    """J = int(N * timestep_fraction) trained columns per sample (upstream 10 * 0.99 = 9), at least 1."""
    return max(1, min(num_grid, int(num_grid * fraction)))


def draw_grid_times(grid: Tensor, batch: int, columns: int, generator: torch.Generator) -> Tensor:
    """(J, B) sigmas: each sample gets its own random permutation of the N grid points, first J kept
    (L810-818; sigma = 1 and the last nonzero sigma can both be trained, trap 3)."""
    idx = torch.stack([torch.randperm(len(grid), generator=generator)[:columns] for _ in range(batch)])  # (B, J)
    return grid.cpu()[idx].T.contiguous()


class ForwardProcessMethod:
    """Shared trainer strategy of DiffusionNFT and AdvantageFlow; subclasses give ``name``,
    ``metric_keys`` and ``_loss``."""

    name = ""
    metric_keys: tuple[str, ...] = ()

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # ------------------------------------------------------------ rollout
    def rollout_adapter(self) -> str | None:
        return L.EMA  # the old adapter (trap 21)

    def sample(self, tr: AWMTrainer, vfn: VelocityFn, latents: Tensor, gens: list[Any]) -> RolloutChunk:
        # deterministic Euler ODE over the rollout grid (upstream: DPM-Solver-2, also deterministic; any
        # black-box sampler gives valid x0, section 2.6); x0 is the last state
        out = euler_sample(vfn, latents, tr.sigmas, noise_level=0.0, generator=gens)
        return RolloutChunk(x0=out.x0.float(), nfe=out.nfe)

    def advantages(self, res: AdvantageResult) -> Tensor:
        # A~ = clip(A, +-c)/c (NFT's r = A~/2 + 1/2 and AdvantageFlow's weight), whatever advantage_max says
        return rescale_advantages(res.raw_advantages, adv_clip_max=self.cfg.train.adv_clip_max, advantage_max=1.0)

    def prepare_epoch(self, tr: AWMTrainer, buf: EpochBuffer, order: Tensor) -> None:
        return None

    # --------------------------------------------------------------- loss
    def num_chunks(self, tr: AWMTrainer) -> int:
        return grid_columns(len(tr.grid), self.cfg.train.timestep_fraction)

    def _pair(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, mb: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        """(t (B,), eps (B, *latent), x0 (B, *latent)) of column ``chunk`` of micro-batch ``mb``."""
        cfg, b = self.cfg, len(idx)
        gen = torch.Generator().manual_seed(train_seed(cfg.seed, buf.epoch, tr.rank, mb))
        t = draw_grid_times(tr.grid, b, self.num_chunks(tr), gen)[chunk]
        noise_gen = torch.Generator().manual_seed(derive_seed(_TAG_NFT_NOISE, cfg.seed, buf.epoch, tr.rank, mb, chunk))
        eps = torch.randn((b, *tr.latent_shape), generator=noise_gen, dtype=torch.float32)
        return t.to(tr.device), eps.to(tr.device), buf.x0[idx]

    def chunk_loss(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, mb: int, chunk: int,
                   cols: Tensor | slice | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        acc, tcfg = tr.accelerator, self.cfg.train
        t, eps, x0 = self._pair(tr, buf, idx, mb, chunk)
        xt = noised_latents(x0, eps, t)
        cond = Cond(buf.embeds[idx], buf.pooled[idx])
        shape = (1, len(idx), *tr.latent_shape)
        v_ref = None
        with torch.no_grad(), acc.autocast():
            with L.using_adapter(tr.unwrapped, L.EMA):
                v_old = tr.forward(tr.unwrapped, xt, t, cond, shape)
            if tcfg.beta > 0:
                with L.adapters_disabled(tr.unwrapped):
                    v_ref = tr.forward(tr.unwrapped, xt, t, cond, shape)
        with acc.autocast():
            pred = tr.forward(tr.model, xt, t, cond, shape)
        if cols is None:
            return pred.sum() * 0.0, None
        out = self._loss(pred[:, cols], v_old[:, cols], xt.unsqueeze(0)[:, cols], x0.unsqueeze(0)[:, cols],
                         eps.unsqueeze(0)[:, cols], t.unsqueeze(0)[:, cols], buf.advantages[idx][cols],
                         None if v_ref is None else v_ref[:, cols])
        return out["loss"], {k: out[k].detach().double().mean() for k in self.metric_keys}

    def _loss(self, pred: Tensor, v_old: Tensor, xt: Tensor, x0: Tensor, eps: Tensor, t: Tensor, adv: Tensor,
              v_ref: Tensor | None) -> dict[str, Tensor]:
        raise NotImplementedError

    # -------------------------------------------------------------- state
    def after_step(self, tr: AWMTrainer, ema_step: int) -> dict[str, float]:
        return {}

    def end_epoch(self, tr: AWMTrainer, epoch: int) -> dict[str, float]:
        """old <- d old + (1 - d) theta on the LoRA factors, d from the global step after the epoch (trap 22)."""
        d = old_adapter_decay(tr.global_step + tr.ema_step_offset, self.cfg.train.old_decay_type)
        update_ema_adapter_(tr.ema_adapter_params, tr.policy_params, d)
        return {"train/old_decay": float(d)}


class NFTMethod(ForwardProcessMethod):
    name = "diffusionnft"
    metric_keys = ("policy_loss", "kl_loss", "loss", "positive_loss", "negative_loss", "old_deviate")

    def _loss(self, pred, v_old, xt, x0, eps, t, adv, v_ref):
        tcfg = self.cfg.train
        return nft_loss(pred, v_old, xt, x0, t, adv, nft_beta=tcfg.nft_beta, adv_clip_max=tcfg.adv_clip_max,
                        kl_beta=tcfg.beta, pred_ref=v_ref)
