"""AWM (the default method) on the methods seam: SA-Solver or Euler rollout keeping only ``x0``,
re-noised training times (pass 1 / pass 2), the AWM surrogate loss with the reference and KL-EMA
terms, and the KL-EMA adapter update after each optimizer step. The code is the trainer's
pre-seam AWM path moved here unchanged (same ops in the same order: bitwise the same runs)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainers.awm import lora as L
from trainers.awm.advantages import AdvantageResult
from trainers.awm.ema import kl_ema_mixing, update_ema_adapter_
from trainers.awm.loss import compute_awm_loss, flow_matching_target, noised_latents, per_sample_log_prob
from trainers.awm.methods.base import RolloutChunk
from trainers.awm.model import Cond
from trainers.awm.prompts import train_seed
from trainers.awm.samplers import VelocityFn, euler_sample, sa_solver_sample
from trainers.awm.timesteps import sample_training_times

if TYPE_CHECKING:  # the trainer passes itself; importing it at run time would be circular
    from trainers.awm.recipe import AWMTrainer, EpochBuffer


class AWMMethod:
    name = "awm"
    metric_keys = ("policy_loss", "kl_loss", "ema_kl_loss", "loss", "clipfrac", "approx_kl", "ratio_mean", "mse")

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # ------------------------------------------------------------ rollout
    def rollout_adapter(self) -> str | None:
        return L.EMA if self.cfg.train.off_policy else None

    def sample(self, tr: AWMTrainer, vfn: VelocityFn, latents: Tensor, gens: list[Any]) -> RolloutChunk:
        s = self.cfg.sample
        if self.cfg.train.use_sa_solver:
            out = sa_solver_sample(vfn, latents, tr.sigmas, noise_level=s.noise_level,
                                   noise_window=tuple(s.noise_window), generator=gens)
        else:
            out = euler_sample(vfn, latents, tr.sigmas, noise_level=s.noise_level, sde_frac=s.sde_frac,
                               generator=gens)
        return RolloutChunk(x0=out.x0.float(), nfe=out.nfe)

    def advantages(self, res: AdvantageResult) -> Tensor:
        return res.advantages  # A' = clamp(A, +-c)/c * advantage_max

    # -------------------------------------------------- (t, eps) and pass 1
    def _draw(self, tr: AWMTrainer, epoch: int, mb: int, b: int) -> tuple[Tensor, Tensor]:
        """(t (T,B), eps (T,B,*latent_shape)) of a micro-batch, identical in pass 1 and pass 2."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(train_seed(cfg.seed, epoch, tr.rank, mb))
        t = sample_training_times(cfg.time_type, grid=tr.grid, num_train_timesteps=cfg.train.train_timesteps,
                                  timestep_fraction=cfg.train.timestep_fraction, batch_size=b,
                                  time_shift=cfg.time_shift, generator=gen, mu=tr.time_shift_mu)
        eps = torch.randn((cfg.train.train_timesteps, b, *tr.latent_shape), generator=gen, dtype=torch.float32)
        return t.to(tr.device), eps.to(tr.device)

    def _mb_inputs(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, epoch: int, mb: int):
        T = self.cfg.train.train_timesteps
        b = len(idx)
        t, eps = self._draw(tr, epoch, mb, b)
        x0 = buf.x0[idx]
        xt = noised_latents(x0.unsqueeze(0).expand(T, *x0.shape), eps, t)
        cond = Cond(buf.embeds[idx], buf.pooled[idx]).repeat(T)
        flat_x = xt.reshape(T * b, *x0.shape[1:])
        flat_t = t.reshape(T * b)
        target = flow_matching_target(eps, x0.unsqueeze(0).expand_as(eps))
        return t, flat_x, flat_t, cond, target

    def prepare_epoch(self, tr: AWMTrainer, buf: EpochBuffer, order: Tensor) -> None:
        """Old log-probs on the pre-update (or "ema") policy where needed (L1227-1240)."""
        cfg, acc = self.cfg, tr.accelerator
        B, T = tr.topo.train_batch_size, cfg.train.train_timesteps
        n_mb = tr.topo.train_num_batches_per_epoch
        need = [i for i in range(n_mb) if cfg.train.off_policy or i >= tr.topo.gradient_accumulation_steps]
        if not need:
            return
        ctx = L.using_adapter(tr.unwrapped, L.EMA) if cfg.train.off_policy else contextlib.nullcontext()
        with ctx, torch.no_grad(), acc.autocast():
            for i in need:
                idx = order[i * B:(i + 1) * B].to(tr.device)
                t, flat_x, flat_t, cond, target = self._mb_inputs(tr, buf, idx, buf.epoch, i)
                v = tr.forward(tr.unwrapped, flat_x, flat_t, cond, (T, len(idx), *tr.latent_shape))
                lp, _ = per_sample_log_prob(v, target, t, weighting=cfg.train.weighting,
                                            ghuber_power=cfg.train.ghuber_power)
                buf.lp_old[i] = lp.detach()

    # --------------------------------------------------------------- loss
    def num_chunks(self, tr: AWMTrainer) -> int:
        return 1

    def chunk_loss(self, tr: AWMTrainer, buf: EpochBuffer, idx: Tensor, mb: int, chunk: int,
                   cols: Tensor | slice | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        acc, tcfg = tr.accelerator, self.cfg.train
        T = tcfg.train_timesteps
        t, flat_x, flat_t, cond, target = self._mb_inputs(tr, buf, idx, buf.epoch, mb)
        shape = (T, len(idx), *tr.latent_shape)
        v_ref = v_ema = None
        with torch.no_grad(), acc.autocast():
            if tcfg.beta > 0:
                with L.adapters_disabled(tr.unwrapped):
                    v_ref = tr.forward(tr.unwrapped, flat_x, flat_t, cond, shape)
            if tcfg.ema_beta > 0:
                with L.using_adapter(tr.unwrapped, L.EMA):
                    v_ema = tr.forward(tr.unwrapped, flat_x, flat_t, cond, shape)
        with acc.autocast():
            pred = tr.forward(tr.model, flat_x, flat_t, cond, shape)
        if cols is None:
            return pred.sum() * 0.0, None
        lp_old = None
        if tcfg.off_policy or mb >= tr.topo.gradient_accumulation_steps:
            lp_old = buf.lp_old[mb][:, cols]
        out = compute_awm_loss(
            pred[:, cols], target[:, cols], t[:, cols], buf.advantages[idx][cols],
            weighting=tcfg.weighting, ghuber_power=tcfg.ghuber_power, clip_range=tcfg.clip_range,
            loss_type=tcfg.loss_type, beta=tcfg.beta, ema_beta=tcfg.ema_beta, lp_old=lp_old,
            pred_ref=None if v_ref is None else v_ref[:, cols],
            pred_ema=None if v_ema is None else v_ema[:, cols],
            kl_weighting=tcfg.kl_weight, kl_ema_weighting=tcfg.kl_ema_weight)
        scalars = {k: out[k] for k in self.metric_keys if k != "mse"}
        scalars["mse"] = out["mse"].mean()
        return out["loss"], scalars

    # -------------------------------------------------------------- state
    def after_step(self, tr: AWMTrainer, ema_step: int) -> dict[str, float]:
        d = kl_ema_mixing(ema_step, self.cfg.train.kl_ema_decay, self.cfg.train.kl_ema_decay_type)
        update_ema_adapter_(tr.ema_adapter_params, tr.policy_params, d)
        return {"train/kl_ema_decay": float(d)}

    def end_epoch(self, tr: AWMTrainer, epoch: int) -> dict[str, float]:
        return {}
