"""GenEval rule engine: detection filtering, the official verdict, and the Flow-GRPO partial score.

Pure Python + numpy (no model): everything here is driven by :class:`Detection` lists and a
colour callback, so every rule is testable with synthetic detections.

Official semantics follow ``evaluation/evaluate_images.py`` of djghosh13/geneval
(``evaluate_image`` + ``evaluate``); the partial score follows ``evaluate_reward`` of
yifan123/reward-server ``reward_server/gen_eval.py`` (used unchanged by Flow-GRPO and AWM).
See docs/benchmarks.md (shared spec) sections 2.2, 2.3 and trap list 7.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from benchmarks.geneval.prompts import COLORS, TAGS

#: ``(objects, class_name) -> one colour name per object`` (in the objects' order).
ColorFn = Callable[[Sequence["Detection"], str], list[str]]


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected instance.

    ``box`` is ``[x1, y1, x2, y2]`` in pixels of the scored image (y grows downward).
    ``mask`` is an ``H x W`` bool array (same size as the image) or None.
    ``color`` is a precomputed colour (detections-file mode); the model path leaves it None
    and classifies colours with CLIP instead.
    """

    class_name: str
    box: tuple[float, float, float, float]
    score: float
    mask: Any = None
    color: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "class": self.class_name,
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 6),
        }
        if self.color is not None:
            d["color"] = self.color
        return d


class ScoringOptions(BaseModel):
    """The official ``evaluate_images.py`` options (defaults = upstream defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.3, ge=0.0, le=1.0, description="keep detections with score > threshold")
    counting_threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="threshold for EVERY class when tag == counting"
    )
    max_objects: int = Field(16, ge=1, description="keep at most this many detections per class")
    max_overlap: float = Field(
        1.0, gt=0.0, description="greedy IoU suppression only when < 1 (upstream: no NMS)"
    )
    position_threshold: float = Field(0.1, ge=0.0, description="margin = this x (size A + size B) per axis")
    bgcolor: str = Field(
        "#999", description="canvas outside the instance mask for colour crops ('original' = none)"
    )
    crop: bool = Field(True, description="crop the colour input to the box")

    def is_default(self) -> bool:
        return self == ScoringOptions()


class RewardQuirks(BaseModel):
    """Flow-GRPO / AWM reward-path behaviours; defaults reproduce upstream so rewards match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    negative_count_term: bool = Field(
        True, description="upstream: count term 1-|count-n|/count is NOT clipped (can be negative)"
    )
    position_extra_one: bool = Field(
        True, description="upstream: after a violating pair a 0.0 AND an unconditional 1.0 are appended"
    )
    use_exclude: bool = Field(
        False,
        description="upstream ignores exclude clauses in score and strict_correct (not upstream if True)",
    )
    jpeg_quality: int | None = Field(
        75, ge=1, le=100, description="JPEG round trip before scoring (PIL default q=75); None = off"
    )
    detector_channel_swap: bool = Field(
        True,
        description=(
            "upstream passes RGB ndarrays to mmdet inference_detector, which assumes BGR and swaps: "
            "the detector sees R and B exchanged (CLIP does not)"
        ),
    )


# --------------------------------------------------------------------------------------------
# Detection filtering
# --------------------------------------------------------------------------------------------


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU with upstream's "+1" pixel convention."""

    def area(b: Sequence[float]) -> float:
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area(
        [max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])]
    )
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def confidence_threshold(tag: str, opts: ScoringOptions) -> float:
    # Trap 1: the threshold depends on the TAG (every class of a counting image), not the clause.
    return opts.counting_threshold if tag == "counting" else opts.threshold


def filter_detections(
    detections: Sequence[Detection], tag: str, opts: ScoringOptions | None = None
) -> dict[str, list[Detection]]:
    """Per class: sort by score (desc), keep score > thr (strict), first ``max_objects``, then
    greedy IoU suppression only if ``max_overlap < 1``. Classes without detections are absent.

    The sort is ``np.argsort(scores)[::-1]`` over the detector's order, exactly as upstream, so
    even ties come out in the same order.
    """
    opts = opts or ScoringOptions()
    thr = confidence_threshold(tag, opts)
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        by_class.setdefault(d.class_name, []).append(d)
    out: dict[str, list[Detection]] = {}
    for cls, dets in by_class.items():
        scores = np.asarray([float(d.score) for d in dets], dtype=np.float64)
        ordering = np.argsort(scores)[::-1]
        ordering = ordering[scores[ordering] > thr]
        order = ordering[: opts.max_objects].tolist()
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append(dets[best])
            if opts.max_overlap < 1:
                order = [o for o in order if compute_iou(dets[best].box, dets[o].box) < opts.max_overlap]
        if kept:
            out[cls] = kept
    return out


