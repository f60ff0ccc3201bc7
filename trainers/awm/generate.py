"""Image generation for the evaluation service, on the trainer's own model, sampler and LoRA code.

* :func:`cfg_velocity` -- the ``v(x, t)`` closure over a batch's conditioning, with classifier-free
  guidance against the empty prompt when the guidance scale is > 1. The trainer's rollouts and
  in-loop evaluation use it (``AWMTrainer.velocity_factory``), and so does :class:`ImageGenerator`:
  one definition of the guided velocity.
* :func:`image_seed` -- the seed of image ``(prompt index, sample index)`` of an evaluation with
  spec seed ``seed``; nothing else (not the batch, shard or world size) enters it.
* :class:`ImageGenerator` -- the base model loaded once per job
  (``trainers.awm.model.load_family``: SD3 or FLUX, ``auto`` reads ``model_index.json``), a
  checkpoint's LoRA swapped in per checkpoint (``trainers.awm.lora``), the deterministic Euler ODE
  over the family's grid ``family.sigmas(num_steps, resolution)`` (SD3's static shift, FLUX's
  dynamic one; ``trainers.awm.samplers.euler_sample``, ``noise_level=0``) from initial noise drawn
  by one ``torch.Generator`` per image (``randn_per_sample``, in the family's latent shape: packed
  for FLUX), decoded by the family. FLUX's distilled guidance is the family's (``guidance``).

Batch composition: the seeds and the ODE make each image a function of (prompt, seed, spec); an
identical batch gives bit-identical pixels, a different batch composition can move a pixel by one
uint8 level (CPU and GPU kernels choose their summation order by batch size; bound checked in
tests/trainer/test_generate.py). Exact equality would need one image per forward.

Precision: the text encoders and the VAE hold ``precision`` (the trainer's ``pretrained.dtype``);
the transformer stays fp32 (as in training) and computes under autocast in ``precision`` on CUDA
(bf16/fp16), in fp32 on CPU (the trainer's ``mixed_precision: "no"``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trainers.awm import lora as L
from trainers.awm.model import Cond, ModelFamily, load_family, torch_dtype
from trainers.awm.prompts import derive_seed
from trainers.awm.samplers import VelocityFn, euler_sample, randn_per_sample

__all__ = ["ImageGenerator", "cfg_velocity", "image_seed"]

_TAG_IMAGE = 0x41574D49  # "AWMI": evaluation-service images (the trainer's in-loop eval uses "AWME")

# LoraConfig fields that change a LoRA's output but that the trainer never sets: a LoRA using one
# is refused, because rebuilding it from (r, lora_alpha, target_modules) alone would be wrong.
_UNSUPPORTED_LORA_FIELDS = ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform")


def image_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The initial-noise seed of sample ``sample_index`` of prompt ``prompt_index`` (63 bits)."""
    return derive_seed(_TAG_IMAGE, seed, prompt_index, sample_index)


def cfg_velocity(family: ModelFamily, module: Any, cond: Cond, guidance_scale: float,
                 neg_cond: Cond | None) -> VelocityFn:
    """``v(x, t)`` of ``module`` for the batch conditioned on ``cond``.

    ``guidance_scale <= 1``: the conditional velocity. Otherwise CFG in one forward of the doubled
    batch ``[uncond; cond]`` with ``neg_cond`` (the empty prompt's encoding, one row):
    ``v_u + g (v_c - v_u)``."""
    g = float(guidance_scale)
    if g <= 1.0:
        return lambda x, t: family.velocity(module, x, t, cond)
    if neg_cond is None:
        raise ValueError(f"guidance_scale={g} > 1 needs the empty prompt's conditioning (neg_cond)")
    neg = neg_cond

    def vfn(x, t):
        n = x.shape[0]
        both = Cond(torch.cat([neg.prompt_embeds.expand(n, -1, -1), cond.prompt_embeds]),
                    torch.cat([neg.pooled.expand(n, -1), cond.pooled]))
        v = family.velocity(module, torch.cat([x, x]), torch.cat([t, t]), both)
        vu, vc = v.chunk(2)
        return vu + g * (vc - vu)

    return vfn


