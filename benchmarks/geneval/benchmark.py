"""GenEval benchmark: detector + colour classifier + rule engine, aggregation, rewards, and the
model-free detections-file scorer. Semantics: ``benchmarks/geneval/README.md``."""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from benchmarks.base import (
    Benchmark,
    BenchmarkSummary,
    ModelStatus,
    PromptSet,
    RewardFn,
    SampleRecord,
    to_rgb,
    validate_batch,
)
from benchmarks.errors import BenchmarkError
from benchmarks.geneval import REWARD_VERSIONS, VERSION
from benchmarks.geneval.color import (
    CLIP_ENV,
    DEFAULT_CLIP,
    ClipColorClassifier,
    make_color_crop,
    model_status,
)
from benchmarks.geneval.detector import DEFAULT_DETECTOR, DETECTOR_ENV, Mask2FormerDetector
from benchmarks.geneval.prompts import (
    COLORS,
    DATA_DIR,
    DATA_SHA256,
    PROMPT_SETS,
    TAGS,
    object_names,
    read_metadata,
    validate_metadata,
)
from benchmarks.geneval.rules import (
    Detection,
    RewardQuirks,
    ScoringOptions,
    Verdict,
    evaluate_official,
    evaluate_partial,
    filter_detections,
    overall_score,
    per_tag_accuracy,
)

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.geneval.color import ColorClassifier
    from benchmarks.geneval.detector import Detector

ENGINES = ("hf",)
VARIANTS = ("flowgrpo_partial", "strict")
_VARIANT_ALIASES = {"official": "strict", "partial": "flowgrpo_partial"}


def _options_hash(d: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(d), sort_keys=True).encode()).hexdigest()[:8]


def scoring_version(opts: ScoringOptions) -> str:
    """VERSION, plus a hash of the non-default scoring options (numbers never mix silently)."""
    if opts.is_default():
        return VERSION
    changed = {k: v for k, v in opts.model_dump().items() if v != ScoringOptions.model_fields[k].default}
    return f"{VERSION}+opts-{_options_hash(changed)}"


def _scoring_options(kwargs: Mapping[str, Any], where: str) -> ScoringOptions:
    unknown = sorted(set(kwargs) - set(ScoringOptions.model_fields))
    if unknown:
        raise BenchmarkError(
            f"{where}: unknown option(s) {unknown}; scoring options are {sorted(ScoringOptions.model_fields)}"
        )
    try:
        return ScoringOptions(**kwargs)
    except ValidationError as e:
        raise BenchmarkError(
            f"{where}: invalid scoring option: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
        ) from None


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode + decode as JPEG with PIL (Flow-GRPO's ``img.save(buffer, format="JPEG")``, q=75)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf, formats=["JPEG"])
    out.load()
    return out.convert("RGB")


def swap_channels(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1]))


@dataclass
class ImageResult:
    """Everything the rules concluded about one image."""

    metadata: dict[str, Any]
    kept: dict[str, list[Detection]]
    official: Verdict
    partial: Verdict

    def record(self) -> dict[str, Any]:
        colors = {str(k): v for k, v in self.official.colors.items()}
        for k, v in self.partial.colors.items():
            colors.setdefault(str(k), v)
        return {
            "score": 1.0 if self.official.correct else 0.0,
            "correct": bool(self.official.correct),
            "tag": self.metadata["tag"],
            "prompt": self.metadata.get("prompt"),
            "failing_clause": self.official.failing_clause,
            "reasons": list(self.official.reasons),
            "detections": {cls: [d.to_json() for d in dets] for cls, dets in self.kept.items()},
            "colors": colors,
            # Flow-GRPO reward-server fields on the SAME detections (no JPEG here; audit only)
            "partial_score": float(self.partial.score if self.partial.score is not None else 0.0),
            "strict_correct": bool(self.partial.correct),
        }


def _colour_jobs(kept: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any]) -> list[Detection]:
    """Objects whose colour the rules will ask for: the top-`count` of each colour clause (the
    partial score asks for all kept objects only when there are exactly `count`, the same set)."""
    jobs: list[Detection] = []
    for req in metadata.get("include", []):
        if "color" not in req:
            continue
        found = list(kept.get(req["class"], []))[: int(req["count"])]
        if len(found) == int(req["count"]):
            jobs.extend(found)
    return jobs


