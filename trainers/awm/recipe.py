"""The training loop, shared by every method (spec sections 1 and 2.8; README.md maps every equation to code).

``train(cfg, run_dir, *, logger=None, stop=None) -> TrainResult`` runs in-process, as a plain
single process or under ``accelerate launch`` (DDP; gloo on CPU). What differs between methods
(``cfg.method``: AWM, Flow-GRPO, ...) is a strategy object from ``trainers/awm/methods`` (the
seam: ``methods/base.py``); everything else here is one copy for all. Per epoch:

1. **Rollout** (no grad): the seeded group sampler deals this process its slots; each round
   encodes the prompts, draws every sample's initial noise (and SDE noise) from its own
   generator seeded by ``(seed, epoch, group, member)``, runs the method's sampler with the
   method's rollout adapter (AWM: SA-Solver or Euler SDE/ODE with the policy, the ``"ema"``
   adapter when off-policy), decodes, and submits the images to the reward thread pool, which
   scores them while the next round samples. ``x0``, the text conditioning and the method's
   per-sample ``extras`` are kept.
2. **Advantages**: rewards are gathered over processes (rank order), grouped by
   ``(epoch, group index)`` (never by decoded text, trap 9.12), A = (r - mean_g)/(std + 1e-4),
   A' = clamp(A, +-c)/c * advantage_max (``advantages.py``); the method picks what its loss uses.
3. **prepare_epoch** (AWM's pass 1): per micro-batch, ``(t, eps)`` come from a generator seeded
   by ``(seed, epoch, rank, micro-batch)``, so pass 1 and pass 2 see identical values; old
   log-probs are computed (no grad) only when needed: off-policy (``"ema"`` adapter) or for
   micro-batches after the epoch's first optimizer step (pre-update policy).
4. **Update**: per micro-batch, the method's chunk losses (AWM: reference and ``"ema"``-adapter
   forwards without grad, skipped when their coefficient is 0, the policy forward with grad, the
   AWM loss of ``loss.py``), backward with DDP sync only on the last chunk of an optimizer step,
   grad clipping, AdamW, LR schedule; then the weight EMA and the method's ``after_step`` (AWM:
   the KL-EMA adapter update); after the epoch's last step the method's ``end_epoch``.
5. Log, evaluate (every ``eval_freq`` epochs, at step 0 and at the end), checkpoint (every
   ``save_freq`` epochs, at the end, and when ``stop`` is set).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from benchmarks.files import atomic_write
from trainers.awm import checkpoint as C
from trainers.awm import lora as L
from trainers.awm.accelerate_compat import reset_accelerate_state
from trainers.awm.advantages import compute_advantages
from trainers.awm.config import TrainerConfig, derive_topology
from trainers.awm.ema import WeightEMA
from trainers.awm.evaluation import run_eval, write_samples
from trainers.awm.generate import cfg_velocity
from trainers.awm.logging import JsonlMetricLogger, MetricLogger, NullLogger, Progress
from trainers.awm.methods import build_method
from trainers.awm.model import Cond, load_family
from trainers.awm.prompts import GroupSampler, derive_seed, eval_seed, load_prompts, rollout_seed
from trainers.awm.rewards import AsyncRewardPool, build_reward
from trainers.awm.samplers import randn_per_sample

try:  # optional: only train.use_8bit_adam needs it
    import bitsandbytes as bnb
except ImportError:
    bnb = None

log = logging.getLogger("trainers.awm.recipe")


class StopSignal(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class TrainResult:
    status: str  # "completed" | "interrupted"
    global_step: int
    epoch: int  # number of fully completed epochs
    last_checkpoint: Path | None
    final_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochBuffer:
    """What one process keeps from an epoch's rollouts (enough to resume mid-epoch)."""

    epoch: int
    x0: Any  # (N, *latent_shape) float32: (N, C, H, W) for SD3, packed (N, L, 4C) for FLUX
    embeds: Any  # (N, L, D)
    pooled: Any  # (N, P)
    advantages: Any  # (N,) float32, A'
    keep: Any  # (N,) bool
    keep_all: Any  # (W*N,) bool, gathered in rank order
    lp_old: dict[int, Any] = field(default_factory=dict)  # AWM: micro-batch -> (T, B) float64
    extras: dict[str, Any] = field(default_factory=dict)  # the method's per-sample rollout tensors (N, ...)

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "x0": self.x0.cpu(), "embeds": self.embeds.cpu(), "pooled": self.pooled.cpu(),
                "advantages": self.advantages.cpu(), "keep": self.keep.cpu(), "keep_all": self.keep_all.cpu(),
                "lp_old": {str(k): v.cpu() for k, v in self.lp_old.items()},
                "extras": {k: v.cpu() for k, v in self.extras.items()}}

    @classmethod
    def from_state(cls, s: dict[str, Any], device) -> EpochBuffer:
        return cls(int(s["epoch"]), s["x0"].to(device), s["embeds"].to(device), s["pooled"].to(device),
                   s["advantages"].to(device), s["keep"].to(device), s["keep_all"],
                   {int(k): v.to(device) for k, v in s["lp_old"].items()},
                   {k: v.to(device) for k, v in s.get("extras", {}).items()})


