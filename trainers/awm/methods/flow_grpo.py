"""Flow-GRPO (reverse-process GRPO) and Flow-GRPO-Fast on the methods seam (objectives.md section 1).

Math (pure functions, fp32 or float64; ``sigma`` tensors are per sample, shape (B,)):

* SDE step (section 1.1, FG ``sd3_sde_with_logprob.py``): with dt = sigma' - sigma < 0,
  ``s = a sqrt(sigma / (1 - sigma~))`` where sigma~ = sigma except sigma~ = grid[1] when sigma = 1
  (trap 2), ``mu = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt``,
  ``x' = mu + s sqrt(-dt) z`` and ``log p = mean_D[-(x' - mu)^2 / (2 s^2 (-dt)) - log(s sqrt(-dt)) - log sqrt(2 pi)]``:
  a MEAN over the latent elements, not a sum (trap 8). With a = 0 the same formula is the Euler ODE step.
* CPS step (``sde_type: cps``): ``s = sigma' sin(a pi / 2)``, ``mu = (1 - sigma') x0^ + sqrt(sigma'^2 - s^2) x1^``
  with x0^ = x - sigma v and x1^ = x + (1 - sigma) v, ``x' = mu + s z``, ``log p = -mean_D (x' - mu)^2``
  (no constants, no variance: trap 10).
* Loss (section 1.3): ``rho = exp(log p_theta - log p_old)``,
  ``L_pg = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - c, 1 + c))`` with A clamped to +-adv_clip_max (no
  rescale), and ``KL = mean_i mean_D (mu_theta - mu_ref)^2 / (2 s_j^2)`` (the code's form: no |dt|, trap 9),
  ``L = L_pg + beta KL``; the reference is the base model (adapters disabled).

On the seam: the rollout runs the SDE at every step (or, Fast, inside a per-sample window of W steps,
ODE elsewhere) and keeps, for each trained step j, the latent x_j, the next latent x_{j+1}, the fp32
log-prob and the sigma INDEX (trap 5: never a timestep value). Training recomputes v on x_j at the
stored sigma, with CFG when ``train.cfg`` (the unconditional branch is not detached, as FG-new), and
takes one backward per trained step (``num_chunks`` = J), as upstream's accumulation does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainers.awm import lora as L
from trainers.awm.advantages import AdvantageResult
from trainers.awm.config import trained_steps
from trainers.awm.methods.base import RolloutChunk
from trainers.awm.model import Cond
from trainers.awm.samplers import VelocityFn, randn_per_sample

if TYPE_CHECKING:  # the trainer passes itself; importing it at run time would be circular
    from trainers.awm.recipe import AWMTrainer, EpochBuffer

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) against a (B, ...) latent (3-D packed FLUX or 4-D SD3, trap 19)."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def _mean_d(t: Tensor) -> Tensor:
    return t.mean(dim=tuple(range(1, t.ndim)))


def sde_std(sigma: Tensor, sigma_1: float | Tensor, noise_level: float | Tensor) -> Tensor:
    """Flow-GRPO's ``std_dev_t`` = a sqrt(sigma / (1 - sigma~)), sigma~ = grid[1] where sigma == 1 (trap 2).
    ``noise_level`` a is a float or per sample (B,)."""
    denom = torch.where(sigma == 1, torch.as_tensor(sigma_1, dtype=sigma.dtype, device=sigma.device), sigma)
    return torch.sqrt(sigma / (1 - denom)) * torch.as_tensor(noise_level, dtype=sigma.dtype, device=sigma.device)


def sde_step_with_logprob(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, sigma_1: float | Tensor,
                          noise_level: float | Tensor, *, prev_sample: Tensor | None = None,
                          noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Euler-Maruyama step of the marginal-preserving SDE; returns (x', log p (B,), mu, s (B,)).

    Computes in the promoted dtype of the inputs and float32 (fp32 at least, trap 16). With
    ``prev_sample`` the log-prob is of that given transition (training); otherwise x' = mu + s sqrt(-dt) noise."""
    wd = torch.promote_types(torch.promote_types(x.dtype, v.dtype), torch.float32)
    x, v = x.to(wd), v.to(wd)
    sigma, sigma_next = sigma.to(wd), sigma_next.to(wd)
    s = sde_std(sigma, sigma_1, noise_level)
    sb, dtb, stdb = _bcast(sigma, x), _bcast(sigma_next - sigma, x), _bcast(s, x)
    mean = x * (1 + stdb**2 / (2 * sb) * dtb) + v * (1 + stdb**2 * (1 - sb) / (2 * sb)) * dtb
    scale = stdb * torch.sqrt(-dtb)
    if prev_sample is None:
        if noise is None:
            raise ValueError("sde_step_with_logprob needs prev_sample (training) or noise (sampling)")
        prev_sample = mean + scale * noise.to(wd)
    prev = prev_sample.to(wd).detach()
    lp = -((prev - mean) ** 2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI
    return prev, _mean_d(lp), mean, s


def cps_step_with_logprob(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, noise_level: float | Tensor, *,
                          prev_sample: Tensor | None = None,
                          noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One CPS step (FG-new ``sde_type='cps'``); returns (x', log p (B,) = -mean_D (x' - mu)^2, mu, s (B,))."""
    wd = torch.promote_types(torch.promote_types(x.dtype, v.dtype), torch.float32)
    x, v = x.to(wd), v.to(wd)
    sigma, sigma_next = sigma.to(wd), sigma_next.to(wd)
    s = sigma_next * torch.sin(torch.as_tensor(noise_level, dtype=wd, device=x.device) * (math.pi / 2))
    sb, snb, stdb = _bcast(sigma, x), _bcast(sigma_next, x), _bcast(s, x)
    x0_hat = x - sb * v
    x1_hat = x + (1 - sb) * v
    mean = (1 - snb) * x0_hat + torch.sqrt(snb**2 - stdb**2) * x1_hat
    if prev_sample is None:
        if noise is None:
            raise ValueError("cps_step_with_logprob needs prev_sample (training) or noise (sampling)")
        prev_sample = mean + stdb * noise.to(wd)
    prev = prev_sample.to(wd).detach()
    return prev, -_mean_d((prev - mean) ** 2), mean, s


def clipped_policy_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                        clip_range: float) -> dict[str, Tensor]:
    """PPO-clipped surrogate of section 1.3 (A already clamped); per-batch mean and health scalars."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return {"policy_loss": torch.mean(torch.maximum(unclipped, clipped)),
            "ratio": ratio,
            "clipfrac": torch.mean((torch.abs(ratio - 1.0) > clip_range).to(log_prob.dtype)),
            "approx_kl": 0.5 * torch.mean((log_prob - old_log_prob) ** 2)}