def evaluate_detections(
    kept_per_image: Sequence[dict[str, list[Detection]]],
    metadata: Sequence[Mapping[str, Any]],
    colors_of: Mapping[int, str | None] | None,
    opts: ScoringOptions,
    quirks: RewardQuirks | None = None,
) -> list[ImageResult]:
    """Apply both rule sets. ``colors_of`` maps ``id(detection)`` -> colour (precomputed by CLIP);
    None means "use ``Detection.color``" (detections-file mode: a missing colour fails)."""

    def color_fn(objs: Sequence[Detection], cls: str) -> list[str]:
        if colors_of is None:
            return [o.color for o in objs]  # type: ignore[misc]
        try:
            return [colors_of[id(o)] for o in objs]  # type: ignore[misc]
        except KeyError:  # pragma: no cover - _colour_jobs covers every request
            raise BenchmarkError(f"geneval: internal error: colour of a {cls} was not computed") from None

    out = []
    for kept, meta in zip(kept_per_image, metadata):
        off = evaluate_official(kept, meta, color_fn, opts)
        part = evaluate_partial(kept, meta, color_fn, opts, quirks)
        out.append(ImageResult(dict(meta), kept, off, part))
    return out


# ------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------


def aggregate_records(
    records: Sequence[SampleRecord],
    *,
    name: str,
    version: str,
    engine: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> BenchmarkSummary:
    """Official GenEval summary: per-tag accuracy over images, overall = UNWEIGHTED mean of the
    per-tag accuracies. CI: bootstrap over prompts stratified by tag (prompts = distinct prompt
    texts, so the 4 copies of a prompt in test_metadata.jsonl resample together)."""
    records = list(records)
    if not records:
        raise BenchmarkError(f"{name}: cannot aggregate zero records")
    tags, correct = [], []
    for r in records:
        tag = r.extra.get("tag")
        if tag is None:
            raise BenchmarkError(
                f"{name}: record prompt {r.prompt_index} sample {r.sample_index} has no 'tag'"
            )
        if not math.isfinite(float(r.score)):
            raise BenchmarkError(
                f"{name}: non-finite score for prompt {r.prompt_index} sample {r.sample_index}"
            )
        tags.append(tag)
        correct.append(float(r.score))
    per_tag = per_tag_accuracy(tags, correct)
    overall = overall_score(per_tag)

    # stratified bootstrap: per tag, resample prompts; per-tag acc = image-weighted mean
    groups: dict[str, dict[str, list[float]]] = {}
    for r, t, c in zip(records, tags, correct):
        prompt = r.extra.get("prompt")
        key = f"p:{prompt}" if isinstance(prompt, str) else f"i:{r.prompt_index:09d}"
        groups.setdefault(t, {}).setdefault(key, []).append(c)
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot, dtype=np.float64)
    for t in per_tag:  # fixed tag order and sorted prompt keys: independent of record order
        keys = sorted(groups[t])
        sums = np.array([sum(groups[t][k]) for k in keys], dtype=np.float64)
        cnts = np.array([len(groups[t][k]) for k in keys], dtype=np.float64)
        idx = rng.integers(0, sums.size, size=(n_boot, sums.size))
        boot += sums[idx].sum(axis=1) / cnts[idx].sum(axis=1)
    boot /= len(per_tag)
    lo, hi = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
    n_prompts = sum(len(g) for g in groups.values())
    partial = [r.extra.get("partial_score") for r in records]
    rewards = [r.extra.get("reward") for r in records]
    strict = [r.extra.get("strict_correct") for r in records]
    extra: dict[str, Any] = {
        "per_tag": per_tag,
        "per_tag_n": {t: tags.count(t) for t in per_tag},
        "overall_definition": "unweighted mean of the per-tag image accuracies (official GenEval)",
        "complete": all(t in per_tag for t in TAGS),
        "tags_missing": [t for t in TAGS if t not in per_tag],
        "image_accuracy": float(np.mean(correct)),  # = Flow-GRPO's eval_reward_accuracy, NOT the overall
        "n_prompts": n_prompts,
        "n_boot": n_boot,
        "seed": seed,
    }
    if all(p is not None for p in partial):
        extra["partial_score_mean"] = float(np.mean(partial))
    if all(x is not None for x in rewards):
        extra["reward_mean"] = float(np.mean(rewards))  # = Flow-GRPO's eval_reward_geneval
    if all(s is not None for s in strict):
        extra["strict_accuracy"] = float(np.mean([float(s) for s in strict]))
    return BenchmarkSummary(
        benchmark=name,
        version=version,
        engine=engine,
        n=len(records),
        score=overall,
        ci_low=lo,
        ci_high=hi,
        extra=extra,
    )


