"""Tiny SD3- and FLUX-architecture pipelines with random weights (offline tests, quickstart, perf).

Everything is built from configs: the CLIP and T5 tokenizers are created in memory (a
byte-level, character-granularity CLIP BPE and a small T5 Unigram vocabulary), so no hub
access and no fixture files are needed (docs: stack-notes section 2).  ``save_pretrained``
writes a normal diffusers pipeline folder that ``StableDiffusion3Pipeline.from_pretrained``
loads offline.

Presets (transformer parameters, 64 px images):

* ``"tiny"``    width 32,  2 heads, 2 layers, VAE /2  (~0.08M)  - unit tests, quickstart
* ``"small"``   width 64,  4 heads, 4 layers, VAE /2  (~0.6M)
* ``"perf"``    width 128, 4 heads, 6 layers, VAE /2  (~3.6M)   - perf/trainer_step.py

Latents: 4 channels (SD3 has 16) and a VAE ``scaling_factor`` of 300, so the decoder works
around the constant ``shift_factor`` and the decoded image responds smoothly to the latent
amplitude. With SD3-like values (16 channels, 1.5035) the random VAE's GroupNorms make every
noise-like latent decode to an equally incompressible image, and JPEG rewards are flat (no
learning signal); with these values a few dozen AWM epochs visibly raise
``jpeg_compressibility`` (tests/trainer/test_learning.py). Both are arguments.

``dual_attention=True`` makes every block an SD3.5-Medium-style dual-attention block (a
second self-attention ``attn2``), to exercise ``lora.include_attn2``.

``make_tiny_flux_pipeline`` builds a ``FluxPipeline`` the same way (objectives.md 4.5): CLIP
``CLIPTextModel`` (pooled output) + T5, a ``FluxTransformer2DModel`` with the guidance embedding
(FLUX.1-dev style), the same /2 VAE with 4 latent channels (packed: 16 channels per token) and
``scaling_factor`` 300 for the same reward-signal reason, and FLUX's dynamically shifted scheduler.
FLUX presets (``FLUX_PRESETS``): ``tiny`` 2 heads x 16, 2 double + 2 single blocks (~0.13M);
``perf`` 4 heads x 32, 2 double + 8 single blocks (~3.4M, perf/trainer_step.py --family flux).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from benchmarks.clip_tokenizer import make_clip_tokenizer

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 32, "heads": 2, "layers": 2},
    "small": {"width": 64, "heads": 4, "layers": 4},
    "perf": {"width": 128, "heads": 4, "layers": 6},
}
FLUX_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"heads": 2, "head_dim": 16, "layers": 2, "single_layers": 2},
    "small": {"heads": 4, "head_dim": 16, "layers": 2, "single_layers": 4},
    "perf": {"heads": 4, "head_dim": 32, "layers": 2, "single_layers": 8},
}
FAMILIES = ("sd3", "flux")


def make_t5_tokenizer(model_max_length: int = 512):
    """Small Unigram vocabulary in T5's layout (pad=0, eos=1, unk=2)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def make_tiny_pipeline(
    *,
    preset: str = "tiny",
    width: int | None = None,
    heads: int | None = None,
    layers: int | None = None,
    dual_attention: bool = False,
    clip_hidden: int = 16,
    clip_layers: int = 2,
    t5_dim: int = 32,
    t5_layers: int = 1,
    latent_channels: int = 4,
    vae_blocks: tuple[int, ...] = (8, 16),
    image_size: int = 64,
    patch_size: int = 2,
    qk_norm: str | None = "rms_norm",
    vae_scaling_factor: float = 300.0,
    vae_shift_factor: float = 0.0609,
    seed: int = 0,
):
    """Build a random-weight ``StableDiffusion3Pipeline`` (all modules in eval mode)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = dict(PRESETS[preset])
    width = width or p["width"]
    heads = heads or p["heads"]
    layers = layers or p["layers"]
    vae_factor = 2 ** (len(vae_blocks) - 1)
    if image_size % (vae_factor * patch_size):
        raise ValueError(f"image_size {image_size} must be divisible by VAE factor x patch size = {vae_factor * patch_size}")
    sample_size = image_size // vae_factor

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tok, tok2, tok3 = make_clip_tokenizer(), make_clip_tokenizer(), make_t5_tokenizer()
        clip_cfg = {
            "vocab_size": len(tok), "hidden_size": clip_hidden, "intermediate_size": 2 * clip_hidden,
            "num_hidden_layers": clip_layers, "num_attention_heads": 2, "projection_dim": clip_hidden,
            "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "hidden_act": "gelu",
        }
        te1 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
        te3 = T5EncoderModel(T5Config(
            vocab_size=len(tok3), d_model=t5_dim, d_kv=8, d_ff=2 * t5_dim, num_layers=t5_layers, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
            decoder_start_token_id=0, dropout_rate=0.0,
        ))
        transformer = SD3Transformer2DModel(
            sample_size=sample_size, patch_size=patch_size, in_channels=latent_channels,
            out_channels=latent_channels, num_layers=layers, attention_head_dim=width // heads,
            num_attention_heads=heads, joint_attention_dim=t5_dim, caption_projection_dim=width,
            pooled_projection_dim=2 * clip_hidden, pos_embed_max_size=max(sample_size // patch_size, 8),
            dual_attention_layers=tuple(range(layers)) if dual_attention else (), qk_norm=qk_norm,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            block_out_channels=tuple(vae_blocks), layers_per_block=1, latent_channels=latent_channels,
            norm_num_groups=min(vae_blocks), sample_size=image_size,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=vae_shift_factor, scaling_factor=vae_scaling_factor,
        )
    finally:
        torch.random.set_rng_state(gen_state)
    for m in (te1, te2, te3, transformer, vae):
        m.eval()  # modules built from configs start in train() mode (stack-notes P2)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
        text_encoder_3=te3, tokenizer_3=tok3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX's rope axes (id, row, col) must sum to the head dim and each be even: 16 -> (4, 6, 6)."""
    side = (head_dim * 3 // 8) // 2 * 2
    first = head_dim - 2 * side
    if head_dim % 2 or first < 2 or first % 2:
        raise ValueError(f"head_dim {head_dim} cannot be split into even rope axes")
    return (first, side, side)


def make_tiny_flux_pipeline(
    *,
    preset: str = "tiny",
    heads: int | None = None,
    head_dim: int | None = None,
    layers: int | None = None,
    single_layers: int | None = None,
    clip_hidden: int = 16,
    clip_layers: int = 2,
    t5_dim: int = 32,
    t5_layers: int = 1,
    latent_channels: int = 4,
    vae_blocks: tuple[int, ...] = (8, 16),
    guidance_embeds: bool = True,
    vae_scaling_factor: float = 300.0,
    vae_shift_factor: float = 0.0609,
    seed: int = 0,
):
    """Build a random-weight ``FluxPipeline`` (all modules in eval mode; objectives.md 4.5)."""
    if preset not in FLUX_PRESETS:
        raise ValueError(f"unknown tiny FLUX preset {preset!r}; choose one of {sorted(FLUX_PRESETS)}")
    p = dict(FLUX_PRESETS[preset])
    heads = heads or p["heads"]
    head_dim = head_dim or p["head_dim"]
    layers = layers or p["layers"]
    single_layers = single_layers or p["single_layers"]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tok, tok2 = make_clip_tokenizer(), make_t5_tokenizer()
        te1 = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=clip_hidden, intermediate_size=2 * clip_hidden,
            num_hidden_layers=clip_layers, num_attention_heads=2, max_position_embeddings=77,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            hidden_act="gelu"))
        te2 = T5EncoderModel(T5Config(
            vocab_size=len(tok2), d_model=t5_dim, d_kv=8, d_ff=2 * t5_dim, num_layers=t5_layers, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=tok2.pad_token_id, eos_token_id=tok2.eos_token_id,
            decoder_start_token_id=0, dropout_rate=0.0))
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * latent_channels, num_layers=layers, num_single_layers=single_layers,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=t5_dim,
            pooled_projection_dim=clip_hidden, guidance_embeds=guidance_embeds, axes_dims_rope=_rope_axes(head_dim))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
            up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
            block_out_channels=tuple(vae_blocks), layers_per_block=1, latent_channels=latent_channels,
            norm_num_groups=min(vae_blocks), use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=vae_shift_factor, scaling_factor=vae_scaling_factor,
        )
    finally:
        torch.random.set_rng_state(gen_state)
    for m in (te1, te2, transformer, vae):
        m.eval()  # modules built from configs start in train() mode (stack-notes P2)
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.1's scheduler settings (objectives.md 4.2)
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
                        tokenizer_2=tok2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny(out_dir: str | Path, *, family: str = "sd3", preset: str = "tiny", dual_attention: bool = False,
              seed: int = 0, **kwargs: Any) -> Path:
    """Build a tiny pipeline of ``family`` (sd3 | flux) and ``save_pretrained`` it to ``out_dir``
    (returned, absolute)."""
    out = Path(out_dir).expanduser().resolve()
    if family == "flux":
        if dual_attention:
            raise ValueError("dual_attention is an SD3.5 option; FLUX has no attn2")
        pipe = make_tiny_flux_pipeline(preset=preset, seed=seed, **kwargs)
    elif family == "sd3":
        pipe = make_tiny_pipeline(preset=preset, dual_attention=dual_attention, seed=seed, **kwargs)
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out)
    return out


