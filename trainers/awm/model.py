"""Model-family seam: everything the AWM loop needs to know about a backbone.

The loop (``recipe.py``) only talks to a :class:`ModelFamily`: load the frozen parts, encode
prompts into a :class:`Cond`, predict a velocity ``v(x, sigma, cond)`` in the rectified-flow
convention ``x_sigma = (1 - sigma) x0 + sigma eps``, decode latents into PIL images, and name
the LoRA target modules.  :class:`SD3Family` implements it for Stable Diffusion 3 / 3.5 with
the diffusers ``StableDiffusion3Pipeline`` components; a FLUX family would implement the same
methods (packing latents, guidance embedding, ...) without touching the loop.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.utils import logging as dlogging
from transformers.utils import logging as tlogging

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


logging.getLogger(StableDiffusion3Pipeline.__module__).addFilter(_TruncationNotice())

FAMILIES: dict[str, str] = {"sd3": "trainers.awm.model:SD3Family"}

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

# Upstream target sets (train_sd3_awm.py L610-643). PEFT matches each entry as a suffix of a
# module name at a "." boundary, so "attn.to_q" does NOT match "attn2.to_q".
SD3_ATTN_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]
SD3_ATTN2_TARGETS = ["attn2.to_k", "attn2.to_out.0", "attn2.to_q", "attn2.to_v"]
SD3_FFN_TARGETS = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


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
    transformer: Any
    latent_channels: int
    vae_scale_factor: int
    flow_shift: float

    def encode_prompts(self, prompts: list[str], *, max_sequence_length: int) -> Cond:
        raise NotImplementedError

    def velocity(self, module, x, sigma, cond: Cond):
        raise NotImplementedError

    def decode(self, latents) -> list[Image.Image]:
        raise NotImplementedError

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        f = self.vae_scale_factor
        if resolution % f:
            raise ValueError(f"resolution {resolution} is not divisible by the VAE factor {f}")
        return (self.latent_channels, resolution // f, resolution // f)

    def lora_target_modules(self, lora_type: str, include_attn2: bool) -> list[str]:
        raise NotImplementedError

    def lora_pipeline_class(self):
        raise NotImplementedError


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
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


class SD3Family(ModelFamily):
    """Stable Diffusion 3 / 3.5 (MMDiT) via diffusers' ``StableDiffusion3Pipeline`` components.

    The transformer stays fp32 (LoRA is trained on it; compute precision comes from accelerate's
    autocast, upstream L569-608); text encoders and VAE are frozen, in eval mode and cast to the
    inference dtype ``pretrained.dtype``.
    """

    name = "sd3"

    def __init__(self, pipe, *, device="cpu", inference_dtype: str = "fp32") -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.inference_dtype = torch_dtype(inference_dtype)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.vae):
            if m is not None:
                m.requires_grad_(False)
                m.eval()
                _move(m, self.device, self.inference_dtype)
        self.transformer.requires_grad_(False)
        self.transformer.eval()
        _move(self.transformer, self.device, torch.float32)
        self.latent_channels = int(self.transformer.config.in_channels)
        self.vae_scale_factor = int(pipe.vae_scale_factor)
        self.flow_shift = float(pipe.scheduler.config.get("shift", 1.0))
        if pipe.scheduler.config.get("use_dynamic_shifting", False):
            log.warning("scheduler uses dynamic shifting; AWM uses the static shift %.3f", self.flow_shift)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model: str, *, revision: str | None = "main", device="cpu", inference_dtype: str = "fp32",
             ) -> SD3Family:
        """Load from a local diffusers folder or a hub id (from the local HF cache when offline)."""
        dlogging.disable_progress_bar()
        try:
            tlogging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
        local = Path(model).expanduser()
        how_to = (
            "Provide the weights as a local diffusers pipeline folder (set pretrained.model to it), e.g. "
            f"`huggingface-cli download {model if not local.is_absolute() else '<hub id>'} --local-dir DIR` on a "
            "machine with network access (accept the model licence first) and copy DIR here, or pre-fill "
            "the Hugging Face cache (HF_HOME); for tests use `awm model make-tiny DIR`."
        )
        if local.exists():
            if not (local / "model_index.json").is_file():
                raise ModelLoadError(
                    f"pretrained.model={model!r}: {local.resolve()} exists but is not a diffusers pipeline folder "
                    f"(no model_index.json). {how_to}")
            src, kw = str(local.resolve()), {}
        else:
            if model.startswith(("/", ".", "~")) or model.count("/") != 1:
                raise ModelLoadError(
                    f"pretrained.model={model!r}: no such directory {local.resolve()} (and it is not a hub id "
                    f"of the form 'org/name'). {how_to}")
            src, kw = model, {"revision": revision or "main"}
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(src, **kw)
        except ModelLoadError:
            raise
        except Exception as exc:  # OSError, LocalEntryNotFoundError, offline errors, ...
            offline = any(os.environ.get(v) in ("1", "true", "True") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
            raise ModelLoadError(
                f"could not load pretrained.model={model!r} ({'local folder ' + src if not kw else 'hub id, revision ' + kw['revision']}"
                f"{', offline mode' if offline else ''}): {type(exc).__name__}: {exc}. {how_to}") from exc
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device=device, inference_dtype=inference_dtype)

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
    def lora_target_modules(self, lora_type: str, include_attn2: bool) -> list[str]:
        if lora_type == "attn":
            targets = list(SD3_ATTN_TARGETS)
        elif lora_type == "ffn":
            targets = list(SD3_FFN_TARGETS)
        else:
            raise ValueError(f"unknown lora.type {lora_type!r}; expected 'attn' or 'ffn'")
        if include_attn2:
            targets += SD3_ATTN2_TARGETS
        return targets

    def has_dual_attention(self) -> bool:
        return bool(getattr(self.transformer.config, "dual_attention_layers", ()) or ())

    def lora_pipeline_class(self):
        return StableDiffusion3Pipeline
