"""What the AWM trainer reads: its config schema (upstream key names) and its batch arithmetic.

Design rules (see docs/contracts.md, "Config"):
- Key names and nesting follow upstream AWM (`pretrained.model`, `sample.*`, `train.*`,
  `reward_fn`, ...) so researchers can carry their configs over. Our own trainer sections
  are `lora` and `eval`.
- **Science quantities are primary, topology is derived.** The user states the group size
  (`sample.num_image_per_prompt`), prompts per epoch (`sample.prompts_per_epoch`) and
  optimizer steps per epoch (`train.steps_per_epoch`). Per-process batch, rounds per epoch
  and gradient accumulation follow from the world size at launch (`derive_topology`).
  Upstream's per-GPU keys may be pinned only when they agree with the science quantities.

The platform's experiment config (`ExperimentConfig`, platform/config.py) is a `TrainerConfig`
with the `launcher`, `tracking`, `storage` and `sweep` sections added; it also redacts secrets
in what the trainer records (`resolved`, `fingerprint`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from benchmarks.registry import REWARDS


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key, which file, why."""


class ConfigSection(BaseModel):
    """Base of every config section, the trainer's and the platform's: unknown keys are errors."""

    # allow_inf_nan=False: `.nan` / `.inf` pass range checks vacuously; say "must be a finite number"
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- model ----
class PretrainedConfig(ConfigSection):
    model: str = Field("stabilityai/stable-diffusion-3.5-medium", min_length=1,
                       description="local pipeline directory or hub id")
    revision: str = "main"
    family: Literal["auto", "sd3", "flux"] = Field(
        "auto", description="model-family adapter; auto = from the pipeline's model_index.json (_class_name: "
        "StableDiffusion3Pipeline -> sd3, FluxPipeline -> flux)")
    dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="inference dtype of the frozen text encoders and VAE")
    transformer_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="storage dtype of the frozen base transformer weights (the LoRA parameters and the "
        "optimizer stay fp32 whatever it is): fp32 as upstream AWM; bf16 as Flow-GRPO's FLUX (FLUX.1-dev's 12B "
        "parameters take 48 GB in fp32, 24 GB in bf16). Must equal mixed_precision when not fp32")
    guidance: float | None = Field(
        None, gt=0.0, le=100.0, description="distilled guidance g of a guidance-distilled model (FLUX.1-dev's "
        "guidance embedding), the same in rollouts, training and evaluation; None = 3.5 (Flow-GRPO's and "
        "DanceGRPO's value). Not classifier-free guidance (that is sample.guidance_scale); an error for "
        "models without a guidance embedding (SD3, FLUX.1-schnell)")


class LoraConfig(ConfigSection):
    type: Literal["attn", "ffn", "attn_ffn"] = Field(
        "attn", description="upstream target sets: attn (AWM's SD3 set), ffn, attn_ffn (Flow-GRPO's FLUX set)")
    rank: int = Field(32, ge=1, le=1024)
    alpha: float = Field(64.0, gt=0)
    init: Literal["gaussian", "default"] = Field(
        "gaussian", description="PEFT init of A (B starts at zero either way): gaussian (upstream) or kaiming")
    target_modules: list[str] | None = Field(
        None, description="explicit PEFT target modules; None = upstream set for `type`")
    include_attn2: bool = Field(
        False, description="also adapt SD3.5's second attention (attn2) in dual-attention blocks")


class SampleConfig(ConfigSection):
    num_steps: int = Field(14, ge=1, le=1000)
    eval_num_steps: int = Field(40, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=1.0)
    # science quantities
    num_image_per_prompt: int = Field(24, ge=1, description="group size k")
    prompts_per_epoch: int = Field(72, ge=1, description="prompts m per epoch (images = m*k)")
    # memory knob: the largest rollout batch one process runs at once
    max_batch_size_per_gpu: int = Field(6, ge=1)
    max_images_per_epoch: int = Field(
        100_000, ge=1, description="ceiling on prompts_per_epoch x num_image_per_prompt (catches typos such as "
                                   "1e11 before they exhaust memory); raise it for a deliberately larger epoch")
    # derived (upstream per-GPU keys): may be pinned only when consistent
    train_batch_size: int | None = Field(None, ge=1, description="derived: images per process per round")
    num_batches_per_epoch: int | None = Field(None, ge=1, description="derived: rounds per epoch")
    test_batch_size: int = Field(6, ge=1)
    noise_level: float = Field(0.4, ge=0.0, le=5.0)
    noise_window: tuple[float, float] = (0.3, 0.9)
    sde_frac: float = Field(0.0, ge=0.0, le=1.0)
    global_std: bool = True
    zero_std_policy: Literal["keep", "drop"] = "keep"
    max_sequence_length: int = Field(128, ge=1, le=512)

    @field_validator("noise_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got {list(v)}")
        return v