def transformer_num_params(pipe) -> int:
    return sum(p.numel() for p in pipe.transformer.parameters())


def tiny_experiment_dict(model_dir: str | Path, name: str, **overrides: Any) -> dict[str, Any]:
    """The smallest useful experiment on a `make_tiny` model: 2 prompts x 2 images per epoch,
    one optimizer step, a 4-step rollout. For tests and perf scripts that measure the
    platform around the trainer (submission, tracking, preemption), not learning.
    `overrides` replace top-level keys; dict values are merged one level deep."""
    data: dict[str, Any] = {
        "name": name,
        "seed": 1,
        "pretrained": {"model": str(model_dir), "dtype": "fp32"},
        "resolution": 64,
        "mixed_precision": "no",
        "allow_tf32": False,
        "num_epochs": 4,
        "save_freq": 1000,
        "eval_freq": 2,
        "dataset": "tiny",
        "reward_fn": {"jpeg_compressibility": 1.0},
        "lora": {"rank": 4, "alpha": 8},
        "sample": {"num_steps": 4, "eval_num_steps": 3, "num_image_per_prompt": 2, "prompts_per_epoch": 2,
                   "max_batch_size_per_gpu": 4, "test_batch_size": 2, "max_sequence_length": 16},
        "train": {"batch_size": 2, "steps_per_epoch": 1, "train_timesteps": 1},
        "eval": {"max_prompts": 2, "at_start": False, "ema": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data
