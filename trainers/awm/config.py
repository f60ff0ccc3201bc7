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
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from benchmarks.registry import REWARDS

AUTO_FAMILY = "auto"  # pretrained.family: detect from model_index.json
# model_index.json `_class_name` -> family (`pretrained.family: auto`)
PIPELINE_FAMILIES: dict[str, str] = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}


def family_of_local_model(family: str, model: str) -> str:
    """`family`, with `auto` resolved from a local pipeline folder's model_index.json (no download, no
    torch): what an evaluation spec records, so `auto` and the family it detects hash alike. What cannot
    be read here (a hub id, a folder this host does not see) stays `auto`: the model loader decides."""
    if family != AUTO_FAMILY:
        return family
    try:
        index = json.loads((Path(model).expanduser() / "model_index.json").read_text())
    except (OSError, ValueError):
        return family
    return PIPELINE_FAMILIES.get(str(index.get("_class_name", "")), family) if isinstance(index, dict) else family


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key, which file, why."""


# --------------------------------------------------------------------------- methods ----
# One trainer loop, several methods (trainers/awm/methods/base.py is the seam). Keys keep each
# upstream's names in the shared sections (Flow-GRPO's train.clip_range is AWM's key of the same
# name); what a method reads and its defaults for shared keys are declared here, as data, so the
# config validates without importing torch.
MethodName = Literal["awm", "flow_grpo", "diffusionnft", "advantageflow"]
#: dotted keys that only some methods read -> those methods; every key not listed is read by all.
#: Setting a listed key to a non-default value under a method that does not read it is an error.
METHOD_ONLY_KEYS: dict[str, frozenset[str]] = {
    # AWM's surrogate, its times and its KL-EMA adapter
    "time_type": frozenset({"awm"}),
    "time_shift": frozenset({"awm"}),
    "train.train_timesteps": frozenset({"awm"}),
    "train.weighting": frozenset({"awm"}),
    "train.ghuber_power": frozenset({"awm"}),
    "train.loss_type": frozenset({"awm"}),
    "train.kl_weight": frozenset({"awm"}),
    "train.ema_beta": frozenset({"awm"}),
    "train.kl_ema_weight": frozenset({"awm"}),
    "train.kl_ema_decay": frozenset({"awm"}),
    "train.kl_ema_decay_type": frozenset({"awm"}),
    "train.off_policy": frozenset({"awm"}),
    "train.use_sa_solver": frozenset({"awm"}),
    "train.advantage_max": frozenset({"awm"}),
    "sample.noise_window": frozenset({"awm"}),
    "sample.sde_frac": frozenset({"awm"}),
    # shared by the two reverse/forward samplers that inject noise
    "sample.noise_level": frozenset({"awm", "flow_grpo"}),
    "train.clip_range": frozenset({"awm", "flow_grpo"}),
    # Flow-GRPO only (objectives.md section 1)
    "sample.sde_type": frozenset({"flow_grpo"}),
    "sample.sde_window_size": frozenset({"flow_grpo"}),
    "sample.sde_window_range": frozenset({"flow_grpo"}),
    "train.cfg": frozenset({"flow_grpo"}),
    # DiffusionNFT (section 2) and AdvantageFlow (section 3, derived): the old adapter and their losses
    "train.nft_beta": frozenset({"diffusionnft"}),
    "train.old_decay_type": frozenset({"diffusionnft", "advantageflow"}),
    "train.af_lambda": frozenset({"advantageflow"}),
    "train.af_weighting": frozenset({"advantageflow"}),
}
#: how a method is shown (leaderboard column, checkpoint page): AdvantageFlow's loss is derived in
#: objectives.md section 3, not the paper's code, and says so wherever it is shown
METHOD_LABELS: dict[str, str] = {"advantageflow": "advantageflow (derived)"}


def method_label(method: str) -> str:
    """The display name of a method (``advantageflow (derived)``; the others as they are)."""
    return METHOD_LABELS.get(method, method)


# objectives.md 2.4 (NVlabs/DiffusionNFT config/nft.py): 10 rollout steps, J = int(10 * 0.99) = 9,
# beta_KL 1e-4, weight EMA 0.9
_NFT_DEFAULTS: dict[str, Any] = {"sample.num_steps": 10, "train.timestep_fraction": 0.99, "train.beta": 1e-4,
                                 "train.ema_decay": 0.9}
#: each method's defaults for shared keys (objectives.md section 1.5 for Flow-GRPO), applied where
#: the config does not set the key; the schema defaults below are AWM's
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "awm": {},
    "flow_grpo": {"sample.num_steps": 10, "sample.noise_level": 0.7, "train.clip_range": 1e-4,
                  "train.timestep_fraction": 0.99, "train.beta": 0.04, "train.steps_per_epoch": 2,
                  "sample.zero_std_policy": "drop", "train.ema_decay": 0.9, "train.ema_update_step_interval": 8},
    "diffusionnft": _NFT_DEFAULTS,
    "advantageflow": _NFT_DEFAULTS,  # it reuses NFT's (section 3.4, derived)
}


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
    # Flow-GRPO (method=flow_grpo): the rollout's SDE (objectives.md section 1.1)
    sde_type: Literal["sde", "cps"] = Field(
        "sde", description="flow_grpo: Euler-Maruyama SDE with Gaussian log-probs (sde) or the CPS step (cps)")
    sde_window_size: int = Field(
        0, ge=0, description="flow_grpo: Flow-GRPO-Fast's SDE window W (steps outside it are ODE and not "
        "trained); 0 = SDE at every step, the first int(num_steps * timestep_fraction) trained")
    sde_window_range: tuple[int, int] | None = Field(
        None, description="flow_grpo: the window starts at a uniform integer in [low, high - W] (inclusive, "
        "upstream's random.randint); None = (0, num_steps - 1), so the last step is never trained")

    @field_validator("noise_window")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _sde_window(self) -> SampleConfig:
        if self.sde_window_range is not None and not self.sde_window_size:
            raise ValueError(f"sample.sde_window_range={list(self.sde_window_range)} is read only with a Fast window: "
                             "set sample.sde_window_size > 0, or remove sample.sde_window_range")
        if self.sde_window_size:
            lo, hi = self.sde_window_range if self.sde_window_range is not None else (0, self.num_steps - 1)
            if not (0 <= lo and hi - self.sde_window_size >= lo and hi <= self.num_steps):
                raise ValueError(
                    f"sample.sde_window_range={[lo, hi]} with sample.sde_window_size={self.sde_window_size}: need "
                    f"0 <= low <= high - size and high <= sample.num_steps={self.num_steps}")
        return self


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
    cfg: bool = Field(False, description="flow_grpo: CFG (sample.guidance_scale) in the training forwards, as in "
                      "its rollouts; AWM refuses it (upstream's train.cfg=True is broken)")
    ema: bool = True
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    ema_update_step_interval: int = Field(1, ge=1)
    off_policy: bool = False
    # DiffusionNFT / AdvantageFlow (objectives.md sections 2, 3)
    nft_beta: float = Field(
        1.0, gt=0.0, le=100.0, description="diffusionnft: mixing coefficient of the implicit policies "
        "v+ = beta v + (1 - beta) v_old, v- = (1 + beta) v_old - beta v (upstream config.beta: 1.0; OCR 0.1). "
        "Not the KL coefficient, which is train.beta for every method (upstream config.train.beta, trap 11)")
    old_decay_type: Literal[0, 1, 2] = Field(
        1, description="diffusionnft, advantageflow: schedule of the old (rollout) adapter update "
        "old <- d old + (1 - d) theta after each epoch (upstream decay_type): 0 d = 0; 1 d = min(0.001 step, 0.5); "
        "2 (NFT OCR) d = 0 for step < 75, then min(0.0075 (step - 75), 0.999)")
    af_lambda: float = Field(
        2.0, gt=1.0, le=1000.0, description="advantageflow (derived, not the paper's code): weight lambda of the "
        "rollout-policy regulariser lambda ||v - v_old||^2; must exceed max |A~| = 1 so that every sample's "
        "loss is convex (objectives.md 3.2, trap 13); suggested sweep 1.25, 2, 4")
    af_weighting: Literal["velocity", "x0", "nft_adaptive"] = Field(
        "x0", description="advantageflow (derived, not the paper's code): time weight w(t) of the loss: velocity "
        "(1), x0 (t^2: least squares on the x0 prediction), nft_adaptive (t^2 / sg(mean |x0_hat - x0|))")
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
    method: MethodName = Field(
        "awm", description="training method: awm (default), flow_grpo, diffusionnft, advantageflow (derived). "
        "Keys only other methods read are errors (METHOD_ONLY_KEYS)")
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

    @model_validator(mode="before")
    @classmethod
    def _method_keys(cls, data: Any) -> Any:
        """Refuse keys the method does not read; fill the method's defaults."""
        if not isinstance(data, dict):
            return data
        method = data.get("method", "awm")
        if not isinstance(method, str) or method not in _METHOD_NAMES:
            return data  # a wrong type or an unknown name: the Literal field reports it
        errors = []
        for key, readers in METHOD_ONLY_KEYS.items():
            found, value = _raw_get(data, key)
            if not found or method in readers or _is_default(key, value):
                continue
            errors.append(f"'{key}' is not read by method={method} (only by {', '.join(sorted(readers))})"
                          f"{_closest_for(method, key)}")
        if method == "flow_grpo":
            errors += _fast_window_fraction_errors(data)
        if errors:
            raise ValueError("; ".join(errors))
        defaults = METHOD_DEFAULTS.get(method, {})
        if defaults:
            data = _with_defaults(data, defaults)
        return data

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
        if self.method in ("diffusionnft", "advantageflow") and self.sample.guidance_scale > 1.0:
            # their old-adapter rollouts and training forwards are both CFG-free (objectives 2.2, 3.4): a CFG
            # rollout would not be the policy v_old the loss regularises toward
            raise ValueError(f"method={self.method} rolls out and trains without CFG: sample.guidance_scale must "
                             f"be 1.0, got {self.sample.guidance_scale} (eval.guidance_scale may differ)")
        if self.method == "flow_grpo" and self.sample.guidance_scale > 1.0 and not self.train.cfg:
            # the rollout's log-probs are those of the CFG velocity: a training forward without CFG would
            # make the ratio differ from 1 even on-policy, and the clip would eat the signal
            raise ValueError(f"method=flow_grpo with sample.guidance_scale={self.sample.guidance_scale} needs "
                             "train.cfg=true (the training forwards must recompute the rollout's CFG velocity); "
                             "or set sample.guidance_scale: 1.0")
        if self.method == "flow_grpo" and trained_steps(self.sample.num_steps, self.train.timestep_fraction,
                                                        self.sample.sde_window_size) < 1:
            raise ValueError(f"method=flow_grpo trains int(sample.num_steps * train.timestep_fraction) = "
                             f"int({self.sample.num_steps} * {self.train.timestep_fraction}) = 0 transitions: "
                             "raise either")
        if self.train.cfg and self.sample.guidance_scale <= 1.0:
            raise ValueError("train.cfg=true needs sample.guidance_scale > 1 (the CFG scale of the rollouts, "
                             "used in training as well)")
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


