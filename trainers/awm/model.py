"""Model-family seam: everything the AWM loop needs to know about a backbone.

The loop (``recipe.py``) only talks to a :class:`ModelFamily`: load the frozen parts, encode
prompts into a :class:`Cond`, predict a velocity ``v(x, sigma, cond)`` in the rectified-flow
convention ``x_sigma = (1 - sigma) x0 + sigma eps``, decode latents into PIL images, and name
the LoRA target modules.  :class:`SD3Family` implements it for Stable Diffusion 3 / 3.5 with
the diffusers ``StableDiffusion3Pipeline`` components, :class:`FluxFamily` for FLUX.1 with the
``FluxPipeline`` components (packed latents, position ids, the distilled-guidance embedding, the
dynamic time shift; spec: objectives.md section 4). :func:`load_family` picks the family from the
pipeline folder's ``model_index.json`` (``pretrained.family: auto``) or takes it from the config.

Latents are whatever the family's transformer takes: (C, H, W) for SD3, packed (L, 4C) for FLUX
(``latent_shape``). The loop, the samplers and the loss only reduce over ``range(1, ndim)`` or
``range(2, ndim)`` and never assume a rank (objectives.md trap 19).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.utils import logging as dlogging
from huggingface_hub import hf_hub_download
from transformers.utils import logging as tlogging

from trainers.awm.config import AUTO_FAMILY, PIPELINE_FAMILIES
from trainers.awm.samplers import flow_sigmas, flux_mu, flux_sigmas

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)


class _TruncationNotice(logging.Filter):
    """diffusers warns, with the whole truncated text, for every batch holding a prompt longer than
    CLIP's 77 tokens or T5's `max_sequence_length`: thousands of lines in an OCR evaluation. The
    truncation is intended (upstream encodes the same way), so say it once per process, briefly."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "input was truncated" not in record.getMessage():
            return True
        if _TruncationNotice.said:
            return False
        _TruncationNotice.said = True
        record.msg, record.args = ("some prompts are longer than the text encoders take (CLIP: 77 tokens, T5: "
                                   "max_sequence_length) and are truncated, as upstream does; not repeated"), ()
        return True


for _pipeline_cls in (StableDiffusion3Pipeline, FluxPipeline):
    logging.getLogger(_pipeline_cls.__module__).addFilter(_TruncationNotice())

FAMILIES: dict[str, str] = {"sd3": "trainers.awm.model:SD3Family", "flux": "trainers.awm.model:FluxFamily"}
# FLUX.1-dev's distilled guidance as Flow-GRPO (train_flux.py) and DanceGRPO use it (objectives.md 4.1)
FLUX_DEFAULT_GUIDANCE = 3.5

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Upstream target sets (train_sd3_awm.py L610-643). PEFT matches each entry as a suffix of a
# module name at a "." boundary, so "attn.to_q" does NOT match "attn2.to_q".
SD3_ATTN_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]
SD3_ATTN2_TARGETS = ["attn2.to_k", "attn2.to_out.0", "attn2.to_q", "attn2.to_v"]
SD3_FFN_TARGETS = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
# Flow-GRPO's FLUX set (train_flux.py L411-430, objectives.md 4.3) is SD3's attention + FFN suffixes: all 12
# linear layers of each double block, only attn.to_q/k/v of each single block (proj_mlp, proj_out and
# norm.linear of the single blocks stay frozen, as upstream). FLUX has no attn2.
LORA_TYPES: dict[str, list[str]] = {
    "attn": SD3_ATTN_TARGETS, "ffn": SD3_FFN_TARGETS, "attn_ffn": SD3_ATTN_TARGETS + SD3_FFN_TARGETS,
}


class ModelLoadError(RuntimeError):
    """The pretrained pipeline could not be loaded; the message says where it looked and what to do."""


def torch_dtype(name: str):
    try:
        return getattr(torch, DTYPES[name])
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


