"""Conformance-suite hooks and tiny offline models for GenEval.

No real weights exist offline, so the REAL loading / inference code paths (``from_pretrained``
of ``Mask2FormerForUniversalSegmentation``, ``AutoImageProcessor``, ``CLIPModel``,
``AutoTokenizer``) run on tiny randomly initialised models built from configs and saved with
``save_pretrained``. One tweak makes the tiny detector useful: its class head is biased so that
every query predicts ``boost_class`` (default "dog") with probability ~1, so detections pass the
0.3 threshold and the colour/rule path is exercised end to end. Its masks are random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
)
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from benchmarks.clip_tokenizer import bytes_to_unicode
from benchmarks.geneval.benchmark import GenEvalBenchmark
from benchmarks.geneval.detector import LABEL_ALIASES
from benchmarks.geneval.prompts import load_prompt_set, object_names

TINY_IMAGE_SIZE = 32  # CLIP vision input of the tiny model


def build_tiny_clip(path: str | Path, *, seed: int = 0) -> Path:
    """A ~50k-parameter CLIP + a character-level CLIP tokenizer, saved in HF format."""
    path = Path(path)
    chars = sorted(set(bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_tiny_detector(path: str | Path, *, seed: int = 0, boost_class: str | None = "dog") -> Path:
    """A ~120k-parameter Mask2Former (tiny Swin backbone) with COCO id2label, saved in HF format."""
    path = Path(path)
    # HF / COCO spellings for three classes (exercises the label mapping)
    hf_names = {v: k for k, v in LABEL_ALIASES.items() if k in ("mouse", "remote", "keyboard")}
    labels = [hf_names.get(n, n) for n in object_names()]
    swin = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=8,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    if boost_class is not None:
        with torch.no_grad():
            model.class_predictor.weight.zero_()
            model.class_predictor.bias.fill_(-10.0)
            model.class_predictor.bias[labels.index(boost_class)] = 10.0
    model.save_pretrained(path)
    Mask2FormerImageProcessorPil().save_pretrained(path)
    return path


def make_test_benchmark(tmp_path: str | Path, **options: Any):
    """GenEval with tiny random Mask2Former + CLIP, loaded through the real from_pretrained path."""
    tmp_path = Path(tmp_path)
    det = tmp_path / "tiny-mask2former"
    clip = tmp_path / "tiny-clip"
    if not (det / "config.json").is_file():
        build_tiny_detector(det)
    if not (clip / "config.json").is_file():
        build_tiny_clip(clip)
    options.setdefault("device", "cpu")
    options.setdefault("detector_options", {"shortest_edge": 64, "longest_edge": 96})
    return GenEvalBenchmark(detector_path=str(det), clip_path=str(clip), **options)


def make_unavailable_benchmark(tmp_path: str | Path):
    tmp_path = Path(tmp_path)
    return GenEvalBenchmark(
        detector_path=str(tmp_path / "missing-mask2former"),
        clip_path=str(tmp_path / "missing-clip"),
        device="cpu",
    )


def sample_inputs(n: int) -> tuple[list[str], list[dict]]:
    """The first ``n`` official GenEval records (cycled), prompts and metadata aligned."""
    recs = load_prompt_set("official")
    # one of each tag first, so small n still covers colour / position / counting rules
    order: list[dict] = []
    for tag in ("single_object", "colors", "position", "counting", "two_object", "color_attr"):
        order.append(next(r for r in recs if r["tag"] == tag))
    order += [r for r in recs if r not in order]
    meta = [order[i % len(order)] for i in range(n)]
    return [m["prompt"] for m in meta], [dict(m) for m in meta]


def malformed_metadata() -> list[dict]:
    return [{"tag": "not_a_tag", "include": [{"class": "dog", "count": 1}]}]