class TrainConfig(ConfigSection):
    batch_size: int = Field(3, ge=1, description="samples per micro-batch (memory knob)")
    steps_per_epoch: int = Field(1, ge=1, description="optimizer steps per epoch (1 = on-policy)")
    gradient_accumulation_steps: int | None = Field(None, ge=1, description="derived; pin only if consistent")
    num_batches_per_epoch: int | None = Field(None, ge=1, description="derived: micro-batches per process")
    train_timesteps: int = Field(6, ge=1, le=1000)
    timestep_fraction: float = Field(0.9, gt=0.0, le=1.0)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    adam_weight_decay: float = Field(1e-4, ge=0.0)
    adam_epsilon: float = Field(1e-8, gt=0.0)
    use_8bit_adam: bool = False
    max_grad_norm: float = Field(1.0, gt=0.0)
    lr_scheduler: Literal["cosine_then_constant", "constant"] = "cosine_then_constant"
    decay_steps: float = Field(1e10, gt=0)
    beta: float = Field(0.001, ge=0.0, description="KL-to-reference coefficient")
    kl_weight: Literal["Uniform", "ELBO"] = "Uniform"
    ema_beta: float = Field(1.0, ge=0.0, description="KL-EMA coefficient")
    kl_ema_weight: Literal["Uniform", "ELBO"] = "Uniform"
    kl_ema_decay: float = Field(0.3, ge=0.0, le=1.0)
    kl_ema_decay_type: Literal["linear", "constant"] = "linear"
    clip_range: float = Field(1.0, gt=0.0)
    adv_clip_max: float = Field(5.0, gt=0.0)
    advantage_max: float = Field(1.0, gt=0.0)
    loss_type: Literal["exp_first", "sum_first"] = "exp_first"
    weighting: Literal["Uniform", "t", "t**2", "huber", "ghuber"] = "ghuber"
    ghuber_power: float = Field(0.25, gt=0.0, le=1.0)
    cfg: bool = False
    ema: bool = True
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    ema_update_step_interval: int = Field(1, ge=1)
    off_policy: bool = False
    use_sa_solver: bool = True
    gradient_checkpointing: bool = Field(
        False, description="recompute the transformer blocks' activations in the backward pass (memory for "
        "compute: about one more forward per trained pass); needed for FLUX.1-dev at 512 px with larger micro-batches")
    lora_path: str | None = None
    lora_path_step: int | None = Field(
        None, ge=0, description="global step the lora_path weights were trained for: the KL-EMA and weight-EMA "
        "ramps continue from it, as upstream. None = read it from the checkpoint (step-<N>/manifest.json, or "
        "upstream's checkpoint-<S>/ folder); 0 = start the ramps afresh")

    @model_validator(mode="after")
    def _lora_path_step_needs_path(self) -> TrainConfig:
        if self.lora_path_step is not None and not self.lora_path:
            raise ValueError("train.lora_path_step is set but train.lora_path is not; set both or neither")
        return self

    @field_validator("cfg")
    @classmethod
    def _no_cfg(cls, v: bool) -> bool:
        if v:
            raise ValueError("CFG in training is not supported (upstream's train.cfg=True is broken, "
                             "see trainers/awm/README.md); use sample.guidance_scale for rollouts")
        return v


class EvalConfig(ConfigSection):
    split: Literal["test", "train"] = "test"
    max_prompts: int | None = Field(None, ge=1, description="None = the whole prompt set")
    seed: int = Field(0, ge=0, description="per-prompt eval seeds derive from this")
    ema: bool = Field(True, description="also evaluate the weight-EMA LoRA")
    at_start: bool = Field(True, description="evaluate at step 0 (upstream has no baseline)")
    rewards: dict[str, float] | None = Field(None, description="None = reward_fn")
    guidance_scale: float | None = Field(
        None, ge=1.0, le=100.0, allow_inf_nan=False,
        description="CFG scale of in-loop evaluation; None = sample.guidance_scale, which is what upstream "
        "evaluates with (1.0 in AWM's configs; Flow-GRPO-style evaluation: 4.5)")