@dataclass
class Cond:
    """Text conditioning of a batch (row i belongs to sample i)."""

    prompt_embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor  # (B, P)

    def __len__(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def index(self, idx) -> Cond:
        return Cond(self.prompt_embeds[idx], self.pooled[idx])

    def repeat(self, times: int) -> Cond:
        """Timestep-major repeat: rows [c0..c_{B-1}, c0..c_{B-1}, ...] (``times`` blocks)."""
        return Cond(self.prompt_embeds.repeat(times, 1, 1), self.pooled.repeat(times, 1))

    def to(self, *args, **kwargs) -> Cond:
        return Cond(self.prompt_embeds.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        return Cond(torch.cat([c.prompt_embeds for c in conds]), torch.cat([c.pooled for c in conds]))


class ModelFamily:
    """Interface of a backbone family (see module docstring)."""

    name: str = ""
    pipeline_cls: Any = None  # the diffusers pipeline class (loading, LoRA export)
    transformer: Any
    latent_channels: int
    vae_scale_factor: int

    @classmethod
    def load(cls, model: str, *, revision: str | None = "main", device="cpu", inference_dtype: str = "fp32",
             guidance: float | None = None, transformer_dtype: str = "fp32") -> ModelFamily:
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str], *, max_sequence_length: int) -> Cond:
        raise NotImplementedError

    def velocity(self, module, x, sigma, cond: Cond):
        raise NotImplementedError

    def decode(self, latents) -> list[Image.Image]:
        raise NotImplementedError

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Shape of one sample's latent as the transformer takes it (no batch dimension)."""
        raise NotImplementedError

    def sigmas(self, num_steps: int, resolution: int) -> torch.Tensor:
        """(num_steps + 1,) float32 sampling grid ending in 0, as the family's diffusers pipeline builds it."""
        raise NotImplementedError

    def time_shift_mu(self, resolution: int) -> float | None:
        """mu of the exponential time shift that ``uniform`` / ``logit_normal`` training times use instead
        of the static ``time_shift`` (FLUX), or None (SD3: the static shift)."""
        return None

    def lora_target_modules(self, lora_type: str, include_attn2: bool) -> list[str]:
        try:
            targets = list(LORA_TYPES[lora_type])
        except KeyError:
            raise ValueError(f"unknown lora.type {lora_type!r}; expected one of {sorted(LORA_TYPES)}") from None
        if include_attn2:
            targets += SD3_ATTN2_TARGETS
        return targets

    def has_dual_attention(self) -> bool:
        return False

    def lora_pipeline_class(self):
        return self.pipeline_cls


def _move(module, device, dtype) -> None:
    p = next(module.parameters(), None)
    if p is not None and p.dtype != dtype:
        module.to(dtype=dtype)
    if p is not None and p.device != device:
        module.to(device)


def get_family(name: str) -> type[ModelFamily]:
    try:
        target = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)} (or {AUTO_FAMILY!r})") from None
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _how_to(model: str, local: Path) -> str:
    return (
        "Provide the weights as a local diffusers pipeline folder (set pretrained.model to it), e.g. "
        f"`huggingface-cli download {model if not local.is_absolute() else '<hub id>'} --local-dir DIR` on a "
        "machine with network access (accept the model licence first) and copy DIR here, or pre-fill "
        "the Hugging Face cache (HF_HOME); for tests use `awm model make-tiny DIR [--family flux]`."
    )


