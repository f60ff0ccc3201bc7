"""Shared benchmark interface (used by the trainer rewards and by evaluation).

Contract for every benchmark package ``benchmarks/<name>/``:

* ``data/`` holds the shipped prompt sets (byte-for-byte copies); the package's provenance
  ``README.md`` lists every data file with its sha256 on one table line (file name + hash);
  ``tests/benchmarks/test_data_files.py`` checks them.
* A factory registered in :mod:`benchmarks.registry` (``"<module>:<callable>"``) builds the
  :class:`Benchmark`.  Factories accept keyword options only and MUST accept
  ``engine: str | None = None`` and ``workers: int | None = None`` (they may ignore
  ``workers``; an unknown ``engine`` or option raises :class:`BenchmarkError`).
  Constructing a benchmark is cheap: models are loaded lazily on first use.
* ``reward.py: make_reward(**kwargs) -> RewardFn``, registered as the reward of the same name (:data:`benchmarks.registry.REWARDS`).
* ``testing.py``, the test kit (conformance suite hook, see ``tests/benchmarks/conformance.py``;
  only tests and perf scripts import it, never a product module):
  ``make_test_benchmark(tmp_path) -> Benchmark`` (tiny / offline models),
  ``make_unavailable_benchmark(tmp_path) -> Benchmark`` (configured with missing weights at a
  path under ``tmp_path``; scoring must raise :class:`ModelUnavailableError` naming that path),
  ``sample_inputs(n) -> (prompts, metadata)`` (valid inputs for ``score_batch``),
  ``malformed_metadata() -> list`` (a one-item metadata list that must raise
  :class:`BenchmarkError` when scored together with ``sample_inputs(1)[0]``), and optionally
  ``sample_images(n) -> list[PIL.Image]`` (meaningful images; default: synthetic patterns).

GenEval extra (CLI ``awm bench score geneval --detections FILE``): ``benchmarks.geneval.benchmark``
exposes ``score_detections_file(detections, prompts=None, *, seed=0, n_boot=1000, **options)
-> tuple[list[SampleRecord], BenchmarkSummary]``; the CLI writes the results with
:func:`write_results` (``samples.jsonl`` + ``summary.json``, atomic).

Scoring contract: ``score_batch`` returns one dict per image with at least ``"score"``
(the reported metric for that sample, a finite float).  It may add ``"reward"`` (the
training reward, when it differs from ``score``, e.g. PickScore/26) and audit fields (JSON-able).
Never return a silent zero or a made-up score: failures raise :class:`BenchmarkError`.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.errors import BenchmarkError
from benchmarks.files import atomic_write

__all__ = [
    "Benchmark",
    "BenchmarkSummary",
    "ModelStatus",
    "PromptSet",
    "RewardFn",
    "SampleRecord",
    "bootstrap_ci",
    "per_prompt_means",
    "sha256_file",
    "validate_batch",
    "write_results",
]

#: ``(images, prompts, metadata) -> {component name: float array of len(images)}``
RewardFn = Callable[[Sequence["Image.Image"], Sequence[str], Sequence[dict]], dict[str, np.ndarray]]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class PromptSet:
    """A shipped prompt set: prompts (and per-prompt metadata dicts) read from ``path``."""

    name: str
    path: Path
    sha256: str  # expected sha256 of the file (from the data README)
    prompts: list[str]
    metadata: list[dict]

    def __len__(self) -> int:
        return len(self.prompts)

    def verify(self) -> None:
        got = sha256_file(self.path)
        if got != self.sha256:
            raise BenchmarkError(f"{self.path}: sha256 {got} does not match the expected {self.sha256}")

    @classmethod
    def from_text(cls, name: str, path: str | Path, sha256: str) -> PromptSet:
        """One prompt per line (the last line may lack a newline); metadata = ``{}`` per prompt."""
        path = Path(path)
        prompts = read_prompt_lines(path)
        return cls(name=name, path=path, sha256=sha256, prompts=prompts, metadata=[{} for _ in prompts])

    @classmethod
    def from_jsonl(cls, name: str, path: str | Path, sha256: str, prompt_key: str = "prompt") -> PromptSet:
        """One JSON object per line; prompt = ``obj[prompt_key]``; metadata = the whole object."""
        path = Path(path)
        metadata = read_jsonl(path)
        prompts = []
        for i, obj in enumerate(metadata):
            if not isinstance(obj.get(prompt_key), str):
                raise BenchmarkError(f"{path}: line {i + 1}: missing string field {prompt_key!r}")
            prompts.append(obj[prompt_key])
        return cls(name=name, path=path, sha256=sha256, prompts=prompts, metadata=metadata)


def read_prompt_lines(path: str | Path) -> list[str]:
    """Read a one-prompt-per-line file exactly (no stripping besides the line terminator)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkError(f"prompt file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not valid UTF-8 ({e})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    out: list[dict] = []
    lines = read_prompt_lines(path)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}: line {i + 1}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise BenchmarkError(f"{path}: line {i + 1}: expected a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out


@dataclass
class ModelStatus:
    available: bool
    detail: str


@dataclass
class SampleRecord:
    prompt_index: int
    sample_index: int
    score: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"prompt_index": self.prompt_index, "sample_index": self.sample_index, "score": self.score}
        for k, v in self.extra.items():
            if k not in d:
                d[k] = v
        return d


