"""The evaluation spec: what an evaluation of a checkpoint on a benchmark generates and scores,
and the names that identify it (docs/evals.md, "Spec, version, key").

* `EvalServiceConfig` is the config section `eval.service` (defaults for every benchmark, with
  `per_benchmark` overrides and the benchmarks' `weights_dirs`); `PlatformEvalConfig` is the
  trainer's in-loop `eval` section plus `on_checkpoint` and `service`.
* `resolve_spec` fills every default from the checkpoint's model (`ModelContext`) and the
  benchmark: an `EvalSpec` holds everything that changes numbers and nothing else, so its hash
  (`EvalSpec.hash`) is the spec half of the evaluation key.
* `benchmark_version` covers the scorer (`Benchmark.version`, its engine label), the identity of
  its model weights and the prompt file's sha256.
* The key of an evaluation is (checkpoint sha256, benchmark, benchmark version, spec hash);
  images depend on (checkpoint sha256, spec without `limit`, prompt file): `generation_key` (the
  batches are cut over the whole prompt set, so a partial evaluation's images are the full one's), so a
  new benchmark version re-scores cached images without generating them again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from awm_platform.paths import awm_home
from benchmarks.files import atomic_write
from benchmarks.registry import BENCHMARKS, get_benchmark, list_benchmarks
from trainers.awm.config import ConfigSection, EvalConfig, family_of_local_model

if TYPE_CHECKING:  # numpy and PIL stay out of config validation (every `awm` command)
    from benchmarks.base import Benchmark

Precision = Literal["fp32", "fp16", "bf16"]
Weights = Literal["policy", "ema"]
# Flow-GRPO evaluates SD3.5 with CFG 4.5; a run that samples without CFG (AWM's configs) is
# evaluated the way it samples, at 1.0
CFG_GUIDANCE_SCALE = 4.5
DIGEST_CACHE_FILE = "file-sha256.json"
NO_CFG_GUIDANCE_SCALE = 1.0


def _known_benchmarks(names: Any) -> Any:
    """Keys naming benchmarks must name registered ones (a typo fails at config load)."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(map(repr, unknown))}; known: {', '.join(list_benchmarks())}")
    return names


class BenchmarkSpecOverrides(ConfigSection):
    """`eval.service.per_benchmark.<name>`: the spec keys that differ for one benchmark."""

    num_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=1.0)
    resolution: int | None = Field(None, ge=8, le=4096)
    samples_per_prompt: int | None = Field(None, ge=1, le=64)
    precision: Precision | None = None
    prompt_set: str | None = None
    limit: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    max_sequence_length: int | None = Field(None, ge=1, le=512)
    batch_size: int | None = Field(None, ge=1, le=4096)