_METHOD_NAMES: tuple[str, ...] = get_args(MethodName)
_SECTIONS: dict[str, type[BaseModel]] = {"sample": SampleConfig, "train": TrainConfig, "lora": LoraConfig,
                                         "pretrained": PretrainedConfig, "eval": EvalConfig}


def _raw_get(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if isinstance(node, BaseModel):
            if part not in node.model_fields_set:
                return False, None
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _field(key: str):
    parts = key.split(".")
    model = _SECTIONS[parts[0]] if len(parts) == 2 else TrainerConfig
    return model.model_fields[parts[-1]]


def _is_default_value(value: Any, default: Any) -> bool:
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):  # 10 == 10.0, but True != 1
        return isinstance(value, bool) == isinstance(default, bool) and value == default
    def norm(v: Any) -> str:
        return json.dumps(list(v) if isinstance(v, tuple) else v, sort_keys=True)

    try:
        return norm(value) == norm(default)
    except TypeError:
        return False


def _is_default(key: str, value: Any) -> bool:
    """A key at its schema default (e.g. in a dumped config of another method) is not "set"."""
    return _is_default_value(value, _field(key).get_default(call_default_factory=True))


def trained_steps(num_steps: int, timestep_fraction: float, window_size: int) -> int:
    """Flow-GRPO's J: trained transitions per sample (int(N * timestep_fraction), or W with a Fast window)."""
    return window_size if window_size > 0 else int(num_steps * timestep_fraction)


