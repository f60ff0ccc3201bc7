"""The experiment spec: pydantic models, YAML loading with dotted overrides, derived topology.

Design rules (see docs/architecture.md):
- Key names and nesting follow upstream AWM (`pretrained.model`, `sample.*`, `train.*`,
  `reward_fn`, ...) so researchers can carry their configs over. Our own sections are
  `lora`, `eval`, `launcher`, `tracking`, `storage`, `sweep`.
- **Science quantities are primary, topology is derived.** The user states the group size
  (`sample.num_image_per_prompt`), prompts per epoch (`sample.prompts_per_epoch`) and
  optimizer steps per epoch (`train.steps_per_epoch`). Per-process batch, rounds per epoch
  and gradient accumulation follow from the world size at launch (`derive_topology`).
  Upstream's per-GPU keys may be pinned only when they agree with the science quantities.
- Every error names the file, the dotted key, the reason (and the closest valid key for
  unknown keys, the allowed range for out-of-range values).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from awm_platform import redaction as _redaction
from awm_platform.sweeps.spec import SweepSpec


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key, which file, why."""


class _Section(BaseModel):
    # allow_inf_nan=False: `.nan` / `.inf` pass range checks vacuously; say "must be a finite number"
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- model ----
class PretrainedConfig(_Section):
    model: str = Field("stabilityai/stable-diffusion-3.5-medium", min_length=1,
                       description="local pipeline directory or hub id")
    revision: str = "main"
    family: Literal["sd3"] = Field("sd3", description="model-family adapter (FLUX plugs in here)")
    dtype: Literal["fp32", "fp16", "bf16"] = Field(
        "fp16", description="inference dtype of the frozen text encoders and VAE")


class LoraConfig(_Section):
    type: Literal["attn", "ffn"] = "attn"
    rank: int = Field(32, ge=1, le=1024)
    alpha: float = Field(64.0, gt=0)
    init: Literal["gaussian", "default"] = Field(
        "gaussian", description="PEFT init of A (B starts at zero either way): gaussian (upstream) or kaiming")
    target_modules: list[str] | None = Field(
        None, description="explicit PEFT target modules; None = upstream set for `type`")
    include_attn2: bool = Field(
        False, description="also adapt SD3.5's second attention (attn2) in dual-attention blocks")


class SampleConfig(_Section):
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


class TrainConfig(_Section):
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


class EvalConfig(_Section):
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


# ------------------------------------------------------------------------ platform ----
class LauncherConfig(_Section):
    cluster: Literal["local", "debug", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = Field(1, ge=1, le=1024)
    gpus_per_node: int = Field(1, ge=1, le=64, description="processes per node (GPUs; CPU processes locally)")
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    time_min: int = Field(60, ge=1, description="wall-clock limit in minutes")
    constraint: str | None = None
    extra_sbatch: list[str] = Field(default_factory=list, description="extra '#SBATCH' lines, without the prefix")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job")
    signal_delay_s: int = Field(120, ge=1, description="SIGUSR2 this long before the time limit")
    max_requeues: int = Field(3, ge=0, description="time-outs survived by requeueing (submitit's max_num_timeout); "
                              "preemptions are always requeued and not counted (docs/runner.md)")
    array_parallelism: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _signal_before_limit(self) -> LauncherConfig:
        # SLURM may deliver --signal up to 60 s early; a delay >= the limit fires at start-up
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"launcher.signal_delay_s={self.signal_delay_s} must be shorter than the time limit "
                f"(launcher.time_min={self.time_min} min = {self.time_min * 60} s)")
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class TrackingConfig(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; None = $MLFLOW_TRACKING_URI or embedded sqlite")
    experiment: str = Field("awm", min_length=1)
    log_lora: Literal["artifact", "path"] = "path"
    parent_run_id: str | None = None


class StorageConfig(_Section):
    url: str | None = Field(None, description="platform DB URL; None = sqlite:///$AWM_HOME/awm.db")


# -------------------------------------------------------------------- experiment ----
class ExperimentConfig(_Section):
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
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sweep: SweepSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from awm_platform.paths import validate_run_name

        return validate_run_name(v)

    @field_validator("reward_fn")
    @classmethod
    def _rewards(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one reward is required, e.g. {jpeg_compressibility: 1.0}")
        from trainers.awm.rewards import REGISTRY  # name -> "module:factory"; importing it loads no model

        unknown = sorted(n for n in v if n not in REGISTRY and ":" not in n)
        if unknown:
            close = {n: difflib.get_close_matches(n, list(REGISTRY), n=1) for n in unknown}
            hints = "; ".join(f"'{n}'" + (f" (did you mean '{c[0]}'?)" if c else "") for n, c in close.items())
            raise ValueError(f"unknown reward {hints}; known: {', '.join(sorted(REGISTRY))}, "
                             "or a custom 'package.module:factory'")
        return v

    @model_validator(mode="after")
    def _science(self) -> ExperimentConfig:
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
        unknown = set(self.reward_kwargs) - set(self.reward_fn) - set(self.eval.rewards or {})
        if unknown:
            raise ValueError(f"reward_kwargs has options for rewards not in reward_fn: {sorted(unknown)}")
        if self.train.off_policy and not self.train.ema_beta and self.train.kl_ema_decay == 0:
            # the EMA adapter is the behaviour policy off-policy; it must be a lagged copy
            pass
        if self.sweep is not None:
            self.sweep.validate_against(self)
        return self

    # convenience
    def topology(self, world_size: int | None = None) -> Topology:
        return derive_topology(self, world_size)


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


def derive_topology(cfg: ExperimentConfig, world_size: int | None = None) -> Topology:
    w = cfg.launcher.world_size if world_size is None else world_size
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


# ------------------------------------------------------------------------ loading ----
def _yaml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML document to its 1-based line number."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)

    if root is not None:
        walk(root, ())
    return lines


def _valid_keys_at(loc: tuple[str | int, ...]) -> list[str]:
    model: type[BaseModel] | None = ExperimentConfig
    for part in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None) \
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)) else ann
    if model is None:
        return []
    keys = list(model.model_fields)
    for f in model.model_fields.values():
        if isinstance(f.validation_alias, AliasChoices):
            keys += [c for c in f.validation_alias.choices if isinstance(c, str)]
    return sorted(set(keys))