# --------------------------------------------------------------------------------------------
# Relative position
# --------------------------------------------------------------------------------------------


def relative_position(
    box_a: Sequence[float], box_b: Sequence[float], position_threshold: float = 0.1
) -> set[str]:
    """Relations of A relative to B (upstream ``relative_position``; image y points down)."""
    boxes = np.array([list(box_a)[:4], list(box_b)[:4]], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - position_threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()  # overlapping / too close: no relation at all
    dx, dy = revised / np.linalg.norm(offset)  # normalised by the ORIGINAL offset norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """Outcome of one rule set on one image."""

    correct: bool
    reasons: list[str] = field(default_factory=list)  # every failure, human readable, in order
    score: float | None = None  # partial score (Flow-GRPO variant only)
    terms: list[float] = field(default_factory=list)  # the partial-score terms (audit)
    colors: dict[int, list[str]] = field(default_factory=dict)  # include index -> predicted colours

    @property
    def failing_clause(self) -> str | None:
        return self.reasons[0] if self.reasons else None


def _n(cls: str, n: int) -> str:
    return f"{n} {cls}"


def _colour_summary(colors: Sequence[str]) -> str:
    present = [c for c in COLORS if c in colors]
    extra = sorted({c for c in colors if c not in COLORS}, key=str)  # e.g. None (no colour given)
    parts = [f"{list(colors).count(c)} {c}" for c in present] + [
        f"{list(colors).count(c)} {c}" for c in extra
    ]
    return ", ".join(parts) if parts else "none"


def _check_position(
    found: Sequence[Detection], targets: Sequence[Detection], rel: str, opts: ScoringOptions
) -> tuple[bool, set[str]]:
    """All pairs (obj, target) must have ``rel``; returns (ok, relations of the first failing pair)."""
    for obj in found:
        for tgt in targets:
            rels = relative_position(obj.box, tgt.box, opts.position_threshold)
            if rel not in rels:
                return False, rels
    return True, set()


def _rels_text(rels: set[str]) -> str:
    return " and ".join(sorted(rels)) if rels else "no clear relation (overlapping or too close)"


def evaluate_official(
    objects: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    color_fn: ColorFn,
    opts: ScoringOptions | None = None,
) -> Verdict:
    """Official GenEval verdict (``evaluate``): include clauses AND, exclude clauses OR.

    ``objects`` is the output of :func:`filter_detections` (per class, sorted by confidence).
    """
    opts = opts or ScoringOptions()
    tag = metadata["tag"]
    v = Verdict(correct=True)
    matched_groups: list[Sequence[Detection] | None] = []
    excl_counts = {e["class"]: e["count"] for e in metadata.get("exclude", []) or []}
    for i, req in enumerate(metadata.get("include", [])):
        cls, count = req["class"], int(req["count"])
        matched = True
        # Trap 3: only the top-`count` most confident detections are used.
        found = list(objects.get(cls, []))[:count]
        if len(found) < count:
            v.correct = matched = False
            if tag == "counting" and excl_counts.get(cls) == count + 1:
                v.reasons.append(
                    f"counting: found {len(objects.get(cls, []))} {cls}, expected exactly {count}"
                )
            else:
                v.reasons.append(f"{tag}: found {len(found)} {cls}, expected at least {count}")
        else:
            if "color" in req:
                # Trap 4: colour checks only the top-`count` objects.
                colors = list(color_fn(found, cls))
                v.colors[i] = colors
                if colors.count(req["color"]) < count:
                    v.correct = matched = False
                    v.reasons.append(
                        f"{tag}: expected {_n(req['color'] + ' ' + cls, count)}, found "
                        f"{colors.count(req['color'])} {req['color']} (colours of the top {count}: {_colour_summary(colors)})"
                    )
            if "position" in req and matched:
                rel, target = req["position"][0], int(req["position"][1])
                tgt_cls = metadata["include"][target]["class"]
                if matched_groups[target] is None:
                    v.correct = matched = False
                    v.reasons.append(f"{tag}: no {tgt_cls} matched, so {cls} cannot be {rel} it")
                else:
                    ok, rels = _check_position(found, matched_groups[target], rel, opts)
                    if not ok:
                        v.correct = matched = False
                        v.reasons.append(
                            f"{tag}: expected {cls} {rel} {tgt_cls}, found {cls} {_rels_text(rels)} {tgt_cls}"
                        )
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []) or []:
        cls, count = req["class"], int(req["count"])
        # The exclude counts ALL kept detections (threshold, max_objects), not the top-count list.
        n_all = len(objects.get(cls, []))
        if n_all >= count:
            v.correct = False
            if tag == "counting":
                v.reasons.append(f"counting: found {n_all} {cls}, expected exactly {count - 1}")
            else:
                v.reasons.append(f"{tag}: found {n_all} {cls}, expected fewer than {count}")
    return v