def _fast_window_fraction_errors(data: dict[str, Any]) -> list[str]:
    """Flow-GRPO-Fast trains the W window steps (J = W, objectives.md 1.1): a ``train.timestep_fraction``
    set with a window would be silently ignored, so it is an error. Values that carry no intent are let
    through, as for the method-only keys: the schema default (a dumped config of another method) and
    Flow-GRPO's own default (a dumped Flow-GRPO config)."""
    found_w, window = _raw_get(data, "sample.sde_window_size")
    found_f, fraction = _raw_get(data, "train.timestep_fraction")
    if not (found_w and found_f) or isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        return []
    if _is_default("train.timestep_fraction", fraction) or _is_default_value(
            fraction, METHOD_DEFAULTS["flow_grpo"]["train.timestep_fraction"]):
        return []
    msg = (f"train.timestep_fraction={fraction} is not read with a Flow-GRPO-Fast window: "
           f"sample.sde_window_size={window} trains exactly the {window} window steps; remove "
           "train.timestep_fraction, or set sample.sde_window_size: 0 to train int(num_steps * timestep_fraction) steps")
    return [msg]


def _closest_for(method: str, key: str) -> str:
    """'; did you mean X?' with the closest key of the same section that `method` reads."""
    parts = key.split(".")
    fields = list((_SECTIONS[parts[0]] if len(parts) == 2 else TrainerConfig).model_fields)
    prefix = f"{parts[0]}." if len(parts) == 2 else ""
    valid = [f for f in fields if method in METHOD_ONLY_KEYS.get(prefix + f, frozenset({method}))
             and f != parts[-1]]
    close = difflib.get_close_matches(parts[-1], valid, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else "; remove it"


def method_switched(data: dict[str, Any], new: str) -> dict[str, Any]:
    """A copy of ``data`` (a config of method ``data["method"]``, e.g. a full dump) as a config of method
    ``new``, for a sweep whose trials choose the method: keys ``new`` does not read are dropped, and so
    are keys still at the old method's default (its METHOD_DEFAULTS, else the schema default) where
    ``new`` has its own default, so ``new``'s defaults apply; values set away from them are kept."""
    old = str(data.get("method", "awm"))
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}

    def drop(key: str) -> None:
        parts = key.split(".")
        node = out if len(parts) == 1 else out.get(parts[0])
        if isinstance(node, dict):
            node.pop(parts[-1], None)

    for key, readers in METHOD_ONLY_KEYS.items():
        if new not in readers:
            drop(key)
    for key in METHOD_DEFAULTS.get(new, {}):
        found, value = _raw_get(out, key)
        old_default = METHOD_DEFAULTS.get(old, {}).get(key, _field(key).get_default(call_default_factory=True))
        if found and _is_default_value(value, old_default):
            drop(key)
    for key in METHOD_DEFAULTS.get(old, {}):  # the old method's defaults of keys `new` leaves at the schema's
        found, value = _raw_get(out, key)
        if found and key not in METHOD_DEFAULTS.get(new, {}) and _is_default_value(value, METHOD_DEFAULTS[old][key]):
            drop(key)
    out["method"] = new
    return out


def _with_defaults(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key, value in defaults.items():
        parts = key.split(".")
        if len(parts) == 1:
            out.setdefault(parts[0], value)
            continue
        section = out.get(parts[0])
        if section is None:
            out[parts[0]] = {parts[1]: value}
        elif isinstance(section, dict) and parts[1] not in section:
            out[parts[0]] = {**section, parts[1]: value}
    return out


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