def _offline() -> bool:
    return any(os.environ.get(v) in ("1", "true", "True") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _source(model: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """(what from_pretrained takes, its kwargs): a local pipeline folder or a hub id; ModelLoadError otherwise."""
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(
                f"pretrained.model={model!r}: {local.resolve()} exists but is not a diffusers pipeline folder "
                f"(no model_index.json). {_how_to(model, local)}")
        return str(local.resolve()), {}
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"pretrained.model={model!r}: no such directory {local.resolve()} (and it is not a hub id "
            f"of the form 'org/name'). {_how_to(model, local)}")
    return model, {"revision": revision or "main"}


def read_model_index(model: str, revision: str | None = "main") -> dict[str, Any]:
    """The pipeline's ``model_index.json`` (a local folder, or the hub / HF cache); ModelLoadError if unreadable."""
    src, kw = _source(model, revision)
    try:
        path = Path(src) / "model_index.json" if not kw else Path(
            hf_hub_download(src, "model_index.json", revision=kw["revision"]))
        return json.loads(path.read_text())
    except Exception as exc:  # OSError, LocalEntryNotFoundError, offline errors, bad JSON
        raise ModelLoadError(
            f"could not read model_index.json of pretrained.model={model!r}{', offline mode' if _offline() else ''}: "
            f"{type(exc).__name__}: {exc}. {_how_to(model, Path(model).expanduser())}") from exc


def resolve_family(family: str, model: str, revision: str | None = "main") -> str:
    """The family to load ``model`` with: ``auto`` reads ``model_index.json``'s ``_class_name``; an explicit
    family is checked against it when the class is a known one (a pipeline class this module does not know,
    e.g. a subclass, is loaded with the explicit family as asked)."""
    if family != AUTO_FAMILY:
        get_family(family)  # unknown family: ValueError, before any I/O
    index = read_model_index(model, revision)
    cls_name = str(index.get("_class_name", ""))
    detected = PIPELINE_FAMILIES.get(cls_name)
    if family == AUTO_FAMILY:
        if detected is None:
            raise ModelLoadError(
                f"pretrained.model={model!r}: model_index.json names the pipeline class {cls_name!r}, which "
                f"pretrained.family: auto does not know (known: {', '.join(sorted(PIPELINE_FAMILIES))}); set "
                f"pretrained.family to one of {sorted(FAMILIES)}")
        return detected
    if detected is not None and detected != family:
        raise ModelLoadError(
            f"pretrained.family={family!r} but pretrained.model={model!r} is a {cls_name} (family {detected!r}); "
            f"set pretrained.family: {detected} (or auto)")
    return family


def load_family(family: str, model: str, *, revision: str | None = "main", device="cpu",
                inference_dtype: str = "fp32", guidance: float | None = None,
                transformer_dtype: str = "fp32") -> ModelFamily:
    """Resolve ``family`` (``auto`` included) and load ``model`` with it (ModelLoadError says what is wrong)."""
    name = resolve_family(family, model, revision)
    return get_family(name).load(model, revision=revision, device=device, inference_dtype=inference_dtype,
                                 guidance=guidance, transformer_dtype=transformer_dtype)


def _load_pipeline(pipeline_cls, model: str, revision: str | None, transformer_dtype: str = "fp32"):
    """``pipeline_cls.from_pretrained`` from a local folder or a hub id (the HF cache when offline).
    A non-fp32 ``transformer_dtype`` loads the transformer in it directly: FLUX.1-dev's 12B parameters
    would take 48 GB of host memory per process in fp32 before the cast."""
    dlogging.disable_progress_bar()
    try:
        tlogging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    src, kw = _source(model, revision)
    load_kw = dict(kw)
    if transformer_dtype != "fp32":
        load_kw["dtype"] = {"transformer": torch_dtype(transformer_dtype), "default": torch.float32}
    try:
        pipe = pipeline_cls.from_pretrained(src, **load_kw)
    except Exception as exc:  # OSError, LocalEntryNotFoundError, offline errors, ...
        raise ModelLoadError(
            f"could not load pretrained.model={model!r} ({'local folder ' + src if not kw else 'hub id, revision ' + kw['revision']}"
            f"{', offline mode' if _offline() else ''}): {type(exc).__name__}: {exc}. "
            f"{_how_to(model, Path(model).expanduser())}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _freeze(pipe, frozen: tuple, device, inference_dtype, transformer_dtype: str = "fp32") -> None:
    """Text encoders and VAE: frozen, eval mode, in the inference dtype; the transformer: frozen, fp32 by
    default (LoRA is trained on it; compute precision comes from accelerate's autocast), or stored in
    ``transformer_dtype`` (``pretrained.transformer_dtype``; the LoRA parameters are fp32 regardless,
    ``lora.add_policy_adapters``)."""
    for m in frozen:
        if m is not None:
            m.requires_grad_(False)
            m.eval()
            _move(m, device, inference_dtype)
    pipe.transformer.requires_grad_(False)
    pipe.transformer.eval()
    _move(pipe.transformer, device, torch_dtype(transformer_dtype))


class SD3Family(ModelFamily):
    """Stable Diffusion 3 / 3.5 (MMDiT) via diffusers' ``StableDiffusion3Pipeline`` components.

    The transformer stays fp32 (LoRA is trained on it; compute precision comes from accelerate's
    autocast, upstream L569-608); text encoders and VAE are frozen, in eval mode and cast to the
    inference dtype ``pretrained.dtype``.
    """

    name = "sd3"
    pipeline_cls = StableDiffusion3Pipeline

    def __init__(self, pipe, *, device="cpu", inference_dtype: str = "fp32", transformer_dtype: str = "fp32") -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.inference_dtype = torch_dtype(inference_dtype)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        _freeze(pipe, (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae), self.device,
                self.inference_dtype, transformer_dtype)
        self.latent_channels = int(self.transformer.config.in_channels)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.flow_shift = float(pipe.scheduler.config.get("shift", 1.0))
        if pipe.scheduler.config.get("use_dynamic_shifting", False):
            log.warning("scheduler uses dynamic shifting; AWM uses the static shift %.3f", self.flow_shift)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str, *, revision: str | None = "main", device="cpu", inference_dtype: str = "fp32",
             guidance: float | None = None, transformer_dtype: str = "fp32") -> SD3Family:
        """Load from a local diffusers folder or a hub id (from the local HF cache when offline)."""
        if guidance is not None:
            raise ModelLoadError(f"pretrained.guidance={guidance} but pretrained.model={model!r} is an SD3 pipeline, "
                                 "which has no distilled-guidance embedding; unset pretrained.guidance "
                                 "(classifier-free guidance is sample.guidance_scale)")
        return cls(_load_pipeline(StableDiffusion3Pipeline, model, revision, transformer_dtype), device=device,
                   inference_dtype=inference_dtype, transformer_dtype=transformer_dtype)

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        f = self.vae_scale_factor
        if resolution % f:
            raise ValueError(f"resolution {resolution} is not divisible by the VAE factor {f}")
        return (self.latent_channels, resolution // f, resolution // f)

    def sigmas(self, num_steps: int, resolution: int) -> torch.Tensor:
        return flow_sigmas(num_steps, self.flow_shift)

    # ---------------------------------------------------------------- prompts
    def encode_prompts(self, prompts: list[str], *, max_sequence_length: int) -> Cond:
        with torch.no_grad():
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
                do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
            )
        return Cond(pe.detach(), pooled.detach())

    # --------------------------------------------------------------- velocity
    def velocity(self, module, x, sigma, cond: Cond):
        """``v_theta(x, sigma)``; ``module`` is the (possibly DDP-wrapped) transformer.
        ``sigma`` is (B,) in [0, 1]; the MMDiT takes ``1000 * sigma`` as timestep."""
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        out = module(
            hidden_states=x,
            timestep=sigma.reshape(b) * 1000.0,
            encoder_hidden_states=cond.prompt_embeds.to(x.dtype),
            pooled_projections=cond.pooled.to(x.dtype),
            return_dict=False,
        )[0]
        return out

    # ----------------------------------------------------------------- decode
    def decode(self, latents) -> list[Image.Image]:
        cfg = self.vae.config
        with torch.no_grad():
            z = latents.to(self.device, dtype=self.inference_dtype) / cfg.scaling_factor + cfg.shift_factor
            img = self.vae.decode(z, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img.float(), output_type="pil")

    # ------------------------------------------------------------------- LoRA
    def has_dual_attention(self) -> bool:
        return bool(getattr(self.transformer.config, "dual_attention_layers", ()) or ())


class FluxFamily(ModelFamily):
    """FLUX.1 (dev / schnell-style) via diffusers' ``FluxPipeline`` components (objectives.md section 4).

    * Latents are **packed**: a (C, H/f, W/f) VAE latent becomes (L, 4C) with L = (H/2f)(W/2f) 2x2 patches
      (``FluxPipeline._pack_latents``). Packing only permutes elements, so the rectified-flow interpolation,
      the target velocity, every MSE and mean over a sample are those of the unpacked latent; everything
      stays packed and only ``decode`` unpacks.
    * ``img_ids`` (L, 3) rows [0, row, col] and ``txt_ids`` zeros (L_txt, 3), both 2-D.
    * Text: CLIP-L ``pooler_output`` (768-d on FLUX.1) as ``pooled_projections``, T5 ``last_hidden_state``
      as ``encoder_hidden_states`` (``FluxPipeline.encode_prompt``; no third encoder, no pooled concat).
    * The timestep is sigma itself (the transformer multiplies it and the guidance by 1000).
    * Guidance-distilled models (``guidance_embeds=True``, FLUX.1-dev) get ``guidance`` = g for every row,
      g = ``pretrained.guidance`` or 3.5, identical in rollouts, training, the reference / EMA forwards and
      evaluation (objectives.md 4.4). True CFG (an unconditional pass) only when ``sample.guidance_scale > 1``.
    * The sampling grid is FLUX's: linspace(1, 1/N, N) with the exponential shift mu(L) (``flux_sigmas``).
    * Decode: unpack, z / scaling_factor + shift_factor (0.3611 / 0.1159 on FLUX.1), VAE.
    """

    name = "flux"
    pipeline_cls = FluxPipeline

    def __init__(self, pipe, *, device="cpu", inference_dtype: str = "fp32", guidance: float | None = None,
                 transformer_dtype: str = "fp32") -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.inference_dtype = torch_dtype(inference_dtype)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        _freeze(pipe, (pipe.text_encoder, pipe.text_encoder_2, pipe.vae), self.device, self.inference_dtype,
                transformer_dtype)
        self.latent_channels = int(self.transformer.config.in_channels) // 4
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)
        if guidance is not None and not self.guidance_embeds:
            raise ModelLoadError(f"pretrained.guidance={guidance} but this FLUX transformer has no guidance "
                                 "embedding (guidance_embeds=false, e.g. FLUX.1-schnell); unset pretrained.guidance")
        self.guidance = (FLUX_DEFAULT_GUIDANCE if guidance is None else float(guidance)) if self.guidance_embeds \
            else None
        sc = pipe.scheduler.config
        unsupported = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal",
                                   "invert_sigmas", "stochastic_sampling") if sc.get(k)]
        if sc.get("time_shift_type", "exponential") != "exponential" or not sc.get("use_dynamic_shifting", False):
            unsupported.append("a time shift other than the dynamic exponential one")
        if unsupported:
            raise ModelLoadError(f"the FLUX pipeline's scheduler uses {', '.join(unsupported)}, which the trainer's "
                                 "samplers do not reproduce (FLUX.1's scheduler uses none of them)")
        self.shift_config = {k: float(sc.get(k, d)) for k, d in (
            ("base_image_seq_len", 256), ("max_image_seq_len", 4096), ("base_shift", 0.5), ("max_shift", 1.15))}
        self._ids: dict[tuple[int, str], torch.Tensor] = {}

    @classmethod
    def load(cls, model: str, *, revision: str | None = "main", device="cpu", inference_dtype: str = "fp32",
             guidance: float | None = None, transformer_dtype: str = "fp32") -> FluxFamily:
        """Load from a local diffusers folder or a hub id (from the local HF cache when offline)."""
        return cls(_load_pipeline(FluxPipeline, model, revision, transformer_dtype), device=device,
                   inference_dtype=inference_dtype,
                   guidance=guidance, transformer_dtype=transformer_dtype)

    # ----------------------------------------------------------------- shapes
    def _side(self, resolution: int) -> int:
        f = 2 * self.vae_scale_factor
        if resolution % f:
            raise ValueError(f"resolution {resolution} is not divisible by 2 x the VAE factor = {f} (FLUX packs 2x2 "
                             "latent patches)")
        return resolution // f

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        side = self._side(resolution)
        return (side * side, 4 * self.latent_channels)

    def image_seq_len(self, resolution: int) -> int:
        return self._side(resolution) ** 2

    def time_shift_mu(self, resolution: int) -> float:
        c = self.shift_config
        return flux_mu(self.image_seq_len(resolution), base_seq_len=int(c["base_image_seq_len"]),
                       max_seq_len=int(c["max_image_seq_len"]), base_shift=c["base_shift"], max_shift=c["max_shift"])

    def sigmas(self, num_steps: int, resolution: int) -> torch.Tensor:
        return flux_sigmas(num_steps, self.time_shift_mu(resolution))

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, (H/2)(W/2), 4C) (``FluxPipeline._pack_latents``)."""
        b, c, h, w = latents.shape
        return FluxPipeline._pack_latents(latents, b, c, h, w)

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, L, 4C) -> (B, C, H, W) for a square image (``FluxPipeline._unpack_latents``)."""
        side = math.isqrt(latents.shape[1])
        if side * side != latents.shape[1]:
            raise ValueError(f"packed latents of {latents.shape[1]} tokens are not a square image")
        res = side * 2 * self.vae_scale_factor
        return FluxPipeline._unpack_latents(latents, res, res, self.vae_scale_factor)

    def img_ids(self, seq_len: int, device) -> torch.Tensor:
        """(L, 3) position ids [0, row, col] of a square packed latent of L tokens (cached)."""
        key = (seq_len, str(device))
        if key not in self._ids:
            side = math.isqrt(seq_len)
            if side * side != seq_len:
                raise ValueError(f"packed latents of {seq_len} tokens are not a square image")
            self._ids[key] = FluxPipeline._prepare_latent_image_ids(1, side, side, device, torch.float32)
        return self._ids[key]

    # ---------------------------------------------------------------- prompts
    def encode_prompts(self, prompts: list[str], *, max_sequence_length: int) -> Cond:
        if max_sequence_length > 512:
            raise ValueError(f"max_sequence_length={max_sequence_length}: FLUX's T5 takes at most 512 tokens")
        with torch.no_grad():
            pe, pooled, _txt_ids = self.pipe.encode_prompt(
                prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=max_sequence_length)
        return Cond(pe.detach(), pooled.detach())

    # --------------------------------------------------------------- velocity
    def velocity(self, module, x, sigma, cond: Cond):
        """``v_theta(x, sigma)`` on packed ``x`` (B, L, 4C); ``module`` is the (possibly DDP-wrapped)
        transformer; ``sigma`` (B,) in [0, 1] is passed as is (the model scales it by 1000)."""
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        txt_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=x.device, dtype=torch.float32)
        return module(
            hidden_states=x,
            timestep=sigma.reshape(b),
            guidance=guidance,
            pooled_projections=cond.pooled.to(x.dtype),
            encoder_hidden_states=cond.prompt_embeds.to(x.dtype),
            txt_ids=txt_ids,
            img_ids=self.img_ids(x.shape[1], x.device),
            return_dict=False,
        )[0]

    # ----------------------------------------------------------------- decode
    def decode(self, latents) -> list[Image.Image]:
        cfg = self.vae.config
        with torch.no_grad():
            z = self.unpack(latents.to(self.device, dtype=self.inference_dtype))
            z = z / cfg.scaling_factor + cfg.shift_factor
            img = self.vae.decode(z, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img.float(), output_type="pil")