def _lora_config(meta: dict[str, Any] | None, path: Path):
    """The LoRA config of a saved adapter, from its metadata (r, lora_alpha, target_modules)."""
    if meta is None:
        raise ValueError(f"LoRA at {path} has no adapter metadata (r, lora_alpha, target_modules); save it with "
                         f"the adapter metadata (trainers.awm.lora.save_diffusers does) or as a PEFT folder")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if meta.get(k) is None]
    if missing:
        raise ValueError(f"LoRA at {path}: adapter metadata lacks {', '.join(missing)}")
    unsupported = [k for k in _UNSUPPORTED_LORA_FIELDS if meta.get(k)]
    if isinstance(meta["target_modules"], str):  # a regex: make_lora_config takes module names
        unsupported.append(f"target_modules as a regex ({meta['target_modules']!r})")
    if unsupported:
        raise ValueError(f"LoRA at {path} uses {', '.join(unsupported)}, which the evaluation generator does not "
                         "support (the trainer never writes them)")
    return L.make_lora_config(rank=int(meta["r"]), alpha=float(meta["lora_alpha"]), init="gaussian",
                              target_modules=sorted(meta["target_modules"]))


class ImageGenerator:
    """One base model per job; LoRAs swapped per checkpoint; seeded ODE sampling (module docstring).

    ``family`` (the :class:`ModelFamily`) and ``module`` (its transformer, LoRA included) are public
    so a throughput measurement can time ``family.velocity(module, ...)`` directly."""

    def __init__(self, family: ModelFamily, *, precision: str, device: torch.device | str) -> None:
        self.family = family
        self.module = family.transformer
        self.precision = precision
        self.device = torch.device(device)
        self.lora: Path | None = None  # the LoRA folder/file in use; None = the base model
        self._neg: dict[int, Cond] = {}  # the empty prompt's conditioning per max_sequence_length

    @classmethod
    def load(cls, model: str, *, revision: str | None, family: str, precision: str,
             device: torch.device | str, guidance: float | None = None) -> ImageGenerator:
        """Load the base pipeline exactly as the trainer does (``ModelLoadError`` says what is missing).
        ``family`` may be ``auto``; ``guidance`` is ``pretrained.guidance`` (FLUX's distilled guidance)."""
        torch_dtype(precision)  # an unknown precision fails here, before the (slow) load
        fam = load_family(family, model, revision=revision, device=device, inference_dtype=precision,
                          guidance=guidance)
        return cls(fam, precision=precision, device=device)

    # ------------------------------------------------------------------ LoRA
    def set_lora(self, path: Path | None) -> None:
        """Use the LoRA saved at ``path`` (a diffusers folder such as a checkpoint's ``lora/`` or
        ``lora_ema/``, with adapter metadata), or the base model (``None``).

        The previous LoRA's layers are removed first (``unload_lora`` puts the original modules
        back), so nothing of it survives: rank and target modules may differ between checkpoints.
        On error the generator is left on the base model and the error propagates."""
        if self.lora is not None or getattr(self.module, "peft_config", None):
            self.module.unload_lora()
            self.lora = None
        if path is None:
            return
        path = Path(path)
        _sd, meta = L.read_lora_file(path)
        config = _lora_config(meta, path)
        try:
            L.add_policy_adapters(self.module, config, with_ema=False)
            L.load_into_adapter_(self.module, path, L.POLICY)
        except Exception:
            if getattr(self.module, "peft_config", None):
                self.module.unload_lora()
            raise
        self.lora = path

    # ------------------------------------------------------------- sampling
    def _negative(self, max_sequence_length: int) -> Cond:
        if max_sequence_length not in self._neg:
            self._neg[max_sequence_length] = self.family.encode_prompts([""], max_sequence_length=max_sequence_length)
        return self._neg[max_sequence_length]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch_dtype(self.precision))
        return contextlib.nullcontext()

    def generate(self, prompts: list[str], seeds: list[int], *, num_steps: int, guidance_scale: float,
                 resolution: int, max_sequence_length: int) -> list[Image.Image]:
        """One image per ``(prompt, seed)`` pair: Euler ODE with ``num_steps`` steps, CFG when
        ``guidance_scale > 1``. Image i depends on ``prompts[i]``, ``seeds[i]`` and the arguments
        only, not on the other rows of the batch."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds")
        if not prompts:
            return []
        shape = self.family.latent_shape(resolution)
        sigmas = self.family.sigmas(num_steps, resolution)
        with torch.inference_mode():
            cond = self.family.encode_prompts(list(prompts), max_sequence_length=max_sequence_length)
            neg = self._negative(max_sequence_length) if guidance_scale > 1.0 else None
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
            lat = randn_per_sample((len(prompts), *shape), gens, device=self.device, dtype=torch.float32)
            vfn = cfg_velocity(self.family, self.module, cond, guidance_scale, neg)
            with self._autocast():
                out = euler_sample(vfn, lat, sigmas, noise_level=0.0)
            return self.family.decode(out.x0)