# ------------------------------------------------------------------------ trainer ----
class TrainerConfig(ConfigSection):
    """Everything the trainer reads. `launcher.world_size` is not here: the launcher's world size
    is passed to `derive_topology` explicitly."""

    name: str = Field("awm-run", validation_alias=AliasChoices("name", "run_name"))
    seed: int = Field(42, ge=0)
    pretrained: PretrainedConfig = Field(default_factory=PretrainedConfig)
    resolution: int = Field(512, ge=8, le=4096)
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    allow_tf32: bool = True
    num_epochs: int = Field(100, ge=1)
    save_freq: int = Field(20, ge=1)
    eval_freq: int = Field(20, ge=1)
    num_checkpoint_limit: int = Field(5, ge=1, description="keep the last N checkpoints")
    checkpoint_keep_every: int = Field(0, ge=0, description="also keep every K-th step (0 = off)")
    dataset: str = Field("pickscore", description="builtin prompt set (pickscore, ocr, geneval, tiny) or a directory")
    prompt_fn: Literal["general_ocr", "geneval"] = "general_ocr"
    per_prompt_stat_tracking: bool = True
    time_type: Literal["discrete_wo_init", "discrete", "discrete_with_init", "uniform", "logit_normal"] = "discrete_wo_init"
    time_shift: float = Field(3.0, gt=0.0)
    reward_fn: dict[str, float] = Field(
        default_factory=lambda: {"jpeg_compressibility": 1.0},
        validation_alias=AliasChoices("reward_fn", "rewards"))
    reward_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("reward_fn")
    @classmethod
    def _rewards(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one reward is required, e.g. {jpeg_compressibility: 1.0}")
        unknown = sorted(n for n in v if n not in REWARDS and ":" not in n)
        if unknown:
            close = {n: difflib.get_close_matches(n, list(REWARDS), n=1) for n in unknown}
            hints = "; ".join(f"'{n}'" + (f" (did you mean '{c[0]}'?)" if c else "") for n, c in close.items())
            raise ValueError(f"unknown reward {hints}; known: {', '.join(sorted(REWARDS))}, "
                             "or a custom 'package.module:factory'")
        return v

    @model_validator(mode="after")
    def _science(self) -> TrainerConfig:
        k = self.sample.num_image_per_prompt
        images = self.sample.prompts_per_epoch * k
        if images > self.sample.max_images_per_epoch:
            raise ValueError(
                f"sample.prompts_per_epoch x sample.num_image_per_prompt = {self.sample.prompts_per_epoch} x {k} "
                f"= {images} images per epoch exceeds sample.max_images_per_epoch={self.sample.max_images_per_epoch}; "
                "raise sample.max_images_per_epoch if you mean it")
        if self.per_prompt_stat_tracking and k < 2:
            raise ValueError(
                "sample.num_image_per_prompt=1 with per_prompt_stat_tracking=true: a group of one "
                "image has zero std and every advantage is 0; use >= 2 or disable per-prompt stats")
        td = self.pretrained.transformer_dtype
        if td != "fp32" and self.mixed_precision != td:
            raise ValueError(
                f"pretrained.transformer_dtype={td} needs mixed_precision={td} (a {td} transformer computes under "
                f"{td} autocast; mixed_precision is {self.mixed_precision!r})")
        unknown = set(self.reward_kwargs) - set(self.reward_fn) - set(self.eval.rewards or {})
        if unknown:
            raise ValueError(f"reward_kwargs has options for rewards not in reward_fn: {sorted(unknown)}")
        return self

    # what the trainer records (run_dir/config.resolved.json, checkpoint manifests)
    def resolved(self, world_size: int) -> dict[str, Any]:
        """The config as it runs: every default filled in, plus the `derived` topology.

        The trainer has no notion of secrets: `ExperimentConfig` (the platform's config, what the
        platform always passes) overrides this to redact them and to add its own derived values."""
        data = self.model_dump(mode="json")
        data["derived"] = derive_topology(self, world_size).model_dump()
        return data

    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of the canonical JSON of the config; checkpoint manifests record it.
        `ExperimentConfig` overrides it (secrets redacted first) so it equals the platform's config hash."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- topology ----
class Topology(BaseModel):
    """Per-process sizes derived from the science quantities and the world size.

    One epoch: the trainer draws `prompts_per_epoch` prompts from its seeded RNG, repeats
    each `num_image_per_prompt` times (complete groups), shuffles the m*k items with the
    same RNG and deals `images_per_process` of them to each process, which samples them in
    `sample_num_batches_per_epoch` rounds of `sample_train_batch_size`. Advantages use the
    rewards gathered over all processes, so groups may be spread over processes and rounds.
    The update splits each process's images into `train_num_batches_per_epoch` micro-batches
    of `train.batch_size`; every `gradient_accumulation_steps` micro-batches make one
    optimizer step (`steps_per_epoch` per epoch). `images_per_update` does not depend on
    the world size.
    """

    model_config = ConfigDict(frozen=True)

    world_size: int
    images_per_epoch: int
    images_per_process: int
    sample_train_batch_size: int
    sample_num_batches_per_epoch: int
    train_batch_size: int
    train_num_batches_per_epoch: int
    gradient_accumulation_steps: int
    steps_per_epoch: int
    images_per_update: int


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def derive_topology(cfg: TrainerConfig, world_size: int) -> Topology:
    """The trainer's batch arithmetic at `world_size` processes; impossible combinations raise ConfigError."""
    w = world_size
    if w < 1:
        raise ConfigError(f"world size must be >= 1, got {w}")
    s, t = cfg.sample, cfg.train
    images = s.prompts_per_epoch * s.num_image_per_prompt
    if images % w:
        raise ConfigError(
            f"sample.prompts_per_epoch x sample.num_image_per_prompt = {s.prompts_per_epoch} x "
            f"{s.num_image_per_prompt} = {images} images per epoch is not divisible by the world size {w}")
    per_proc = images // w
    if s.train_batch_size is not None:
        if per_proc % s.train_batch_size:
            raise ConfigError(
                f"sample.train_batch_size={s.train_batch_size} (pinned) does not divide the "
                f"{per_proc} images each of {w} processes samples per epoch")
        rollout_bs = s.train_batch_size
    else:
        rollout_bs = _largest_divisor_at_most(per_proc, s.max_batch_size_per_gpu)
    rounds = per_proc // rollout_bs
    if s.num_batches_per_epoch is not None and s.num_batches_per_epoch != rounds:
        raise ConfigError(
            f"sample.num_batches_per_epoch={s.num_batches_per_epoch} (pinned) disagrees with the derived "
            f"{rounds} rounds ({per_proc} images per process / batch {rollout_bs}) at world size {w}")
    if per_proc % t.batch_size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} does not divide the {per_proc} images per process per "
            f"epoch (world size {w}); choose a divisor of {per_proc}")
    micro = per_proc // t.batch_size
    if t.num_batches_per_epoch is not None and t.num_batches_per_epoch != micro:
        raise ConfigError(
            f"train.num_batches_per_epoch={t.num_batches_per_epoch} (pinned) disagrees with the derived "
            f"{micro} micro-batches per process at world size {w}")
    if micro % t.steps_per_epoch:
        raise ConfigError(
            f"train.steps_per_epoch={t.steps_per_epoch} does not divide the {micro} micro-batches per "
            f"process per epoch (world size {w}): gradient accumulation would not be an integer")
    accum = micro // t.steps_per_epoch
    if t.gradient_accumulation_steps is not None and t.gradient_accumulation_steps != accum:
        raise ConfigError(
            f"train.gradient_accumulation_steps={t.gradient_accumulation_steps} (pinned) disagrees with "
            f"the derived {accum} at world size {w}")
    return Topology(
        world_size=w, images_per_epoch=images, images_per_process=per_proc,
        sample_train_batch_size=rollout_bs, sample_num_batches_per_epoch=rounds,
        train_batch_size=t.batch_size, train_num_batches_per_epoch=micro,
        gradient_accumulation_steps=accum, steps_per_epoch=t.steps_per_epoch,
        images_per_update=images // t.steps_per_epoch,
    )