def _lr_lambda(decay_steps: float, kind: str):
    """Upstream SequentialLR(CosineAnnealingLR(T_max=D, eta_min=lr/3), ConstantLR(1/3)) in closed
    form: lr(s) = lr/3 + (lr - lr/3)(1 + cos(pi s / D))/2 for s < D, then lr/3 forever."""

    def f(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step >= decay_steps:
            return 1.0 / 3.0
        return 1.0 / 3.0 + (2.0 / 3.0) * 0.5 * (1.0 + math.cos(math.pi * step / decay_steps))

    return f


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    st = {
        "torch": torch.random.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.random.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


class AWMTrainer:
    def __init__(self, cfg: TrainerConfig, run_dir: str | Path, *, logger: MetricLogger | None = None,
                 stop: StopSignal | None = None, cache_dir: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.cache_dir = cache_dir
        self.stop = stop
        self._user_logger = logger
        self.logger = None
        self.pool = None
        self.eval_pool = None
        self.accelerator = None

    # ================================================================== setup
    def setup(self) -> None:
        cfg = self.cfg
        distributed_env = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if not distributed_env:
            reset_accelerate_state()  # allow repeated in-process runs
        use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        if use_cpu and cfg.mixed_precision == "fp16":
            raise ValueError("mixed_precision='fp16' needs a CUDA device; use 'no' or 'bf16' on CPU")
        self.accelerator = acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=use_cpu)
        self.device = acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        if use_cpu and self.world > 1 and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // acc.num_processes))  # stack-notes P1
        if torch.cuda.is_available() and not use_cpu:
            torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
            torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
        self.topo = derive_topology(cfg, self.world)
        self.cfg_hash = cfg.fingerprint()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.run_dir / "config.resolved.json", json.dumps(cfg.resolved(self.world), indent=2))
        acc.wait_for_everyone()

        set_seed(cfg.seed)  # same on every rank: identical LoRA init; rollout noise is per-slot seeded
        self.method = build_method(cfg)
        self.family = load_family(cfg.pretrained.family, cfg.pretrained.model, revision=cfg.pretrained.revision,
                                  device=self.device, inference_dtype=cfg.pretrained.dtype,
                                  guidance=cfg.pretrained.guidance, transformer_dtype=cfg.pretrained.transformer_dtype)
        tr = self.family.transformer
        targets = cfg.lora.target_modules or self.family.lora_target_modules(cfg.lora.type, cfg.lora.include_attn2)
        if cfg.lora.include_attn2 and not self.family.has_dual_attention():
            log.warning("lora.include_attn2=true but the transformer has no dual-attention (attn2) layers")
            targets = [t for t in targets if not t.startswith("attn2.")]
        self.lora_config = L.make_lora_config(rank=cfg.lora.rank, alpha=cfg.lora.alpha, init=cfg.lora.init,
                                              target_modules=targets)
        L.add_policy_adapters(tr, self.lora_config, with_ema=True)
        if cfg.train.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        # the EMA ramps continue at the step the loaded LoRA was trained for (upstream sets global_step = S)
        self.ema_step_offset = 0
        if cfg.train.lora_path:
            L.load_into_adapter_(tr, cfg.train.lora_path, L.POLICY)
            L.copy_adapter_(tr, src=L.POLICY, dst=L.EMA)
            self.ema_step_offset = cfg.train.lora_path_step
            if self.ema_step_offset is None:
                self.ema_step_offset = L.trained_step_of(cfg.train.lora_path)
            if self.ema_step_offset is None:
                raise ValueError(f"train.lora_path={cfg.train.lora_path}: cannot tell which global step these "
                                 "weights were trained for (no checkpoint manifest.json, no step-<N> or "
                                 "checkpoint-<S> folder); set train.lora_path_step (0 starts the EMA ramps afresh)")
            log.info("loaded LoRA %s; the EMA ramps continue from step %d", cfg.train.lora_path,
                     self.ema_step_offset)
        self.policy_named = L.adapter_params(tr, L.POLICY)
        self.policy_params, self.ema_adapter_params = L.paired_params(tr, L.POLICY, L.EMA)
        self.wema = WeightEMA(self.policy_named, max_decay=cfg.train.ema_decay,
                              update_interval=cfg.train.ema_update_step_interval) if cfg.train.ema else None

        t = cfg.train
        if t.use_8bit_adam:
            if bnb is None:
                raise ImportError("train.use_8bit_adam=true needs bitsandbytes (pip install bitsandbytes)")
            opt_cls = bnb.optim.AdamW8bit
        else:
            opt_cls = torch.optim.AdamW
        optimizer = opt_cls(self.policy_params, lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                            weight_decay=t.adam_weight_decay, eps=t.adam_epsilon)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(t.decay_steps, t.lr_scheduler))
        self.model, self.optimizer = acc.prepare(tr, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)

        self.train_prompts = load_prompts(cfg.dataset, cfg.prompt_fn, "train", cache_dir=self.cache_dir)
        self.test_prompts = load_prompts(cfg.dataset, cfg.prompt_fn, cfg.eval.split, cache_dir=self.cache_dir)
        self.sampler = GroupSampler(len(self.train_prompts), cfg.seed, cfg.sample.prompts_per_epoch,
                                    cfg.sample.num_image_per_prompt, fingerprint=self.train_prompts.fingerprint())
        self.reward = build_reward(cfg.reward_fn, cfg.reward_kwargs)
        self.eval_reward = self.reward if cfg.eval.rewards is None else build_reward(cfg.eval.rewards, cfg.reward_kwargs)
        self.pool = AsyncRewardPool(self.reward, max_workers=4)
        self.eval_pool = self.pool if self.eval_reward is self.reward else AsyncRewardPool(self.eval_reward, 4)

        self.latent_shape = self.family.latent_shape(cfg.resolution)
        self.sigmas = self.family.sigmas(cfg.sample.num_steps, cfg.resolution)
        self.grid = (self.sigmas[:-1].to(torch.float32) * 1000) / 1000  # scheduler.timesteps / 1000
        self.eval_sigmas = self.family.sigmas(cfg.sample.eval_num_steps, cfg.resolution)
        # uniform / logit_normal training times: FLUX shifts them with its own dynamic mu, SD3 with time_shift
        self.time_shift_mu = self.family.time_shift_mu(cfg.resolution)
        self.neg_cond = None
        self.eval_guidance_scale = cfg.sample.guidance_scale if cfg.eval.guidance_scale is None \
            else cfg.eval.guidance_scale
        if max(cfg.sample.guidance_scale, self.eval_guidance_scale) > 1.0:
            self.neg_cond = self.family.encode_prompts([""], max_sequence_length=cfg.sample.max_sequence_length)

        if self.is_main:
            self.logger = self._user_logger if self._user_logger is not None else \
                JsonlMetricLogger(self.run_dir / "metrics.jsonl")
        else:
            self.logger = NullLogger()
        self._owns_logger = self._user_logger is None
        self.progress = Progress(enabled=None if self.is_main else False)

        self.global_step = 0
        self.next_epoch = 0
        self.step_in_epoch = 0
        self.resume_buffer: EpochBuffer | None = None
        self.last_checkpoint: Path | None = None
        self.final_metrics: dict[str, float] = {}
        self._resume()

    # ================================================================ resume
    def _resume(self) -> None:
        acc = self.accelerator
        info = None
        if self.is_main:
            n_found = len(C.list_step_dirs(self.run_dir))
            # invalid checkpoints are renamed aside: training would overwrite them at their step
            info = C.find_latest_valid(self.run_dir, set_aside_invalid=True)
            if info is None and n_found:
                log.warning("no valid checkpoint, starting from step 0 (%d invalid checkpoint(s) kept aside "
                            "as step-<N>.invalid-<time> in %s)", n_found, C.checkpoints_dir(self.run_dir))
        box = [str(info.path) if info is not None else None]
        if self.world > 1:
            broadcast_object_list(box, from_process=0)
        hook = getattr(self.logger, "on_resume", None)
        if box[0] is None:
            if hook is not None:
                hook(None)
            return
        path = Path(box[0])
        if self.is_main and info.manifest.get("config_hash") != self.cfg_hash:
            log.warning("resuming from %s written with config hash %s; the current config hash is %s",
                        path, info.manifest.get("config_hash"), self.cfg_hash)
        state = C.load_torch(path / "state" / "trainer_state.pt")
        adapters = C.load_tensors(path / "state" / "adapters.safetensors")

        with torch.no_grad():
            for name, p in self.unwrapped.named_parameters():
                if name in adapters:
                    p.data.copy_(adapters[name].to(p.device, p.dtype))
        missing = [n for n in list(self.policy_named) if n not in adapters]
        if missing:
            raise RuntimeError(f"checkpoint {path} lacks adapter tensors, e.g. {missing[:3]} (LoRA config changed?)")
        if self.wema is not None:
            if (path / "state" / "weight_ema.safetensors").is_file():
                shadow = C.load_tensors(path / "state" / "weight_ema.safetensors")
                self.wema.load_state_dict({"shadow": shadow, **state["weight_ema"]})
            else:
                log.warning("checkpoint has no weight EMA; re-initialising it from the live weights")
        self.optimizer.load_state_dict(C.load_torch(path / "state" / "optimizer.pt"))
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and acc.scaler is not None:
            acc.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.global_step = int(state["global_step"])
        self.next_epoch = int(state["next_epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        rank_file = path / "state" / f"rank-{self.rank}.pt"
        if int(state["world_size"]) == self.world and rank_file.is_file():
            rs = C.load_torch(rank_file)
            _set_rng_state(rs["rng"])
            if rs.get("epoch_buffer") is not None:
                self.resume_buffer = EpochBuffer.from_state(rs["epoch_buffer"], self.device)
        elif self.step_in_epoch:
            raise RuntimeError(f"checkpoint {path} was written mid-epoch by {state['world_size']} processes; "
                               f"resume it with the same world size (now {self.world})")
        self.last_checkpoint = path
        if hook is not None:
            hook(self.global_step)
        log.info("resumed from %s (step %d, next epoch %d, step in epoch %d)", path, self.global_step,
                 self.next_epoch, self.step_in_epoch)

    # ============================================================ velocity
    def velocity_factory(self, module, cond, guidance_scale: float | None = None):
        """``v(x, t)`` closure over a batch's conditioning (CFG when the guidance scale > 1;
        ``None`` = the rollouts' ``sample.guidance_scale``)."""
        g = float(self.cfg.sample.guidance_scale if guidance_scale is None else guidance_scale)
        return cfg_velocity(self.family, module, cond, g, self.neg_cond)

    # ============================================================= rollout
    def rollout(self, epoch: int) -> tuple[EpochBuffer, dict[str, float]]:
        cfg, acc = self.cfg, self.accelerator
        s = cfg.sample
        plan = self.sampler.plan(epoch)
        slots = plan.for_rank(self.rank, self.world)
        bs = self.topo.sample_train_batch_size
        x0s, conds, futures, extras = [], [], [], []
        t0 = time.perf_counter()
        adapter = self.method.rollout_adapter()
        adapter_ctx = L.using_adapter(self.unwrapped, adapter) if adapter is not None else contextlib.nullcontext()
        task = self.progress.task(f"epoch {epoch} rollouts", len(slots))
        nfe = 0
        with adapter_ctx:
            for start in range(0, len(slots), bs):
                chunk = slots[start:start + bs]
                texts = [self.train_prompts.prompts[sl.prompt_index] for sl in chunk]
                metas = [self.train_prompts.metadata[sl.prompt_index] for sl in chunk]
                uniq = sorted(set(texts), key=texts.index)
                uc = self.family.encode_prompts(uniq, max_sequence_length=s.max_sequence_length)
                cond = uc.index(torch.tensor([uniq.index(p) for p in texts], device=uc.prompt_embeds.device))
                gens = [torch.Generator().manual_seed(rollout_seed(cfg.seed, epoch, sl.group, sl.member)) for sl in chunk]
                lat = randn_per_sample((len(chunk), *self.latent_shape), gens, device=self.device, dtype=torch.float32)
                vfn = self.velocity_factory(self.unwrapped, cond)
                with torch.no_grad(), acc.autocast():
                    out = self.method.sample(self, vfn, lat, gens)
                nfe += out.nfe * len(chunk)
                x0 = out.x0
                extras.append(out.extras)
                images = self.family.decode(x0)
                futures.append(self.pool.submit(images, texts, metas))
                x0s.append(x0)
                conds.append(cond)
                self.progress.advance(task, len(chunk))
        self.progress.remove(task)
        t_sample = time.perf_counter() - t0
        t1 = time.perf_counter()
        results = [f.result() for f in futures]
        t_reward = time.perf_counter() - t1
        keys = list(results[0])
        local = {k: np.concatenate([r[k] for r in results]) for k in keys}
        x0 = torch.cat(x0s)
        cond = Cond.cat(conds)
        extra = {k: torch.cat([e[k] for e in extras]) for k in extras[0]}

        # ---- gather (rank order) and advantages
        n_local = len(slots)
        groups_local = torch.tensor([sl.group for sl in slots], dtype=torch.long, device=self.device)
        rew_local = torch.stack([torch.as_tensor(local[k], dtype=torch.float64) for k in keys], dim=1).to(self.device)
        if self.world > 1:
            rew_all = acc.gather(rew_local).cpu()
            groups_all = acc.gather(groups_local).cpu()
        else:
            rew_all, groups_all = rew_local.cpu(), groups_local.cpu()
        total = rew_all[:, keys.index("avg")]
        res = compute_advantages(total, groups_all.tolist(), per_prompt_stat_tracking=cfg.per_prompt_stat_tracking,
                                 global_std=s.global_std, adv_clip_max=cfg.train.adv_clip_max,
                                 advantage_max=cfg.train.advantage_max, zero_std_policy=s.zero_std_policy)
        sl_ = slice(self.rank * n_local, (self.rank + 1) * n_local)
        buf = EpochBuffer(epoch=epoch, x0=x0, embeds=cond.prompt_embeds, pooled=cond.pooled,
                          advantages=self.method.advantages(res)[sl_].to(self.device),
                          keep=res.keep[sl_].to(self.device), keep_all=res.keep.cpu(), extras=extra)
        metrics: dict[str, float] = {}
        for j, k in enumerate(keys):
            col = rew_all[:, j].numpy()
            fin = col[np.isfinite(col)]
            metrics[f"train/reward_{k}"] = float(fin.mean()) if fin.size else float("nan")
        metrics["train/reward_std"] = float(total.std(correction=0))
        for k, v in res.stats.items():
            metrics[f"train/{k}"] = float(v)
        metrics["train/num_images"] = float(total.numel())
        metrics["time/sampling"] = t_sample
        metrics["time/reward_wait"] = t_reward
        metrics["train/rollout_nfe_per_image"] = nfe / max(1, n_local)
        return buf, metrics

    # ======================================================== micro-batches
    def _perm(self, epoch: int, rank: int, n: int):
        return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(0x5348, self.cfg.seed, epoch, rank)))

    def forward(self, module, flat_x, flat_t, cond, shape):
        """The family's velocity of a flat batch, reshaped to ``shape`` (methods call it)."""
        v = self.family.velocity(module, flat_x, flat_t, cond)
        return v.reshape(*shape)

    def _step_weights(self, buf: EpochBuffer, n_local: int) -> list[float]:
        """Kept samples per optimizer step summed over all processes (loss normaliser)."""
        B, GA = self.topo.train_batch_size, self.topo.gradient_accumulation_steps
        counts = [0.0] * self.topo.steps_per_epoch
        for r in range(self.world):
            keep_r = buf.keep_all[r * n_local:(r + 1) * n_local]
            perm_r = self._perm(buf.epoch, r, n_local)
            for s in range(self.topo.steps_per_epoch):
                counts[s] += float(keep_r[perm_r[s * GA * B:(s + 1) * GA * B]].sum())
        return counts

    def train_step(self, buf: EpochBuffer, step_in_epoch: int, order, counts: list[float]) -> dict[str, float]:
        """Micro-batches of one optimizer step (the method's chunk losses) + the step itself + EMA updates."""
        acc, tcfg, method = self.accelerator, self.cfg.train, self.method
        B, GA = self.topo.train_batch_size, self.topo.gradient_accumulation_steps
        n_chunks = method.num_chunks(self)
        keys = method.metric_keys
        sums: dict[str, Any] = {}
        n_terms = 0
        total_kept = counts[step_in_epoch]
        for j in range(GA):
            i = step_in_epoch * GA + j
            idx = order[i * B:(i + 1) * B].to(self.device)
            keep = buf.keep[idx]
            n_keep = int(keep.sum())
            cols = None
            if n_keep > 0 and total_kept > 0:
                cols = keep.nonzero().flatten() if n_keep < len(idx) else slice(None)
            # mean over all kept samples of the step, across processes (DDP averages ranks), and chunks
            scale = n_keep * self.world / total_kept / n_chunks if cols is not None else 1.0
            for c in range(n_chunks):
                last = j == GA - 1 and c == n_chunks - 1
                sync_ctx = contextlib.nullcontext() if last or self.world == 1 else acc.no_sync(self.model)
                with sync_ctx:
                    loss, out = method.chunk_loss(self, buf, idx, i, c, cols)
                    acc.backward(loss * scale if out is not None else loss)
                if out is not None:  # accumulate on the device; one sync per optimizer step
                    n_terms += 1
                    for k in keys:
                        sums[k] = sums.get(k, 0.0) + out[k].detach().double()
        grad_norm = acc.clip_grad_norm_(self.policy_params, tcfg.max_grad_norm)
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        if not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        # fixed keys + a count, summed over ranks (a rank whose samples were all dropped still joins)
        vec = torch.zeros(len(keys) + 1, dtype=torch.float64, device=self.device)
        for j, k in enumerate(keys):
            if k in sums:
                vec[j] = sums[k]
        vec[-1] = n_terms
        if self.world > 1:
            vec = acc.reduce(vec, reduction="sum")
        count = float(vec[-1])
        metrics: dict[str, float] = {f"train/{k}": (float(v) / count if count else float("nan"))
                                     for k, v in zip(keys, vec[:-1].tolist())}
        metrics["train/grad_norm"] = float(grad_norm)
        metrics["train/lr"] = float(lr)
        # ---- EMAs after the optimizer step (post-increment step, upstream L1390-1419)
        ema_step = self.global_step + self.ema_step_offset  # upstream's global step after a lora_path start
        if self.wema is not None:
            d = self.wema.update(self.policy_named, ema_step)
            if d is not None:
                metrics["train/weight_ema_decay"] = float(d)
        metrics.update(method.after_step(self, ema_step))
        metrics["train/epoch"] = float(buf.epoch)
        return metrics

    # ================================================================ eval
    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        n = len(self.test_prompts)
        if cfg.eval.max_prompts is not None:
            n = min(n, cfg.eval.max_prompts)
        sets: list[tuple[str, Any]] = [("eval", None)]
        if self.wema is not None and cfg.eval.ema:
            sets.append(("eval_ema", self.wema.swapped_in(self.policy_named)))
        t0 = time.perf_counter()
        metrics, records, images = run_eval(
            accelerator=self.accelerator, family=self.family, module=self.unwrapped, prompts=self.test_prompts,
            indices=list(range(n)), reward_pool=self.eval_pool, velocity_factory=self.velocity_factory,
            guidance_scale=self.eval_guidance_scale,
            latent_shape=self.latent_shape, sigmas=self.eval_sigmas, batch_size=cfg.sample.test_batch_size,
            eval_seed_fn=lambda i: eval_seed(cfg.eval.seed, i), weight_sets=sets,
            max_sequence_length=cfg.sample.max_sequence_length, progress=self.progress)
        metrics["time/eval"] = time.perf_counter() - t0
        if self.is_main:
            write_samples(self.run_dir, self.global_step, records)
            for prefix, pairs in images.items():
                self.logger.log_images([p[0] for p in pairs], [p[1] for p in pairs], self.global_step, f"{prefix}/images")
        return metrics

    # ========================================================== checkpoint
    def save_checkpoint(self, *, epoch: int, next_epoch: int, step_in_epoch: int,
                        buffer: EpochBuffer | None) -> Path | None:
        acc, cfg = self.accelerator, self.cfg
        step = self.global_step
        if self.is_main:
            C.prepare_tmp(self.run_dir, step)
        acc.wait_for_everyone()
        tmp = C.tmp_dir(self.run_dir, step)
        digest = self.adapter_digest()
        C.save_torch(tmp / "state" / f"rank-{self.rank}.pt",
                     {"rng": _rng_state(), "epoch_buffer": buffer.state() if buffer is not None else None,
                      "adapter_sha256": digest})
        acc.wait_for_everyone()
        path = None
        if self.world > 1:  # DDP must keep the LoRA weights identical on every rank

            digests = gather_object([digest])
            if len(set(digests)) != 1:
                raise RuntimeError(f"LoRA weights differ across ranks at step {step}: {digests}")
        if self.is_main:
            tr = self.unwrapped
            meta = L.adapter_metadata(tr, L.POLICY)
            pipe_cls = self.family.lora_pipeline_class()
            live = L.peft_state_dict(tr, L.POLICY)
            L.save_diffusers(tmp / "lora", live, meta, pipe_cls)
            L.save_peft(tmp / "lora_peft", live, tr.peft_config[L.POLICY], base_model_name_or_path=cfg.pretrained.model)
            formats = ["diffusers", "peft"]
            if self.wema is not None:
                with self.wema.swapped_in(self.policy_named):
                    ema_sd = L.peft_state_dict(tr, L.POLICY)
                formats.append("diffusers_ema")
            else:
                ema_sd = live  # train.ema=false: lora_ema holds the live weights (manifest says so)
            L.save_diffusers(tmp / "lora_ema", ema_sd, meta, pipe_cls)
            adapters = {n: p for n, p in tr.named_parameters() if "lora_" in n}
            C.save_tensors(tmp / "state" / "adapters.safetensors", adapters)
            wema_meta = None
            if self.wema is not None:
                st = self.wema.state_dict()
                C.save_tensors(tmp / "state" / "weight_ema.safetensors", st.pop("shadow"))
                wema_meta = st
            C.save_torch(tmp / "state" / "optimizer.pt", self.optimizer.state_dict())
            C.save_torch(tmp / "state" / "trainer_state.pt", {
                "global_step": step, "epoch": epoch, "next_epoch": next_epoch, "step_in_epoch": step_in_epoch,
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "weight_ema": wema_meta, "world_size": self.world, "config_hash": self.cfg_hash,
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "torch_version": str(torch.__version__),
            })
            # what was logged up to this step must be durable (sent, or spooled on disk) before the
            # checkpoint is: a job killed right after it (SLURM's SIGKILL KillWait seconds after a
            # requeue's SIGTERM) resumes AFTER this step and never logs its metrics again
            flush_metrics = getattr(self.logger, "flush_metrics", None)  # optional, like `on_resume`
            if flush_metrics is not None:
                flush_metrics()
            path = C.finalize(self.run_dir, step, epoch, config_hash=self.cfg_hash, formats=formats,
                              extra={"next_epoch": next_epoch, "step_in_epoch": step_in_epoch,
                                     "mid_epoch": step_in_epoch != 0, "world_size": self.world,
                                     "lora_ema": "weight_ema" if self.wema is not None else "live"})
            C.apply_retention(self.run_dir, keep_last=cfg.num_checkpoint_limit, keep_every=cfg.checkpoint_keep_every,
                              protect=path)
            self.logger.log_checkpoint(path / C.MANIFEST, step)
        acc.wait_for_everyone()
        self.last_checkpoint = C.step_dir(self.run_dir, step)
        return path

    def adapter_digest(self) -> str:
        """sha256 over every LoRA tensor (policy and "ema" adapters) of this process."""
        h = hashlib.sha256()
        for n, p in sorted(((n, p) for n, p in self.unwrapped.named_parameters() if "lora_" in n), key=lambda x: x[0]):
            h.update(n.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # ================================================================= loop
    def _stop_requested(self) -> bool:
        flag = bool(self.stop is not None and self.stop.is_set())
        if self.world > 1:  # every rank must agree, or the checkpoint barrier deadlocks

            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def _log(self, metrics: dict[str, float], step: int) -> None:
        self.final_metrics.update({k: float(v) for k, v in metrics.items()})
        self.logger.log_metrics(metrics, step)

    def run(self) -> TrainResult:
        with self.progress:
            return self._run()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        fresh = self.last_checkpoint is None
        if fresh and cfg.eval.at_start:
            self._log(self.evaluate(), self.global_step)
        n_local = self.topo.images_per_process
        epoch = self.next_epoch
        while epoch < cfg.num_epochs:
            t_epoch = time.perf_counter()
            epoch_metrics: dict[str, float] = {}
            if self.resume_buffer is not None and self.resume_buffer.epoch == epoch and self.step_in_epoch > 0:
                buf, first = self.resume_buffer, self.step_in_epoch
            else:
                buf, epoch_metrics = self.rollout(epoch)
                first = 0
            self.resume_buffer = None
            t_train = time.perf_counter()
            order = self._perm(epoch, self.rank, n_local)
            if first == 0:
                self.method.prepare_epoch(self, buf, order)
            counts = self._step_weights(buf, n_local)
            for s in range(first, self.topo.steps_per_epoch):
                metrics = self.train_step(buf, s, order, counts)
                last = s == self.topo.steps_per_epoch - 1
                if last:
                    metrics.update(self.method.end_epoch(self, epoch))
                if s == first:
                    metrics.update(epoch_metrics)
                if last:
                    now = time.perf_counter()
                    metrics["time/training"] = now - t_train
                    metrics["time/epoch"] = now - t_epoch
                    metrics["time/images_per_sec"] = self.topo.images_per_epoch / max(now - t_epoch, 1e-9)
                self._log(metrics, self.global_step)
                stop = self._stop_requested()
                if not last:
                    if stop:
                        self.save_checkpoint(epoch=epoch, next_epoch=epoch, step_in_epoch=s + 1, buffer=buf)
                        return self._result("interrupted", epoch)
                    continue
                done = epoch + 1
                if done % cfg.eval_freq == 0 or done == cfg.num_epochs:
                    self._log(self.evaluate(), self.global_step)
                self.sampler.next_epoch = done
                if done % cfg.save_freq == 0 or done == cfg.num_epochs or stop:
                    self.save_checkpoint(epoch=epoch, next_epoch=done, step_in_epoch=0, buffer=None)
                if stop and done < cfg.num_epochs:
                    return self._result("interrupted", done)
            epoch += 1
        return self._result("completed", epoch)

    def _result(self, status: str, epochs_done: int) -> TrainResult:
        return TrainResult(status=status, global_step=self.global_step, epoch=epochs_done,
                           last_checkpoint=self.last_checkpoint, final_metrics=dict(self.final_metrics))

    def close(self) -> None:
        for p in {id(x): x for x in (self.pool, self.eval_pool) if x is not None}.values():
            p.close()
        if self.logger is not None and self._owns_logger:
            self.logger.close()


def train(cfg: TrainerConfig, run_dir: str | Path, *, logger: MetricLogger | None = None,
          stop: StopSignal | None = None, cache_dir: Path | None = None) -> TrainResult:
    """Train (or resume) the run in ``run_dir``; see the module docstring and docs/contracts.md.

    ``cfg`` is a :class:`TrainerConfig` (the platform passes its ``ExperimentConfig``, which is one);
    ``cache_dir`` keeps generated prompt sets between runs (the platform passes ``$AWM_HOME/cache``)."""
    trainer = AWMTrainer(cfg, run_dir, logger=logger, stop=stop, cache_dir=cache_dir)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()