@dataclass
class BenchmarkSummary:
    benchmark: str
    version: str
    engine: str
    n: int  # number of scored samples (images)
    score: float
    ci_low: float
    ci_high: float
    extra: dict = field(default_factory=dict)  # e.g. n_prompts, per_tag (GenEval)

    def to_dict(self) -> dict:
        d = asdict(self)
        extra = d.pop("extra")
        for k, v in extra.items():
            if k not in d:
                d[k] = v
        return d


def write_results(out_dir: str | Path, records: Sequence[SampleRecord], summary: BenchmarkSummary) -> tuple[Path, Path]:
    """Write ``out_dir/samples.jsonl`` (one record per image) and ``out_dir/summary.json`` atomically."""
    out_dir = Path(out_dir)
    recs = sorted(records, key=lambda r: (r.prompt_index, r.sample_index))
    lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False, sort_keys=False) + "\n" for r in recs)
    samples, summ = out_dir / "samples.jsonl", out_dir / "summary.json"
    # private to their owner (0600), as results have always been written
    atomic_write(samples, lines, mode=0o600)
    atomic_write(summ, json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n", mode=0o600)
    return samples, summ


def per_prompt_means(records: Iterable[SampleRecord]) -> dict[int, float]:
    """Mean score per prompt_index (sorted by prompt index)."""
    sums: dict[int, list[float]] = {}
    for r in records:
        sums.setdefault(int(r.prompt_index), []).append(float(r.score))
    return {k: float(np.mean(v)) for k, v in sorted(sums.items())}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one value per *prompt*).

    ``statistic`` (optional) maps an ``(n_boot, n)`` array of resampled values to ``(n_boot,)``.
    Deterministic for a given seed.  With fewer than 2 values the CI collapses to the point.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise BenchmarkError("bootstrap_ci needs a non-empty 1-D array of per-prompt values")
    point = float(statistic(v[None, :])[0]) if statistic else float(v.mean())
    if v.size < 2:
        return point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    stats = statistic(v[idx]) if statistic else v[idx].mean(axis=1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def validate_batch(
    benchmark: str, images: Sequence[Any], prompts: Sequence[Any], metadata: Sequence[Any] | None
) -> list[dict]:
    """Check batch shapes/types; return metadata as a list of dicts (``{}`` when None)."""
    n = len(images)
    if len(prompts) != n:
        raise BenchmarkError(f"{benchmark}: got {n} images but {len(prompts)} prompts")
    if metadata is None:
        metadata = [{} for _ in range(n)]
    if isinstance(metadata, (dict, str, bytes)) or not isinstance(metadata, Sequence):
        raise BenchmarkError(f"{benchmark}: metadata must be a list of dicts (one per image), got {type(metadata).__name__}")
    if len(metadata) != n:
        raise BenchmarkError(f"{benchmark}: got {n} images but {len(metadata)} metadata entries")
    for i, (im, p, m) in enumerate(zip(images, prompts, metadata)):
        if not isinstance(im, Image.Image):
            raise BenchmarkError(f"{benchmark}: sample {i}: expected a PIL.Image, got {type(im).__name__}")
        if im.width < 1 or im.height < 1:
            raise BenchmarkError(f"{benchmark}: sample {i}: empty image ({im.width}x{im.height})")
        if not isinstance(p, str):
            raise BenchmarkError(f"{benchmark}: sample {i}: prompt must be a str, got {type(p).__name__}")
        if not isinstance(m, dict):
            raise BenchmarkError(f"{benchmark}: sample {i}: metadata must be a dict, got {type(m).__name__}")
    return list(metadata)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha composited on white, so transparent pixels are not black)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and float(arr.max()) > 255.0:
            arr = arr / float(arr.max()) * 255.0
        arr = np.clip(arr, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return image.convert("RGB")


class Benchmark(ABC):
    """One benchmark: prompt sets + scorer + version.  Subclasses set ``name`` and ``version``."""

    name: str = ""
    version: str = ""  # bump whenever scoring semantics change, e.g. "ocr-1.0"
    default_prompt_set: str = "test"
    #: images per prompt of an official evaluation (GenEval: 4; most benchmarks: 1)
    default_samples_per_prompt: int = 1
    #: prompt file format for ``awm bench score``: "text" (one prompt per line) or "jsonl"
    prompt_file_format: str = "text"

    @property
    def engine(self) -> str:
        """Label of the scoring engine/model; numbers from different engines are never mixed."""
        return "default"

    @abstractmethod
    def prompt_sets(self) -> dict[str, PromptSet]: ...

    @abstractmethod
    def check_models(self) -> ModelStatus:
        """Cheap availability check (no full model load). Never raises for a missing model."""

    @abstractmethod
    def score_batch(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> list[dict]:
        """Score a batch: one dict per image with ``score`` (+ optional ``reward``, audit fields)."""

    # ------------------------------------------------------------------ helpers
    def load_prompt_file(self, path: str | Path) -> tuple[list[str], list[dict]]:
        """Parse a prompt file given to ``awm bench score`` -> (prompts, metadata)."""
        if self.prompt_file_format == "jsonl":
            meta = read_jsonl(path)
            prompts = []
            for i, m in enumerate(meta):
                if not isinstance(m.get("prompt"), str):
                    raise BenchmarkError(f"{path}: line {i + 1}: missing string field 'prompt'")
                prompts.append(m["prompt"])
            return prompts, meta
        prompts = read_prompt_lines(path)
        return prompts, [{} for _ in prompts]

    def aggregate(self, records: Sequence[SampleRecord], *, n_boot: int = 1000, seed: int = 0) -> BenchmarkSummary:
        """Default: mean over prompts of per-prompt mean scores, bootstrap 95% CI over prompts."""
        records = list(records)
        if not records:
            raise BenchmarkError(f"{self.name}: cannot aggregate zero records")
        for r in records:
            if not math.isfinite(float(r.score)):
                raise BenchmarkError(
                    f"{self.name}: non-finite score for prompt {r.prompt_index} sample {r.sample_index}"
                )
        pm = per_prompt_means(records)
        vals = np.array(list(pm.values()), dtype=np.float64)
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
        return BenchmarkSummary(
            benchmark=self.name,
            version=self.version,
            engine=self.engine,
            n=len(records),
            score=float(vals.mean()),
            ci_low=lo,
            ci_high=hi,
            extra={"n_prompts": int(vals.size), "n_boot": n_boot, "seed": seed},
        )

    def score_records(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        metadata: Sequence[dict] | None,
        prompt_indices: Sequence[int],
        sample_indices: Sequence[int],
    ) -> list[SampleRecord]:
        """``score_batch`` wrapped into :class:`SampleRecord` s (evaluation path)."""
        outs = self.score_batch(images, prompts, metadata)
        recs = []
        for out, pi, si in zip(outs, prompt_indices, sample_indices):
            extra = {k: v for k, v in out.items() if k != "score"}
            recs.append(SampleRecord(int(pi), int(si), float(out["score"]), extra))
        return recs

    def as_reward(self, **opts: Any) -> RewardFn:
        """Training reward: ``{self.name: per-sample reward}`` (``reward`` field if present, else ``score``)."""
        if opts:
            raise BenchmarkError(f"{self.name}: as_reward got unknown options {sorted(opts)}")
        name = self.name

        def reward_fn(images, prompts, metadata=None):
            outs = self.score_batch(images, prompts, metadata)
            vals = [float(o["reward"] if "reward" in o else o["score"]) for o in outs]
            return {name: np.asarray(vals, dtype=np.float32)}

        reward_fn.benchmark = self  # type: ignore[attr-defined]
        return reward_fn

    def close(self) -> None:
        """Release worker pools / models (optional)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version} engine={self.engine}>"