class EvalServiceConfig(ConfigSection):
    """`eval.service`: the evaluation service's spec defaults (docs/evals.md)."""

    sampler: Literal["ode"] = Field("ode", description="deterministic Euler ODE (noise level 0), as upstream evaluates")
    num_steps: int = Field(40, ge=1, le=1000, description="sampler steps (upstream eval_num_steps: 40)")
    guidance_scale: float | None = Field(
        None, ge=1.0, description="None: 4.5 when the run samples with CFG (sample.guidance_scale > 1), else 1.0; "
        "base:MODEL follows the command config's sample.guidance_scale the same way, so its row has the runs' spec")
    resolution: int | None = Field(None, ge=8, le=4096, description="None: the run's resolution")
    samples_per_prompt: int | None = Field(None, ge=1, le=64, description="None: the benchmark's (GenEval 4, else 1)")
    precision: Precision | None = Field(None, description="None: the run's pretrained.dtype")
    weights: Weights = Field("policy", description="policy (the live LoRA) or ema (the weight-EMA LoRA)")
    prompt_set: str = "test"
    limit: int | None = Field(None, ge=1, description="first N prompts only: a PARTIAL evaluation")
    seed: int = Field(0, ge=0, description="image seeds derive from (seed, prompt index, sample index)")
    max_sequence_length: int | None = Field(None, ge=1, le=512, description="None: the run's sample.max_sequence_length")
    batch_size: int = Field(8, ge=1, le=4096, description="images per forward batch (in the spec: kernels round "
                            "differently for another batch size, a pixel may move by one level)")
    # how the work runs: never changes a number, so not in the spec hash
    shards: int = Field(1, ge=1, le=10000, description="prompt shards = array tasks per evaluation job")
    lease_s: float = Field(300.0, gt=0, description="a shard's lease; a dead worker's shard is re-claimed after it")
    max_attempts: int = Field(3, ge=1, le=100, description="claims of one shard before the evaluation fails")
    per_benchmark: dict[str, BenchmarkSpecOverrides] = Field(default_factory=dict)
    weights_dirs: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict, description="the options each benchmark is built with: its local weight folders, e.g. "
        "{geneval: {detector_path: DIR, clip_path: DIR}, pickscore: {model_path: DIR, processor_path: DIR}}, and "
        "how it runs (ocr: {workers: 4}); only the *_path folders enter the benchmark version")

    @field_validator("per_benchmark", "weights_dirs")
    @classmethod
    def _benchmarks_known(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _known_benchmarks(v)


class PlatformEvalConfig(EvalConfig):
    """`eval`: the trainer's in-loop evaluation keys, plus what the evaluation service reads."""

    on_checkpoint: list[str] = Field(
        default_factory=list, description="benchmarks the evaluation service runs on every new checkpoint of this run")
    service: EvalServiceConfig = Field(default_factory=EvalServiceConfig)

    @field_validator("on_checkpoint")
    @classmethod
    def _benchmarks_known(cls, v: list[str]) -> list[str]:
        return _known_benchmarks(v)


@dataclass(frozen=True)
class ModelContext:
    """What the spec takes from the model being evaluated: the run's config for a checkpoint,
    the evaluation config for `base:MODEL`."""

    model: str
    revision: str | None
    family: str
    resolution: int
    precision: str
    max_sequence_length: int
    uses_cfg: bool
    is_base: bool = False
    guidance: float | None = None  # pretrained.guidance: FLUX.1-dev's distilled guidance (None = the model's 3.5)

    @classmethod
    def from_config(cls, cfg: Any, *, is_base: bool = False) -> ModelContext:
        """From a `TrainerConfig` (or the platform's `ExperimentConfig`)."""
        return cls(model=cfg.pretrained.model, revision=cfg.pretrained.revision, family=cfg.pretrained.family,
                   resolution=cfg.resolution, precision=cfg.pretrained.dtype,
                   max_sequence_length=cfg.sample.max_sequence_length,
                   uses_cfg=cfg.sample.guidance_scale > 1.0, is_base=is_base, guidance=cfg.pretrained.guidance)

    @classmethod
    def from_resolved(cls, resolved: dict[str, Any]) -> ModelContext:
        """From a run's resolved config as the store keeps it (`runs.resolved_config`)."""
        pre, sample = resolved.get("pretrained", {}), resolved.get("sample", {})
        return cls(model=str(pre["model"]), revision=pre.get("revision"), family=str(pre.get("family", "sd3")),
                   resolution=int(resolved["resolution"]), precision=str(pre.get("dtype", "fp32")),
                   max_sequence_length=int(sample.get("max_sequence_length", 128)),
                   uses_cfg=float(sample.get("guidance_scale", 1.0)) > 1.0,
                   guidance=None if pre.get("guidance") is None else float(pre["guidance"]))


class EvalSpec(BaseModel):
    """Everything that changes an evaluation's numbers, fully resolved (`limit` None = the whole set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    revision: str | None
    family: str
    sampler: Literal["ode"]
    num_steps: int
    guidance_scale: float
    resolution: int
    samples_per_prompt: int
    precision: Precision
    weights: Literal["policy", "ema", "base"]
    prompt_set: str
    limit: int | None
    seed: int
    max_sequence_length: int
    batch_size: int  # the batches are fixed by it (`batches`), whatever the shard count
    # FLUX.1-dev's distilled guidance when the run sets pretrained.guidance; None (the model's default) is
    # left out of the hashes, so the specs of every model that does not set it hash as before the key existed
    guidance: float | None = None

    def _hashed(self, exclude: set[str]) -> dict[str, Any]:
        # the store's compare_hash leaves a None guidance out likewise (store.models.OPTIONAL_SPEC_KEYS)
        return self.model_dump(mode="json", exclude=exclude | ({"guidance"} if self.guidance is None else set()))

    @property
    def hash(self) -> str:
        return _digest(self._hashed(set()))

    @property
    def partial(self) -> bool:
        return self.limit is not None

    def generation_hash(self) -> str:
        """The spec minus `limit`: the first N prompts' images are those of the whole set."""
        return _digest(self._hashed({"limit"}))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def resolve_spec(service: EvalServiceConfig, benchmark: Benchmark, ctx: ModelContext,
                 weights: Weights | None = None) -> EvalSpec:
    """The spec of evaluating `ctx`'s model on `benchmark`: `per_benchmark` overrides, then the
    service defaults, then what the model and the benchmark imply. `weights` (`--weights`)
    overrides `service.weights`."""
    over = service.per_benchmark.get(benchmark.name, BenchmarkSpecOverrides())

    def pick(key: str) -> Any:
        value = getattr(over, key)
        return getattr(service, key) if value is None else value

    guidance = pick("guidance_scale")
    if guidance is None:
        guidance = CFG_GUIDANCE_SCALE if ctx.uses_cfg else NO_CFG_GUIDANCE_SCALE
    samples = pick("samples_per_prompt") or benchmark.default_samples_per_prompt
    prompt_set = pick("prompt_set")
    if prompt_set not in benchmark.prompt_sets():
        raise ValueError(f"eval.service.prompt_set={prompt_set!r}: {benchmark.name} has the prompt sets "
                         f"{', '.join(sorted(benchmark.prompt_sets()))}")
    return EvalSpec(model=ctx.model, revision=ctx.revision, family=family_of_local_model(ctx.family, ctx.model),
                    sampler=service.sampler,
                    num_steps=pick("num_steps"), guidance_scale=float(guidance),
                    resolution=pick("resolution") or ctx.resolution, samples_per_prompt=int(samples),
                    precision=pick("precision") or ctx.precision,
                    weights="base" if ctx.is_base else (weights or service.weights),
                    prompt_set=prompt_set, limit=pick("limit"), seed=pick("seed"),
                    max_sequence_length=pick("max_sequence_length") or ctx.max_sequence_length,
                    batch_size=pick("batch_size"), guidance=ctx.guidance)


def benchmark_options(service: EvalServiceConfig, name: str) -> dict[str, Any]:
    """The options the benchmark is built with (`get_benchmark(name, **options)`): its weights dirs."""
    return dict(service.weights_dirs.get(name, {}))


def build_benchmark(service: EvalServiceConfig, name: str, **extra: Any) -> Benchmark:
    return get_benchmark(name, **benchmark_options(service, name), **extra)


def weights_identity(options: dict[str, Any]) -> str:
    """Identity of the weight folders among `options` (`*_path` values that are directories): the
    sha256 of every file they hold, by relative name. Weights retrained in place (same names, same
    sizes) are another identity. File digests are cached by (path, size, mtime) in
    `$AWM_HOME/cache/file-sha256.json`, so a folder of GBs is read once, not at every pass."""
    h = hashlib.sha256()
    cache = _DigestCache.load()
    for key in sorted(options):
        path = Path(os.path.expanduser(str(options[key])))
        if not key.endswith("_path") or not path.is_dir():
            continue
        h.update(key.encode())
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{cache.sha256(f)}\0".encode())
    cache.save()
    return h.hexdigest()


class _DigestCache:
    """{"<abs path>|<size>|<mtime ns>": sha256} of files already read (written atomically)."""

    def __init__(self, path: Path, digests: dict[str, str]) -> None:
        self.path, self.digests, self.changed = path, digests, False

    @classmethod
    def load(cls) -> _DigestCache:
        path = awm_home() / "cache" / DIGEST_CACHE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return cls(path, data if isinstance(data, dict) else {})

    def sha256(self, f: Path) -> str:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.digests:
            digest = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
            self.digests[key], self.changed = digest.hexdigest(), True
        return self.digests[key]

    def save(self) -> None:
        if self.changed:
            try:
                atomic_write(self.path, json.dumps(self.digests, indent=1, sort_keys=True) + "\n")
            except OSError:  # a read-only home: the digests are recomputed next time
                pass


def benchmark_version(benchmark: Benchmark, options: dict[str, Any], prompt_sha256: str) -> str:
    """`<Benchmark.version>+<12 hex of (engine label, weights identity, prompt file sha256)>`."""
    digest = hashlib.sha256("\x1f".join((benchmark.engine, weights_identity(options), prompt_sha256)).encode())
    return f"{benchmark.version}+{digest.hexdigest()[:12]}"


def generation_key(checkpoint_sha256: str, spec: EvalSpec, prompt_sha256: str) -> str:
    """Names the image cache of (checkpoint, generation spec, prompt file)."""
    text = "\x1f".join((checkpoint_sha256, spec.generation_hash(), prompt_sha256))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalPlan:
    """One evaluation to ensure: its key parts and where its images live."""

    benchmark: str
    benchmark_version: str
    spec: EvalSpec
    prompt_sha256: str
    generation_key: str
    num_prompts: int  # prompts evaluated (after `limit`)


def plan_evaluation(service: EvalServiceConfig, benchmark: Benchmark, ctx: ModelContext, checkpoint_sha256: str,
                    weights: Weights | None = None) -> EvalPlan:
    spec = resolve_spec(service, benchmark, ctx, weights)
    prompts = benchmark.prompt_sets()[spec.prompt_set]
    sha = prompts.sha256
    n = len(prompts) if spec.limit is None else min(spec.limit, len(prompts))
    return EvalPlan(benchmark=benchmark.name,
                    benchmark_version=benchmark_version(benchmark, benchmark_options(service, benchmark.name), sha),
                    spec=spec, prompt_sha256=sha, generation_key=generation_key(checkpoint_sha256, spec, sha),
                    num_prompts=n)


def num_batches(num_prompts: int, spec: EvalSpec) -> int:
    """Generation batches of an evaluation of `num_prompts` prompts (after `limit`)."""
    return -(-num_prompts * spec.samples_per_prompt // spec.batch_size)


def shard_batches(total_prompts: int, spec: EvalSpec, shard_index: int, num_shards: int) -> list[list[tuple[int, int]]]:
    """The generation batches of shard k of n: the prompt SET's (prompt, sample) pairs in order, cut
    every `spec.batch_size` (the same batches whatever the shard count, the cache or `limit`, so an
    image is always made in the same batch: bit-identical, as kernels round by batch size); the
    first `num_batches` of them (after `limit`: the last may hold pairs beyond the limit, generated
    and cached but not scored), dealt j % n == k. No padding, no duplicate: every evaluated pair is
    in exactly one shard."""
    used = total_prompts if spec.limit is None else min(spec.limit, total_prompts)
    items = [(p, s) for p in range(total_prompts) for s in range(spec.samples_per_prompt)]
    batches = [items[i:i + spec.batch_size] for i in range(0, len(items), spec.batch_size)]
    return batches[:num_batches(used, spec)][shard_index::num_shards]