def _top_level_aliases() -> dict[str, str]:
    """Every accepted spelling of a top-level key -> its field name (`run_name` -> `name`)."""
    out: dict[str, str] = {}
    for field_name, f in ExperimentConfig.model_fields.items():
        out[field_name] = field_name
        if isinstance(f.validation_alias, AliasChoices):
            out.update({c: field_name for c in f.validation_alias.choices if isinstance(c, str)})
    return out


_RANGE_WORDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _format_errors(err: ValidationError, source: str, key_lines: dict[tuple[str, ...], int]) -> str:
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc) or "<root>"
        where = source
        for n in range(len(loc), 0, -1):
            if loc[:n] in key_lines:
                where = f"{source}:{key_lines[loc[:n]]}"
                break
        if e["type"] == "extra_forbidden":
            valid = _valid_keys_at(e["loc"])
            canonical = _top_level_aliases().get(loc[-1]) if len(loc) == 1 else None
            if canonical is not None:  # a second spelling of a key that is already set (name + run_name)
                spellings = sorted(k for k, v in _top_level_aliases().items() if v == canonical)
                out.append(f"{where}: '{dotted}' and another spelling of the same key are both set "
                           f"({' / '.join(spellings)}); keep one")
                continue
            close = difflib.get_close_matches(loc[-1], [k for k in valid if k != loc[-1]], n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
            out.append(f"{where}: unknown key '{dotted}'{hint} (valid keys here: {', '.join(valid)})")
        elif e["type"] == "finite_number":
            out.append(f"{where}: '{dotted}' must be a finite number, got {e.get('input')!r}")
        elif e["type"] in _RANGE_WORDS:
            bound = next(iter(e.get("ctx", {}).values()), "?")
            out.append(f"{where}: '{dotted}' must be {_RANGE_WORDS[e['type']]} {bound}, got {e.get('input')!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f", got {e.get('input')!r}" if e["type"] not in ("value_error", "missing") else ""
            out.append(f"{where}: '{dotted}': {msg}{got}" if loc else f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(out)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.beta=0.003` -> (["train", "beta"], 0.003). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    aliases = _top_level_aliases()
    for item in overrides:
        parts, value = parse_override(item)
        canonical = aliases.get(parts[0])
        if canonical is not None:  # `--set run_name=x` overrides `name:` of the file (one key, two spellings)
            for spelling in [k for k, v in aliases.items() if v == canonical and k != canonical]:
                if spelling in data and canonical not in data:
                    data[canonical] = data.pop(spelling)
            parts[0] = canonical
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


# A config FILE must state these: their defaults (SD3.5-M, a JPEG reward) are no sensible guess,
# and an empty file would otherwise validate and launch 1,728 SD3.5-M images per update.
# Programmatic configs (`config_from_dict`, job specs) keep the defaults.
REQUIRED_KEYS: dict[str, str] = {
    "pretrained.model": "a local diffusers pipeline folder or a hub id",
    "reward_fn": "e.g. reward_fn: {jpeg_compressibility: 1.0}",
}


def _missing_required(data: dict[str, Any], required: dict[str, str]) -> list[str]:
    aliases = _top_level_aliases()
    missing = []
    for dotted, hint in required.items():
        head, *rest = dotted.split(".")
        node: Any = next((data[k] for k, v in aliases.items() if v == head and k in data), None)
        for part in rest:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(f"missing required key '{dotted}' ({hint})")
    return missing


def config_from_dict(data: dict[str, Any], *, source: str = "<config>", text: str = "",
                     world_size: int | None = None, required: dict[str, str] | None = None) -> ExperimentConfig:
    missing = [f"{source}: {m}" for m in _missing_required(data, required or {})]
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, _yaml_key_lines(text)) + "".join(f"\n  {m}" for m in missing)) \
            from None
    if missing:
        raise ConfigError("invalid config:\n  " + "\n  ".join(missing))
    derive_topology(cfg, world_size)  # impossible combinations fail before anything is submitted
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                world_size: int | None = None) -> ExperimentConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give the config's YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "is this a YAML config?") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config_from_dict(data, source=str(path), text=text, world_size=world_size, required=REQUIRED_KEYS)


# --------------------------------------------------------------- resolve and hash ----
# Secret rules live in awm_platform.redaction (docs/runner.md, "Secrets"); re-exported here.
REDACTED = _redaction.REDACTED
redact = _redaction.redact


def resolved_config(cfg: ExperimentConfig, world_size: int | None = None) -> dict[str, Any]:
    """The config as it will run: every default filled in, derived values, secrets redacted."""
    data = redact(cfg.model_dump(mode="json"))
    data["derived"] = derive_topology(cfg, world_size).model_dump()
    # the raw setup lines stay in the 0600 job files; a hash tells runs with different ones apart
    data["derived"]["setup_hash"] = _redaction.setup_hash(cfg.launcher.setup)
    return data


def config_hash(cfg: ExperimentConfig) -> str:
    canonical = json.dumps(redact(cfg.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'beta': 1}} -> {'train.beta': 1} (lists and None kept as values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node