# ------------------------------------------------------------------------------------------------
# Benchmark
# ------------------------------------------------------------------------------------------------


class GenEvalBenchmark(Benchmark):
    """GenEval with a :class:`Detector` and a :class:`ColorClassifier` (lazy-loaded)."""

    name = "geneval"
    default_prompt_set = "test"
    default_samples_per_prompt = 4  # the official protocol: 4 images per prompt
    prompt_file_format = "jsonl"

    def __init__(
        self,
        *,
        detector_path: str | None = None,
        clip_path: str | None = None,
        device: str | None = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
        engine: str | None = None,
        workers: int | None = None,
        detector: Detector | None = None,
        color_classifier: ColorClassifier | None = None,
        detector_options: Mapping[str, Any] | None = None,
        record_reward: bool = True,
        **scoring: Any,
    ) -> None:
        if engine not in (None, *ENGINES):
            raise BenchmarkError(f"geneval: unknown engine {engine!r}; available: {', '.join(ENGINES)}")
        del workers  # GPU-bound; a single process
        self.options = _scoring_options(scoring, "geneval")
        if detector is None:
            det_opts = dict(detector_options or {})
            # Pruning below the lowest threshold is exact (see mmdet_instance_postprocess).
            det_opts.setdefault("min_score", min(self.options.threshold, self.options.counting_threshold))
            try:
                detector = Mask2FormerDetector(
                    detector_path, device=device, dtype=dtype, batch_size=batch_size, **det_opts
                )
            except TypeError as e:
                raise BenchmarkError(f"geneval: bad detector_options: {e}") from None
        if color_classifier is None:
            color_classifier = ClipColorClassifier(clip_path, device=device, batch_size=16)
        self.detector = detector
        self.color_classifier = color_classifier
        self.record_reward = bool(record_reward)

    # ----------------------------------------------------------------- identity
    @property
    def version(self) -> str:  # type: ignore[override]
        return scoring_version(self.options)

    @property
    def engine(self) -> str:
        det = getattr(self.detector, "model_path", None)
        clip = getattr(self.color_classifier, "model_path", None)
        det_s = Path(det).name if det else type(self.detector).__name__
        clip_s = Path(clip).name if clip else type(self.color_classifier).__name__
        return f"hf:{det_s}+{clip_s}"

    def prompt_sets(self) -> dict[str, PromptSet]:
        return {
            name: PromptSet.from_jsonl(name, DATA_DIR / fname, DATA_SHA256[fname])
            for name, fname in PROMPT_SETS.items()
        }

    def check_models(self) -> ModelStatus:
        parts, ok = [], True
        for obj, kind, env, default in (
            (self.detector, "Mask2Former detector", DETECTOR_ENV, DEFAULT_DETECTOR),
            (self.color_classifier, "CLIP colour classifier", CLIP_ENV, DEFAULT_CLIP),
        ):
            path = getattr(obj, "model_path", None)
            if path is None:
                parts.append(f"{kind}: custom {type(obj).__name__}")
                continue
            avail, detail = model_status(str(path), kind, env, default)
            ok &= avail
            parts.append(detail)
        return ModelStatus(ok, "; ".join(parts))

    # ----------------------------------------------------------------- scoring
    def _check_inputs(
        self, images: Sequence[Any], prompts: Sequence[Any], metadata: Sequence[Any] | None
    ) -> list[dict]:
        meta = validate_batch(self.name, images, prompts, metadata)
        for i, (p, m) in enumerate(zip(prompts, meta)):
            problem = validate_metadata(m)
            if problem:
                raise BenchmarkError(
                    f"geneval: sample {i}: bad metadata ({problem}); GenEval needs each prompt's metadata record "
                    "(tag/include/exclude as in evaluation_metadata.jsonl)"
                )
            if "prompt" in m and m["prompt"] != p:
                raise BenchmarkError(
                    f"geneval: sample {i}: prompt {p!r} does not match its metadata prompt {m['prompt']!r}"
                )
        return meta

    def evaluate(
        self,
        images: Sequence[Image.Image],
        metadata: Sequence[dict],
        *,
        jpeg_quality: int | None = None,
        channel_swap: bool = False,
        quirks: RewardQuirks | None = None,
    ) -> list[ImageResult]:
        """Detect, filter, classify colours (batched over the whole batch) and apply the rules."""
        rgb = [to_rgb(im) for im in images]
        if jpeg_quality is not None:
            rgb = [jpeg_roundtrip(im, jpeg_quality) for im in rgb]
        det_in = [swap_channels(im) for im in rgb] if channel_swap else rgb
        dets = self.detector.detect(det_in)
        if len(dets) != len(rgb):
            raise BenchmarkError(f"geneval: detector returned {len(dets)} results for {len(rgb)} images")
        kept = [filter_detections(d, m["tag"], self.options) for d, m in zip(dets, metadata)]
        crops, names, owners = [], [], []
        for im, k, m in zip(rgb, kept, metadata):
            for det in _colour_jobs(k, m):
                crops.append(make_color_crop(im, det, self.options.bgcolor, self.options.crop))
                names.append(det.class_name)
                owners.append(id(det))
        colors = self.color_classifier.classify(crops, names) if crops else []
        if len(colors) != len(crops):
            raise BenchmarkError(
                f"geneval: colour classifier returned {len(colors)} colours for {len(crops)} crops"
            )
        bad = [c for c in colors if c not in COLORS]
        if bad:
            raise BenchmarkError(f"geneval: colour classifier returned unknown colour(s) {bad[:3]}")
        return evaluate_detections(kept, metadata, dict(zip(owners, colors)), self.options, quirks)

    def score_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> list[dict]:
        """Official verdict per image (``score`` 1.0/0.0) + audit fields; with ``record_reward``
        also ``reward`` = the default training reward (``as_reward()``: Flow-GRPO partial score on
        the upstream reward path, JPEG q=75 + detector channel swap, i.e. a second detector pass)."""
        meta = self._check_inputs(images, prompts, metadata)
        results = self.evaluate(images, meta)
        records = [r.record() for r in results]
        if self.record_reward and records:
            q = RewardQuirks()
            if q.jpeg_quality is None and not q.detector_channel_swap:
                rres = results
            else:
                rres = self.evaluate(
                    images, meta, jpeg_quality=q.jpeg_quality, channel_swap=q.detector_channel_swap, quirks=q
                )
            for rec, rr in zip(records, rres):
                rec["reward"] = float(rr.partial.score if rr.partial.score is not None else 0.0)
        return records

    def aggregate(
        self, records: Sequence[SampleRecord], *, n_boot: int = 1000, seed: int = 0
    ) -> BenchmarkSummary:
        return aggregate_records(
            records, name=self.name, version=self.version, engine=self.engine, n_boot=n_boot, seed=seed
        )

    # ----------------------------------------------------------------- reward
    def as_reward(self, **opts: Any) -> RewardFn:
        """Training reward. ``variant``: "flowgrpo_partial" (default; Flow-GRPO/AWM partial score)
        or "strict" (alias "official": binary official verdict). Quirk flags (RewardQuirks) override
        the variant's defaults: flowgrpo_partial uses upstream's reward path (JPEG q=75, detector
        channel swap); strict uses the official pipeline (no JPEG, no swap).

        Returns ``{"geneval": variant reward, "geneval_partial": partial score,
        "geneval_strict": reward-server strict_correct (0/1), "geneval_accuracy": official verdict (0/1)}``.
        """
        variant = str(opts.pop("variant", "flowgrpo_partial"))
        return self._make_reward_fn(_VARIANT_ALIASES.get(variant, variant), opts)

    def _make_reward_fn(self, variant: str, overrides: Mapping[str, Any]) -> RewardFn:
        if variant not in VARIANTS:
            raise BenchmarkError(
                f"geneval: unknown reward variant {variant!r}; available: {', '.join(VARIANTS)} (alias official)"
            )
        unknown = sorted(set(overrides) - set(RewardQuirks.model_fields))
        if unknown:
            raise BenchmarkError(
                f"geneval reward: unknown option(s) {unknown}; reward options are variant, {sorted(RewardQuirks.model_fields)}"
            )
        base = (
            RewardQuirks()
            if variant == "flowgrpo_partial"
            else RewardQuirks(jpeg_quality=None, detector_channel_swap=False)
        )
        try:
            quirks = RewardQuirks(**{**base.model_dump(), **overrides})
        except ValidationError as e:
            raise BenchmarkError(
                f"geneval reward: invalid option: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
            ) from None
        version = REWARD_VERSIONS[variant]
        changed = {k: v for k, v in quirks.model_dump().items() if v != base.model_dump()[k]}
        if changed or not self.options.is_default():
            version += f"+opts-{_options_hash({**changed, **self.options.model_dump()})}"

        def reward_fn(images, prompts, metadata=None):
            meta = self._check_inputs(images, prompts, metadata)
            results = self.evaluate(
                images,
                meta,
                jpeg_quality=quirks.jpeg_quality,
                channel_swap=quirks.detector_channel_swap,
                quirks=quirks,
            )
            partial = np.asarray([r.partial.score for r in results], dtype=np.float32)
            strict = np.asarray([float(r.partial.correct) for r in results], dtype=np.float32)
            acc = np.asarray([float(r.official.correct) for r in results], dtype=np.float32)
            main = partial if variant == "flowgrpo_partial" else acc
            return {
                "geneval": main,
                "geneval_partial": partial,
                "geneval_strict": strict,
                "geneval_accuracy": acc,
            }

        reward_fn.benchmark = self  # type: ignore[attr-defined]
        reward_fn.variant = variant  # type: ignore[attr-defined]
        reward_fn.version = version  # type: ignore[attr-defined]
        reward_fn.quirks = quirks  # type: ignore[attr-defined]
        return reward_fn