def kl_to_reference(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """mean_i [mean_D (mu_theta - mu_ref)^2 / (2 s_i^2)] (FG's code form: no |dt|, per-element mean; trap 9)."""
    return torch.mean(_mean_d((mean - mean_ref) ** 2) / (2 * std**2))


class FlowGRPOMethod:
    name = "flow_grpo"
    metric_keys = ("policy_loss", "kl_loss", "loss", "clipfrac", "approx_kl", "ratio_mean")

    def __init__(self, cfg: Any):
        self.cfg = cfg
        s = cfg.sample
        self.window = s.sde_window_size
        self.window_range = tuple(s.sde_window_range) if s.sde_window_range is not None else (0, s.num_steps - 1)
        self.J = trained_steps(s.num_steps, cfg.train.timestep_fraction, self.window)  # >= 1: the config checks

    def _step(self, x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor, sigma_1: Tensor, a: float | Tensor,
              **kw: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.cfg.sample.sde_type == "cps":
            return cps_step_with_logprob(x, v, sigma, sigma_next, a, **kw)
        return sde_step_with_logprob(x, v, sigma, sigma_next, sigma_1, a, **kw)

    # ------------------------------------------------------------ rollout
    def rollout_adapter(self) -> str | None:
        return None

    def sample(self, tr: AWMTrainer, vfn: VelocityFn, latents: Tensor, gens: list[Any]) -> RolloutChunk:
        """SDE rollout keeping, per sample, the J + 1 states of its J trained transitions, their fp32
        log-probs and sigma indices (extras ``latents`` (b, J+1, ...), ``log_probs`` and ``step_index`` (b, J))."""
        a = float(self.cfg.sample.noise_level)
        sig = tr.sigmas.to(device=latents.device, dtype=torch.float32)
        n, b = len(sig) - 1, latents.shape[0]
        if self.window:  # Fast: each sample's window start from its own generator (inclusive bounds, trap 4)
            lo, hi = self.window_range
            starts = torch.tensor([int(torch.randint(lo, hi - self.window + 1, (1,), generator=g)) for g in gens])
        else:
            starts = torch.zeros(b, dtype=torch.long)
        starts = starts.to(latents.device)
        x = latents.float()
        states, logps = [x], []
        for k in range(n):
            t = torch.full((b,), float(sig[k]), device=x.device, dtype=torch.float32)
            v = vfn(x, t).float()
            if self.window:  # ODE (a = 0: the same step formula is Euler's) outside the window, no log-prob
                a_k = torch.where((k >= starts) & (k < starts + self.window), a, 0.0).to(torch.float32)
            else:
                a_k = torch.full((b,), a, device=x.device, dtype=torch.float32)
            z = randn_per_sample(x.shape, gens, device=x.device, dtype=torch.float32)
            x_next, lp, _, _ = self._step(x, v, t, sig[k + 1].expand(b), sig[1], a_k, noise=z)
            logps.append(torch.where(a_k > 0, lp, torch.zeros_like(lp)))
            states.append(x_next)
            x = x_next
        steps = starts.unsqueeze(1) + torch.arange(self.J, device=x.device).unsqueeze(0)  # (b, J)
        traj = torch.stack(states, dim=1)  # (b, N+1, ...)
        lps = torch.stack(logps, dim=1)  # (b, N)
        rows = torch.arange(b, device=x.device).unsqueeze(1)
        # the trained steps are consecutive: J + 1 states hold every transition x_j -> x_{j+1} (half of
        # storing x_j and x_{j+1} apart, in memory and in mid-epoch checkpoints)
        states_kept = torch.cat([steps, steps[:, -1:] + 1], dim=1)
        extras = {"latents": traj[rows, states_kept], "log_probs": lps[rows, steps].float(),
                  "step_index": steps.long()}
        return RolloutChunk(x0=x.float(), nfe=n, extras=extras)

    def advantages(self, res: AdvantageResult) -> Tensor:
        """A clamped to +-adv_clip_max, not rescaled (section 1.2)."""
        c = float(self.cfg.train.adv_clip_max)
        return torch.clamp(res.raw_advantages, -c, c)

    def prepare_epoch(self, tr: AWMTrainer, buf: EpochBuffer, order: Tensor) -> None:
        return None  # the old log-probs were saved by the rollout

    # --------------------------------------------------------------- loss
    def num_chunks(self, tr: AWMTrainer) -> int:
        return self.J

    def _velocity(self, tr: AWMTrainer, module: Any, cond: Cond) -> VelocityFn:
        """The rollout's velocity: with CFG (sample.guidance_scale, both branches with grad) when train.cfg."""
        return tr.velocity_factory(module, cond, self.cfg.sample.guidance_scale if self.cfg.train.cfg else 1.0)

    def chunk_loss(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, mb: int, chunk: int,
                   cols: Tensor | slice | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        acc, tcfg = tr.accelerator, self.cfg.train
        rows = idx[:1] if cols is None else idx[cols]  # dropped samples are not computed at all
        ex = buf.extras
        x, x_next = ex["latents"][rows, chunk], ex["latents"][rows, chunk + 1]
        k = ex["step_index"][rows, chunk]
        sig = tr.sigmas.to(device=x.device, dtype=torch.float32)
        sigma, sigma_next = sig[k], sig[k + 1]
        cond = Cond(buf.embeds[rows], buf.pooled[rows])
        a = float(self.cfg.sample.noise_level)
        with acc.autocast():
            v = self._velocity(tr, tr.model, cond)(x, sigma)
        _, lp, mean, std = self._step(x, v.float(), sigma, sigma_next, sig[1], a, prev_sample=x_next)
        if cols is None:
            return lp.sum() * 0.0, None
        out = clipped_policy_loss(lp, ex["log_probs"][rows, chunk], buf.advantages[rows], tcfg.clip_range)
        kl = torch.zeros((), dtype=lp.dtype, device=lp.device)
        if tcfg.beta > 0:
            with torch.no_grad(), acc.autocast(), L.adapters_disabled(tr.unwrapped):
                v_ref = self._velocity(tr, tr.unwrapped, cond)(x, sigma)
            _, _, mean_ref, _ = self._step(x, v_ref.float(), sigma, sigma_next, sig[1], a, prev_sample=x_next)
            kl = kl_to_reference(mean, mean_ref, std)
        loss = out["policy_loss"] + tcfg.beta * kl
        return loss, {"policy_loss": out["policy_loss"], "kl_loss": kl, "loss": loss, "clipfrac": out["clipfrac"],
                      "approx_kl": out["approx_kl"], "ratio_mean": out["ratio"].mean()}

    # -------------------------------------------------------------- state
    def after_step(self, tr: AWMTrainer, ema_step: int) -> dict[str, float]:
        return {}  # the shared weight EMA is Flow-GRPO's only EMA (eval and lora_ema only)

    def end_epoch(self, tr: AWMTrainer, epoch: int) -> dict[str, float]:
        return {}
