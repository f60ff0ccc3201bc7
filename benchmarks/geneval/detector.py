"""GenEval object detector: interface and the transformers Mask2Former implementation.

Official GenEval uses mmdet 2.x Mask2Former Swin-S (COCO instance segmentation,
``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``). Here the same architecture is run through
transformers (``Mask2FormerForUniversalSegmentation`` + ``AutoImageProcessor``); the default id
``facebook/mask2former-swin-small-coco-instance`` is FAIR's original Swin-S COCO instance
checkpoint (not the mmdet re-training), so absolute detection scores can differ slightly from
the official numbers. That is an ENGINE difference, reflected in ``Benchmark.engine``.

What is kept identical to mmdet's test path:
- preprocessing: keep-ratio resize to (short 800, long <= 1333), ImageNet mean/std, zero padding
  to a multiple of 32 (the HF processor *stretches* to the multiple when ``size_divisor`` is
  set, so we call it with ``size_divisor=0`` and pad ourselves);
- post-processing (mmdet ``MaskFormerFusionHead.instance_postprocess``): softmax over classes
  without the no-object column, top-100 (query, class) pairs, mask logits upsampled bilinearly
  to the padded input, cropped to the valid region, upsampled to the original size, binarised
  at logit > 0; score = class prob x mean sigmoid inside the mask; box = tight box of the mask
  with the "+1" on x2/y2 (mmdet ``mask2bbox``).
transformers' ``post_process_instance_segmentation`` is NOT used by default: it rescales masks
to a fixed 384x384, ignores the padding, and nearest-resizes binary masks, which changes
boxes and scores (``postprocess="hf"`` selects it anyway, for comparison).

COCO label mapping: the checkpoint's ``config.id2label`` names are mapped onto the 80 names of
``object_names.txt`` (which is in COCO thing-class order) by name, with aliases for the
COCO/HF spellings that differ ("mouse" -> "computer mouse", "remote" -> "tv remote",
"keyboard" -> "computer keyboard", plus VOC-style spellings such as "tvmonitor", "sofa",
"diningtable"). Labels that map to none of the 80 (e.g. panoptic "stuff" classes) are dropped.
A checkpoint with generic names ("LABEL_0", ...) and exactly 80 labels is mapped by index.
Fewer than 80 mappable classes is an error: the benchmark would silently never find some objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.geneval.color import _missing_model_message, resolve_device
from benchmarks.geneval.prompts import object_names
from benchmarks.geneval.rules import Detection

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DETECTOR_ENV = "AWM_GENEVAL_DETECTOR"

LABEL_ALIASES: dict[str, str] = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "tv monitor": "tv",
    "television": "tv",
    "sofa": "couch",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "hair dryer": "hair drier",
    "cellphone": "cell phone",
    "mobile phone": "cell phone",
    "donut": "donut",
    "doughnut": "donut",
}


@runtime_checkable
class Detector(Protocol):
    """``detect(images)``: per image, every candidate instance (no thresholding required;
    GenEval's own threshold / top-16 / NMS rules are applied afterwards)."""

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def coco_label_map(id2label: Mapping[Any, str], names: Sequence[str] | None = None) -> dict[int, str]:
    """Model label id -> GenEval class name (only the ids that map to one of the 80 names)."""
    names = list(names or object_names())
    wanted = {_norm(n): n for n in names}
    id2label = {int(k): str(v) for k, v in id2label.items()}
    generic = all(_norm(v).startswith("label ") or _norm(v) == f"label{k}" for k, v in id2label.items())
    if generic:
        if len(id2label) != len(names):
            raise BenchmarkError(
                f"geneval: detector config has {len(id2label)} generic labels; cannot map them onto the "
                f"{len(names)} COCO classes of object_names.txt"
            )
        return {i: names[i] for i in sorted(id2label)}
    out: dict[int, str] = {}
    for i, label in id2label.items():
        n = _norm(label)
        n = _norm(LABEL_ALIASES.get(n, n))
        if n in wanted:
            out[i] = wanted[n]
    missing = sorted(set(names) - set(out.values()))
    if missing:
        raise BenchmarkError(
            f"geneval: detector labels cover only {len(set(out.values()))} of the 80 COCO classes; "
            f"missing: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. "
            "Is this a COCO instance-segmentation checkpoint?"
        )
    return out


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """mmdet ``mask2bbox``: [x_min, y_min, x_max + 1, y_max + 1]; zeros for an empty mask."""
    xs = np.flatnonzero(mask.any(axis=0))
    ys = np.flatnonzero(mask.any(axis=1))
    if xs.size == 0 or ys.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def mmdet_instance_postprocess(
    class_logits: Any,
    mask_logits: Any,
    *,
    padded_hw: tuple[int, int],
    valid_hw: tuple[int, int],
    orig_hw: tuple[int, int],
    max_per_image: int = 100,
    min_score: float = 0.0,
) -> list[tuple[int, float, np.ndarray]]:
    """(label id, score, HxW bool mask) per instance, mmdet Mask2Former semantics.

    ``min_score`` drops (query, class) pairs whose class probability is already <= min_score:
    the final score (class prob x mask score, mask score < 1) can then never exceed it, so
    with ``min_score`` <= the GenEval threshold the kept set is unchanged; it only saves memory.
    """
    scores = F.softmax(class_logits.float(), dim=-1)[:, :-1]  # [Q, C] without no-object
    n_q, n_c = scores.shape
    k = min(max_per_image, n_q * n_c)
    top_scores, top_idx = scores.flatten().topk(k, sorted=False)
    keep = top_scores > min_score
    top_scores, top_idx = top_scores[keep], top_idx[keep]
    if top_idx.numel() == 0:
        return []
    labels = top_idx % n_c
    queries = torch.div(top_idx, n_c, rounding_mode="floor")
    masks = mask_logits[queries].float()[None]  # [1, k, h, w]
    masks = F.interpolate(masks, size=padded_hw, mode="bilinear", align_corners=False)
    masks = masks[..., : valid_hw[0], : valid_hw[1]]
    masks = F.interpolate(masks, size=orig_hw, mode="bilinear", align_corners=False)[0]
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    det_scores = (top_scores * mask_scores).tolist()
    binary_np = binary.cpu().numpy()
    return [(int(lbl), float(s), binary_np[j]) for j, (lbl, s) in enumerate(zip(labels.tolist(), det_scores))]


class Mask2FormerDetector:
    """COCO instance segmentation with transformers Mask2Former (see module docstring)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = "auto",
        dtype: str = "float32",
        shortest_edge: int = 800,
        longest_edge: int = 1333,
        size_divisor: int = 32,
        max_per_image: int = 100,
        min_score: float = 0.0,
        batch_size: int = 4,
        postprocess: str = "mmdet",
    ) -> None:
        if postprocess not in ("mmdet", "hf"):
            raise BenchmarkError(
                f"geneval detector: postprocess must be 'mmdet' or 'hf', got {postprocess!r}"
            )
        if dtype not in ("float32", "float16", "bfloat16"):
            raise BenchmarkError(f"geneval detector: dtype must be float32/float16/bfloat16, got {dtype!r}")
        self.model_path = str(model_path or os.environ.get(DETECTOR_ENV) or DEFAULT_DETECTOR)
        self.device = device
        self.dtype = dtype
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge
        self.size_divisor = size_divisor
        self.max_per_image = max_per_image
        self.min_score = min_score
        self.batch_size = batch_size
        self.postprocess = postprocess
        self._model: Any = None
        self._processor: Any = None
        self._label_map: dict[int, str] = {}

    def load(self) -> None:
        if self._model is not None:
            return
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(self.model_path)
            processor = AutoImageProcessor.from_pretrained(self.model_path)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                _missing_model_message(
                    "Mask2Former detector", self.model_path, DETECTOR_ENV, DEFAULT_DETECTOR, exc
                )
            ) from exc
        self._label_map = coco_label_map(model.config.id2label)
        self.device = resolve_device(self.device)
        self._model = model.eval().to(self.device, dtype=getattr(torch, self.dtype))
        self._processor = processor

    def _prepare(self, images: Sequence[Image.Image]) -> tuple[Any, list[tuple[int, int]]]:
        inputs = self._processor(
            images=list(images),
            size={"shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge},
            size_divisor=0,
            return_tensors="pt",
        )
        pix = inputs["pixel_values"]
        pmask = inputs["pixel_mask"]
        valid = [(int(m.any(dim=1).sum()), int(m.any(dim=0).sum())) for m in pmask]
        h, w = pix.shape[-2:]
        d = max(self.size_divisor, 1)
        ph, pw = int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)
        if (ph, pw) != (h, w):
            pix = F.pad(pix, (0, pw - w, 0, ph - h), value=0.0)  # mmdet pads the normalised image with 0
        return pix.to(self.device, dtype=getattr(torch, self.dtype)), valid

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        self.load()
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pix, valid = self._prepare(batch)
            with torch.no_grad():
                res = self._model(pixel_values=pix)
            if self.postprocess == "hf":
                out.extend(self._hf_postprocess(res, batch))
                continue
            for j, im in enumerate(batch):
                inst = mmdet_instance_postprocess(
                    res.class_queries_logits[j],
                    res.masks_queries_logits[j],
                    padded_hw=tuple(pix.shape[-2:]),
                    valid_hw=valid[j],
                    orig_hw=(im.height, im.width),
                    max_per_image=self.max_per_image,
                    min_score=self.min_score,
                )
                dets = []
                for label, score, mask in inst:
                    name = self._label_map.get(label)
                    if name is None:
                        continue
                    dets.append(Detection(name, mask_to_box(mask), score, mask))
                out.append(dets)
        return out

    def _hf_postprocess(self, res: Any, batch: Sequence[Image.Image]) -> list[list[Detection]]:
        results = self._processor.post_process_instance_segmentation(
            res,
            threshold=self.min_score,
            target_sizes=[(im.height, im.width) for im in batch],
            return_binary_maps=True,
        )
        out = []
        for r in results:
            dets = []
            seg = r["segmentation"]
            infos = r["segments_info"]
            for k, info in enumerate(infos):
                name = self._label_map.get(int(info["label_id"]))
                if name is None or seg is None or seg.dim() != 3:
                    continue
                mask = seg[k].bool().cpu().numpy()
                dets.append(Detection(name, mask_to_box(mask), float(info["score"]), mask))
            out.append(dets)
        return out