# ------------------------------------------------------------------------------------------------
# Precomputed detections
# ------------------------------------------------------------------------------------------------


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def parse_detection_line(obj: Any, n_meta: int) -> tuple[int, int, int, int, list[Detection]]:
    """Validate one detections-file record; raises ValueError / TypeError with the reason."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt_index", "sample_index", "width", "height", "detections"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    pi, si, w, h = obj["prompt_index"], obj["sample_index"], obj["width"], obj["height"]
    for key, v in (("prompt_index", pi), ("sample_index", si), ("width", w), ("height", h)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {v!r}")
    if pi >= n_meta:
        raise ValueError(f"prompt_index {pi} is out of range (metadata has {n_meta} records, 0-based)")
    if w < 1 or h < 1:
        raise ValueError(f"width/height must be positive, got {w}x{h}")
    if not isinstance(obj["detections"], list):
        raise TypeError("'detections' must be a list")
    names = set(object_names())
    dets = []
    for j, d in enumerate(obj["detections"]):
        if not isinstance(d, dict):
            raise TypeError(f"detections[{j}] must be an object")
        cls = d.get("class")
        if cls not in names:
            raise ValueError(
                f"detections[{j}]: class {cls!r} is not one of the 80 COCO names of object_names.txt"
            )
        box = d.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(_num(v) for v in box)):
            raise ValueError(f"detections[{j}]: box must be [x1, y1, x2, y2] (4 finite numbers), got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"detections[{j}]: box {box} has x2 < x1 or y2 < y1")
        if not _num(d.get("score")):
            raise ValueError(f"detections[{j}]: score must be a finite number, got {d.get('score')!r}")
        color = d.get("color")
        if color is not None and color not in COLORS:
            raise ValueError(f"detections[{j}]: color {color!r} is not one of {', '.join(COLORS)}")
        extra = set(d) - {"class", "box", "score", "color"}
        if extra:
            raise ValueError(f"detections[{j}]: unknown field(s) {sorted(extra)}")
        dets.append(Detection(cls, tuple(float(v) for v in box), float(d["score"]), None, color))  # type: ignore[arg-type]
    return pi, si, w, h, dets


def score_detections_file(
    detections_jsonl: str | Path,
    metadata_jsonl: str | Path | None = None,
    *,
    prompt_set: str | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    engine: str | None = None,
    workers: int | None = None,
    **scoring: Any,
) -> tuple[list[SampleRecord], BenchmarkSummary]:
    """Score precomputed detections with the official rules; no model is loaded.

    One JSON line per image: ``{"prompt_index", "sample_index", "width", "height",
    "detections": [{"class", "box": [x1, y1, x2, y2], "score", "color"?}]}``; ``prompt_index`` is
    the 0-based line of ``metadata_jsonl`` (default: the shipped ``prompt_set``, "test").
    Detections are raw (GenEval's threshold / top-16 / NMS rules are applied here); a colour
    clause uses the given ``color`` (a detection without one fails the clause).
    """
    if engine not in (None, *ENGINES, "detections"):
        raise BenchmarkError(f"geneval: unknown engine {engine!r} for detections scoring")
    del workers
    opts = _scoring_options(scoring, "geneval detections")
    if metadata_jsonl is not None and prompt_set is not None:
        raise BenchmarkError("geneval detections: give either a metadata file or prompt_set, not both")
    if metadata_jsonl is None:
        name = prompt_set or "test"
        if name not in PROMPT_SETS:
            raise BenchmarkError(f"geneval: unknown prompt set {name!r}; available: {', '.join(PROMPT_SETS)}")
        metadata_path = DATA_DIR / PROMPT_SETS[name]
    else:
        metadata_path = Path(metadata_jsonl)
    try:
        metadata = read_metadata(metadata_path)
    except FileNotFoundError:
        raise BenchmarkError(f"geneval: metadata file not found: {metadata_path}") from None
    except ValueError as e:
        raise BenchmarkError(f"geneval: {e}") from None
    path = Path(detections_jsonl)
    if not path.is_file():
        raise BenchmarkError(f"geneval: detections file not found: {path}")
    entries: list[tuple[int, int, int, int, list[Detection], int]] = []
    seen: dict[tuple[int, int], int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                pi, si, w, h, dets = parse_detection_line(obj, len(metadata))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            except (ValueError, TypeError) as e:
                raise BenchmarkError(f"{path}: line {lineno}: {e}") from None
            if (pi, si) in seen:
                raise BenchmarkError(
                    f"{path}: line {lineno}: duplicate prompt_index {pi} sample_index {si} (first on line {seen[(pi, si)]})"
                )
            seen[(pi, si)] = lineno
            entries.append((pi, si, w, h, dets, lineno))
    if not entries:
        raise BenchmarkError(f"{path}: no detection records")
    kept = [filter_detections(e[4], metadata[e[0]]["tag"], opts) for e in entries]
    results = evaluate_detections(kept, [metadata[e[0]] for e in entries], None, opts)
    records = []
    for (pi, si, w, h, _dets, lineno), res in zip(entries, results):
        rec = res.record()
        score = rec.pop("score")
        rec.update(width=w, height=h, line=lineno)
        records.append(SampleRecord(pi, si, float(score), rec))
    summary = aggregate_records(
        records,
        name="geneval",
        version=scoring_version(opts),
        engine="detections-file",
        n_boot=n_boot,
        seed=seed,
    )
    summary.extra.update(detections=str(path), metadata=str(metadata_path))
    return records, summary


def make_benchmark(**options: Any) -> GenEvalBenchmark:
    """Registry factory. Options: ``detector_path``, ``clip_path``, ``device``, ``dtype``,
    ``batch_size``, scoring options (``threshold``, ``counting_threshold``, ``max_objects``,
    ``max_overlap``, ``position_threshold``, ``bgcolor``, ``crop``), ``engine`` ("hf"), ``workers``."""
    return GenEvalBenchmark(**options)