def evaluate_partial(
    objects: Mapping[str, Sequence[Detection]],
    metadata: Mapping[str, Any],
    color_fn: ColorFn,
    opts: ScoringOptions | None = None,
    quirks: RewardQuirks | None = None,
) -> Verdict:
    """Flow-GRPO / AWM ``evaluate_reward``: ``correct`` is upstream's ``strict_correct`` (exact
    counts for every clause, exclusions ignored) and ``score`` the partial training reward."""
    opts = opts or ScoringOptions()
    quirks = quirks or RewardQuirks()
    tag = metadata["tag"]
    v = Verdict(correct=True)
    terms: list[float] = []
    matched_groups: list[Sequence[Detection] | None] = []

    def count_term(count: int, n: int) -> float:
        t = 1 - abs(count - n) / count
        return t if quirks.negative_count_term else max(t, 0.0)

    for i, req in enumerate(metadata.get("include", [])):
        cls, count = req["class"], int(req["count"])
        matched = True
        found = list(objects.get(cls, []))  # ALL kept detections, not truncated to count
        terms.append(count_term(count, len(found)))
        if len(found) != count:
            v.correct = matched = False
            v.reasons.append(f"{tag}: found {len(found)} {cls}, expected exactly {count}")
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                colors = list(color_fn(found, cls))
                v.colors[i] = colors
                n_ok = colors.count(req["color"])
                terms.append(count_term(count, n_ok))
                if n_ok != count:
                    v.correct = matched = False
                    v.reasons.append(
                        f"{tag}: expected {_n(req['color'] + ' ' + cls, count)}, found {n_ok} {req['color']} "
                        f"(colours: {_colour_summary(colors)})"
                    )
            if "position" in req and matched:
                rel, target = req["position"][0], int(req["position"][1])
                tgt_cls = metadata["include"][target]["class"]
                if matched_groups[target] is None:
                    v.correct = matched = False
                    v.reasons.append(f"{tag}: no {tgt_cls} matched, so {cls} cannot be {rel} it")
                    terms.append(0.0)  # no extra 1.0 in this branch (upstream)
                else:
                    ok, rels = _check_position(found, matched_groups[target], rel, opts)
                    if not ok:
                        v.correct = matched = False
                        v.reasons.append(
                            f"{tag}: expected {cls} {rel} {tgt_cls}, found {cls} {_rels_text(rels)} {tgt_cls}"
                        )
                        terms.append(0.0)
                    if ok or quirks.position_extra_one:
                        # Upstream appends 1.0 unconditionally here: a failed relation scores [.., 0, 1].
                        terms.append(1.0)
        matched_groups.append(found if matched else None)
    if quirks.use_exclude:  # not upstream: opt-in
        for req in metadata.get("exclude", []) or []:
            cls, count = req["class"], int(req["count"])
            n_all = len(objects.get(cls, []))
            terms.append(0.0 if n_all >= count else 1.0)
            if n_all >= count:
                v.correct = False
                v.reasons.append(f"{tag}: found {n_all} {cls}, expected fewer than {count}")
    v.terms = terms
    v.score = float(sum(terms) / len(terms)) if terms else 0.0
    return v


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def per_tag_accuracy(tags: Sequence[str], correct: Sequence[bool | float]) -> dict[str, float]:
    """Mean of ``correct`` per tag over images (all 4 images of a prompt count)."""
    acc: dict[str, list[float]] = {}
    for t, c in zip(tags, correct):
        acc.setdefault(t, []).append(float(c))
    return {t: float(np.mean(acc[t])) for t in TAGS if t in acc} | {
        t: float(np.mean(acc[t])) for t in sorted(acc) if t not in TAGS
    }


def overall_score(per_tag: Mapping[str, float]) -> float:
    """Official overall: UNWEIGHTED mean of the per-tag accuracies (of the tags present)."""
    if not per_tag:
        return math.nan
    return float(np.mean(list(per_tag.values())))
