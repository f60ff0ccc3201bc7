"""Tiny offline PickScore for tests: a randomly initialised CLIP built from a config.

Used by the shared conformance suite (``make_test_benchmark(tmp_path)``) and the PickScore tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from benchmarks.clip_tokenizer import make_clip_tokenizer
from benchmarks.pickscore.benchmark import PickScoreBenchmark


def build_tiny_pickscore(root: str | Path, seed: int = 0, logit_scale: float = 4.6052) -> tuple[Path, Path]:
    """Save a tiny random CLIPModel and a CLIPProcessor under ``root``; return (model_dir, processor_dir)."""
    root = Path(root)
    model_dir, proc_dir = root / "tiny-pickscore-model", root / "tiny-pickscore-processor"
    if (model_dir / "config.json").exists() and proc_dir.exists():
        return model_dir, proc_dir
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={"vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77,
                     "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=16,
        logit_scale_init_value=logit_scale,  # exp(4.6052) ~= 100, like trained CLIP checkpoints
    )
    model = CLIPModel(cfg).eval()
    model.save_pretrained(model_dir)
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 32}, resample=3, do_center_crop=True,
        crop_size={"height": 32, "width": 32}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=make_clip_tokenizer()).save_pretrained(proc_dir)
    return model_dir, proc_dir


# ------------------------------------------------------------------ conformance hooks
def make_test_benchmark(tmp_path):
    model_dir, proc_dir = build_tiny_pickscore(Path(tmp_path))
    return PickScoreBenchmark(model_path=str(model_dir), processor_path=str(proc_dir), device="cpu", batch_size=3)


def make_unavailable_benchmark(tmp_path):
    _, proc_dir = build_tiny_pickscore(Path(tmp_path))
    return PickScoreBenchmark(model_path=str(Path(tmp_path) / "no-such-pickscore-model"),
                              processor_path=str(proc_dir), device="cpu")


def sample_inputs(n: int) -> tuple[list[str], list[dict]]:
    base = ["a red apple on a wooden table", "a cat wearing a wizard hat, digital art",
            "a watercolor painting of a lighthouse at dusk", "an astronaut riding a horse on the moon"]
    return [f"{base[i % len(base)]} #{i}" for i in range(n)], [{} for _ in range(n)]


def malformed_metadata() -> list:
    return ["not-a-dict"]
