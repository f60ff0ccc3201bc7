"""The evaluation worker: `EvalJob`, the callable the scheduler submits through the executor
backends, and the shard loop it runs (docs/evals.md, "Lifecycle").

A job serves a list of evaluations. Per evaluation (grouped by base model, so the model loads once
per job; each benchmark's scorer loads once per job):

1. preflight, before any image: the benchmark's weights are there (`Benchmark.check_models`), its
   prompt file has the sha256 the data README lists, the scorer still has the version the
   evaluation is of, and the checkpoint still matches (`trainers.awm.checkpoint.validate` and the
   sha256 of its manifest == the evaluation's `checkpoint_sha256`; a deleted folder: "checkpoint
   deleted"). Any of these: the evaluation is FAILED with the reason, nothing is generated.
2. claim shards (`Store.claim_shard`, the job's `prefer_shard` first) until none is claimable. For a
   claimed shard: a heartbeat thread renews the lease every `lease_s / 3` (a lost lease: the
   shard is dropped, never committed); its batches (`spec.shard_batches`: fixed by the spec's
   `batch_size` whatever the shard count) are generated with seeds `image_seed(spec.seed, prompt,
   sample)`, cached PNGs being reused (`awm_platform.evals.images`; a batch with a missing image is
   generated whole, so each image comes from the same batch as always: bit-identical); each batch is scored in a scorer thread while the next batch
   is generated (OCR scores in its own process pool inside); the rows commit with the shard's
   DONE in one transaction (`Store.commit_shard`). An error gives the shard back
   (`release_shard`) and the worker waits 1, 2, 4 ... s (at most 30) before claiming again; a shard
   claimed more than `max_attempts` times fails the evaluation.
3. when every shard is DONE: the aggregate (`Benchmark.aggregate`: bootstrap CI over prompts,
   stratified by tag for GenEval) commits with COMPLETED in one transaction
   (`Store.complete_evaluation`); the one worker that completed it mirrors it to MLflow.

Time accounting: every worker adds (claim -> commit or release of each shard, plus the aggregate)
x the GPUs it uses (1 on a CUDA device, 0 on CPU) to the evaluation's GPU-hours
(`Store.add_eval_gpu_hours`); `wall_s` = first claim -> completion.

Fault points (`AWM_FAULT_INJECT`, tests/evals/test_exactly_once.py): see `FAULT_POINTS`.

Import-light like the training job controller (`runner/job.py`): submitit unpickles `EvalJob`
(importing this module) before it installs its preemption handler, and the scheduler imports it to
submit it; torch, diffusers and the checkpoint code load in the job, where they are used (marked
`# deferred: light job import`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import submitit
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from awm_platform.evals import images
from awm_platform.evals.spec import EvalSpec, benchmark_version, generation_key, shard_batches
from awm_platform.paths import restrict_umask
from awm_platform.redaction import redact_text
from awm_platform.runner.proc import fault_point, scrub_environ
from awm_platform.store import (
    EvalShard,
    EvalStatus,
    Evaluation,
    ShardStatus,
    Store,
    as_utc,
    shard_claimable,
    utcnow,
)
from benchmarks.base import Benchmark, PromptSet, SampleRecord
from benchmarks.errors import BenchmarkError
from benchmarks.files import atomic_write
from benchmarks.registry import get_benchmark

if TYPE_CHECKING:
    from PIL import Image

    from trainers.awm.generate import ImageGenerator

JOB_FILE = "job.json"
# Where a worker can die (tests/evals/test_exactly_once.py kills it at each one, then reruns it)
FAULT_POINTS = (
    "eval_after_claim",  # a shard is claimed (its lease runs), nothing done yet
    "eval_mid_generation",  # the first batch of the shard's images is on disk, more to come
    "eval_after_images",  # every image of the shard is on disk, scores still pending
    "eval_mid_scoring",  # the first batch is scored (in the scorer thread), more to come
    "eval_before_shard_commit",  # all rows computed, not committed
    "eval_after_shard_commit",  # the shard is DONE with its rows
    "eval_before_aggregate_commit",  # every shard DONE, aggregate computed, not committed
    "eval_after_aggregate_commit",  # COMPLETED, not mirrored yet
)
# after a shard failed, wait this long (doubling per attempt, at most the max) before claiming again
RETRY_BACKOFF_S = 1.0
RETRY_BACKOFF_MAX_S = 30.0
N_BOOT = 1000
BOOT_SEED = 0
SEEDS_RULE = ("image_seed(spec.seed, prompt_index, sample_index) = trainers.awm.prompts.derive_seed(0x41574D49, "
              "seed, prompt_index, sample_index): one torch.Generator per image draws its initial noise")


class EvalJobFile(BaseModel):
    """`<job dir>/job.json` (0600: the store URL and the tracking URI may hold credentials): what a
    job needs besides the evaluation ids. The scheduler writes it (`write`), the job reads it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store_url: str
    # where the worker that completes an evaluation mirrors it (`runner.api.tracking_target` of the
    # command's config); None: not mirrored by the worker (the scheduler's catch-up does it)
    tracking_uri: str | None = None
    tracking_experiment: str = "awm"
    tracking_artifact_root: str | None = None  # artifact location of an experiment created by the mirror
    lease_s: float = Field(300.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    # `get_benchmark(name, **options)` per benchmark: the weights dirs (eval.service.weights_dirs)
    # and how to run it (OCR `workers`, GenEval `device`/`batch_size`); only the `*_path` folders
    # enter the benchmark version
    benchmark_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def write(self, job_dir: Path) -> Path:
        path = Path(job_dir) / JOB_FILE
        atomic_write(path, self.model_dump_json(indent=2) + "\n", mode=0o600)
        return path

    @classmethod
    def read(cls, job_dir: Path) -> EvalJobFile:
        path = Path(job_dir) / JOB_FILE
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file (not an evaluation job directory)") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{path}: {'.'.join(map(str, first['loc'])) or 'file'}: {first['msg']}") from None


class EvalJob(submitit.helpers.Checkpointable):
    """Serve `eval_ids` (claiming `prefer_shard` first): picklable, holds only its arguments."""

    def __init__(self, job_dir: str | Path, eval_ids: Sequence[int], prefer_shard: int | None = None) -> None:
        self.job_dir = str(job_dir)
        self.eval_ids = [int(i) for i in eval_ids]
        self.prefer_shard = None if prefer_shard is None else int(prefer_shard)

    def __call__(self) -> dict[str, Any]:
        restrict_umask()  # images and manifests are never world-readable, whatever the submitter's umask
        scrub_environ()
        return run_job(Path(self.job_dir), self.eval_ids, self.prefer_shard)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or timed out: requeue the same job. The shard in progress is re-claimed by
        whoever comes first once its lease expires; DONE shards are never redone."""
        return submitit.helpers.DelayedSubmission(EvalJob(self.job_dir, self.eval_ids, self.prefer_shard))


def _log(msg: str) -> None:
    print(f"[awm-eval] {msg}", file=sys.stderr, flush=True)


class LeaseLostError(RuntimeError):
    """The shard's lease was lost (another worker re-claimed it, or the evaluation ended)."""


class _Heartbeat:
    """Renews a shard's lease every `lease_s / 3` in a thread; `lost` is set when a renewal is
    refused. A database hiccup is retried at the next beat (the lease outlives two of them)."""

    def __init__(self, store: Store, shard_id: int, holder: str, lease_s: float) -> None:
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._args = (store, shard_id, holder, lease_s)
        self._thread = threading.Thread(target=self._run, name="awm-eval-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store, shard_id, holder, lease_s = self._args
        while not self._stop.wait(lease_s / 3.0):
            try:
                if not store.renew_lease(shard_id, holder, lease_s=lease_s):
                    self.lost.set()
                    return
            except Exception as exc:  # noqa: BLE001 - a store hiccup: the next beat tries again
                _log(f"warning: could not renew the lease of shard {shard_id}: {exc}")

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLostError("the shard's lease was lost")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@dataclass
class _Work:
    """One evaluation being served: what preflight established."""

    ev: Evaluation
    spec: EvalSpec
    bench: Benchmark
    prompts: PromptSet
    num_prompts: int
    cache: images.ImageCache
    lora: Path | None  # the checkpoint's LoRA folder (policy or EMA); None = the base model


@dataclass
class JobStats:
    generated: int = 0  # images generated
    reused: int = 0  # images read from the cache
    shards_done: list[tuple[int, int]] = field(default_factory=list)  # (evaluation id, shard index)
    completed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


ShardOutcome = Literal["done", "lost", "failed"]


class _PreflightError(Exception):
    """The evaluation cannot run (its message is the evaluation's error)."""


class Worker:
    """The shard loop of one job (module docstring). Models load lazily, once per job."""

    def __init__(self, job: EvalJobFile, *, holder: str | None = None, overlap_scoring: bool = True,
                 task_index: int = 0) -> None:
        self.job = job
        self.task_index = task_index  # which of the submission's tasks: picks its GPU (`auto_device`)
        # False: each batch is scored before the next one is generated (perf/eval_throughput.py's
        # baseline for what the overlap buys)
        self.overlap_scoring = overlap_scoring
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.store = Store(job.store_url, upgrade=False)  # migrated by the scheduler
        self.stats = JobStats()
        self._benches: dict[str, Benchmark] = {}
        self._generator: ImageGenerator | None = None
        self._generator_model: tuple[str, str | None, str, str] | None = None
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-eval-score")
        self._device: str | None = None

    def close(self) -> None:
        self._scorer.shutdown(wait=True, cancel_futures=True)
        for bench in self._benches.values():
            bench.close()
        self.store.close()

    # ---------------------------------------------------------------- resources ----
    @property
    def device(self) -> str:
        if self._device is None:
            import torch  # deferred: light job import

            dev = self.job.device
            self._device = auto_device(torch.cuda.device_count(), self.task_index) if dev == "auto" else dev
        return self._device

    @property
    def gpus(self) -> int:
        """GPUs this worker uses: its one device if that is a GPU."""
        return 1 if self.device.startswith("cuda") else 0

    def benchmark(self, name: str) -> Benchmark:
        if name not in self._benches:
            self._benches[name] = get_benchmark(name, **self.job.benchmark_options.get(name, {}))
        return self._benches[name]

    def generator(self, work: _Work) -> ImageGenerator:
        """The base model of `work` (loaded once per job: evaluations are served grouped by model)
        with `work`'s LoRA in."""
        from trainers.awm.generate import ImageGenerator  # deferred: light job import

        spec = work.spec
        model = (spec.model, spec.revision, spec.family, spec.precision, spec.guidance)
        if self._generator is None or self._generator_model != model:
            self._generator = None  # free the previous model first
            _log(f"loading {spec.model} ({spec.precision}) on {self.device}")
            self._generator = ImageGenerator.load(spec.model, revision=spec.revision, family=spec.family,
                                                  precision=spec.precision, device=self.device,
                                                  guidance=spec.guidance)
            self._generator_model = model
        if self._generator.lora != work.lora:
            self._generator.set_lora(work.lora)
        return self._generator

    # ---------------------------------------------------------------------- job ----
    def run(self, eval_ids: Sequence[int], prefer_shard: int | None = None) -> JobStats:
        rows = []
        for eval_id in eval_ids:
            try:
                rows.append(self.store.get_evaluation(eval_id))
            except Exception as exc:  # noqa: BLE001 - an id that is gone: serve the others
                _log(f"evaluation {eval_id}: {exc}")

        def model_order(ev: Evaluation) -> tuple[str, ...]:
            s = ev.spec or {}
            return (str(s.get("model")), str(s.get("revision")), str(s.get("family")), str(s.get("precision")),
                    ev.checkpoint_sha256, str(s.get("weights")), ev.benchmark)

        for ev in sorted(rows, key=model_order):
            self.serve(ev.id, prefer_shard)
        return self.stats

    def serve(self, eval_id: int, prefer_shard: int | None = None) -> None:
        ev = self.store.get_evaluation(eval_id)
        if ev.status not in (EvalStatus.PENDING, EvalStatus.RUNNING):
            return
        if _claimable(self.store.list_shards(eval_id)):  # else done, or other workers hold every shard
            try:
                work = self.preflight(ev)
            except _PreflightError as exc:
                if self.store.fail_evaluation(eval_id, str(exc)):
                    self.stats.failed.append(eval_id)
                _log(f"evaluation {eval_id} ({ev.target} {ev.benchmark}) FAILED: {exc}")
                return
            prefer = prefer_shard
            while (shard := self.store.claim_shard(eval_id, self.holder, lease_s=self.job.lease_s,
                                                   prefer_index=prefer)) is not None:
                fault_point("eval_after_claim")
                prefer = None
                if shard.attempts > self.job.max_attempts:
                    msg = (f"shard {shard.shard_index}/{ev.num_shards} failed {shard.attempts - 1} times "
                           f"(eval.service.max_attempts={self.job.max_attempts}); last error: {shard.error}")
                    if self.store.fail_evaluation(eval_id, msg):
                        self.stats.failed.append(eval_id)
                    _log(f"evaluation {eval_id} FAILED: {msg}")
                    return
                if self.run_shard(work, shard) == "failed" and shard.attempts < self.job.max_attempts:
                    # a transient cause (GPU memory, the store) gets time to clear, and another job
                    # (another node) may claim the shard meanwhile
                    time.sleep(min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** (shard.attempts - 1)))
        self.maybe_complete(eval_id)

    # ---------------------------------------------------------------- preflight ----
    def preflight(self, ev: Evaluation) -> _Work:
        """Everything that must hold before an image is generated (module docstring, 1)."""
        from trainers.awm.checkpoint import CheckpointError, validate  # deferred: light job import
        from trainers.awm.model import ModelLoadError  # deferred: light job import

        try:
            spec = EvalSpec.model_validate(ev.spec)
            bench = self.benchmark(ev.benchmark)
        except (ValidationError, BenchmarkError, TypeError) as exc:
            raise _PreflightError(f"{ev.benchmark}: cannot build the evaluation: {exc}") from None
        status = bench.check_models()
        if not status.available:
            raise _PreflightError(
                f"{ev.benchmark} weights unavailable: {status.detail} (for the evaluation service: set "
                f"eval.service.weights_dirs.{ev.benchmark}.<key> to a local folder with the weights; docs/evals.md)")
        sets = bench.prompt_sets()
        if spec.prompt_set not in sets:
            raise _PreflightError(f"{ev.benchmark} has no prompt set {spec.prompt_set!r} "
                                  f"(it has {', '.join(sorted(sets))})")
        prompts = sets[spec.prompt_set]
        try:
            prompts.verify()
        except BenchmarkError as exc:
            raise _PreflightError(f"{ev.benchmark} prompt set {spec.prompt_set!r}: {exc}") from None
        options = self.job.benchmark_options.get(ev.benchmark, {})
        version = benchmark_version(bench, options, prompts.sha256)
        if version != ev.benchmark_version:
            raise _PreflightError(
                f"{ev.benchmark} is now version {version}, the evaluation is of {ev.benchmark_version} (the scorer, "
                "its weights or the prompt file changed since it was scheduled): schedule it again to evaluate the "
                "current version")
        lora: Path | None = None
        if ev.checkpoint_path is not None:
            path = Path(ev.checkpoint_path)
            if not path.exists():
                raise _PreflightError(f"checkpoint deleted: {path}")
            try:
                validate(path)
            except CheckpointError as exc:
                raise _PreflightError(f"checkpoint no longer matches its manifest: {exc}") from None
            digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
            if digest != ev.checkpoint_sha256:
                raise _PreflightError(
                    f"checkpoint {path}: its manifest's sha256 is {digest}, the evaluation is of "
                    f"{ev.checkpoint_sha256} (the folder was replaced by another checkpoint)")
            lora = path / ("lora_ema" if spec.weights == "ema" else "lora")
        elif spec.weights != "base":
            raise _PreflightError(f"evaluation of {spec.weights} weights without a checkpoint path")
        num_prompts = len(prompts) if spec.limit is None else min(spec.limit, len(prompts))
        gkey = generation_key(ev.checkpoint_sha256, spec, prompts.sha256)
        root = _evals_root_of(ev)
        images.link_images(ev.key, gkey, root)
        images.write_manifest(
            ev.key, generation_key=gkey, benchmark=ev.benchmark, benchmark_version=ev.benchmark_version,
            spec=ev.spec, spec_hash=ev.spec_hash, checkpoint_sha256=ev.checkpoint_sha256, target=ev.target,
            checkpoint_path=ev.checkpoint_path, prompt_set=spec.prompt_set, prompt_file=str(prompts.path),
            prompt_file_sha256=prompts.sha256, num_prompts=num_prompts,
            samples_per_prompt=spec.samples_per_prompt, seeds_rule=SEEDS_RULE, root=root)
        work = _Work(ev=ev, spec=spec, bench=bench, prompts=prompts, num_prompts=num_prompts,
                     cache=images.ImageCache(gkey, root), lora=lora)
        try:  # a model or LoRA that cannot load never will: fail now, not after max_attempts claims
            self.generator(work)
        except (ModelLoadError, ValueError, OSError) as exc:
            raise _PreflightError(f"cannot load {spec.model}{'' if lora is None else f' with {lora}'}: "
                                  f"{redact_text(str(exc))[0]}") from None
        return work

    # -------------------------------------------------------------------- shard ----
    def run_shard(self, work: _Work, shard: EvalShard) -> ShardOutcome:
        """Generate, score and commit one claimed shard: "done" (its rows are committed), "lost" (its
        lease went to another worker or its evaluation ended: nothing written) or "failed" (an
        error: the shard was given back)."""
        ev, t0 = work.ev, time.monotonic()
        beat = _Heartbeat(self.store, shard.id, self.holder, self.job.lease_s)
        outcome: ShardOutcome = "lost"
        try:
            rows, gen_s, score_s = self._generate_and_score(work, shard, beat)
            beat.check()
            fault_point("eval_before_shard_commit")
            committed = self.store.commit_shard(shard.id, self.holder, rows, gen_s=gen_s, score_s=score_s)
            fault_point("eval_after_shard_commit")
            if committed:
                outcome = "done"
                self.stats.shards_done.append((ev.id, shard.shard_index))
                _log(f"evaluation {ev.id} shard {shard.shard_index}/{ev.num_shards}: {len(rows)} samples "
                     f"(generation {gen_s:.1f} s, scoring {score_s:.1f} s)")
            else:
                _log(f"evaluation {ev.id} shard {shard.shard_index}: lease lost before the commit; discarded")
        except LeaseLostError:
            _log(f"evaluation {ev.id} shard {shard.shard_index}: lease lost; dropped")
        except BaseException as exc:
            # the shard's error is stored and shown: never with a credential (a URL's password)
            outcome = "failed"
            err = redact_text(f"{type(exc).__name__}: {exc}")[0]
            _log(f"evaluation {ev.id} shard {shard.shard_index} failed: {err}\n"
                 f"{redact_text(traceback.format_exc())[0]}")
            try:
                self.store.release_shard(shard.id, self.holder, err)
            except Exception as release_exc:  # noqa: BLE001 - the lease expires instead: re-claimed then
                _log(f"warning: could not give shard {shard.id} back: {release_exc}")
            if not isinstance(exc, Exception):
                raise
        finally:
            beat.stop()
            if self.gpus:
                self.store.add_eval_gpu_hours(ev.id, (time.monotonic() - t0) * self.gpus / 3600.0)
        return outcome

    def _generate_and_score(self, work: _Work, shard: EvalShard,
                            beat: _Heartbeat) -> tuple[list[dict[str, Any]], float, float]:
        """Rows of the shard. Batch i is scored in the scorer thread while batch i + 1 is generated
        (at most two batches of images in memory)."""
        spec = work.spec
        batches = shard_batches(len(work.prompts), spec, shard.shard_index, work.ev.num_shards)
        pending: deque[Future[list[SampleRecord]]] = deque()
        records: list[SampleRecord] = []
        busy = [0.0]  # the scorer thread's time
        gen_s = 0.0
        try:
            for n, batch in enumerate(batches):
                beat.check()
                t = time.monotonic()
                imgs = self._images(work, batch)
                gen_s += time.monotonic() - t
                # a partial evaluation's last batch also holds pairs past the limit: made, not scored
                kept = [i for i, (p, _) in enumerate(batch) if p < work.num_prompts]
                batch, imgs = [batch[i] for i in kept], [imgs[i] for i in kept]
                if n == 0 and len(batches) > 1:
                    fault_point("eval_mid_generation")
                pending.append(self._scorer.submit(self._score, work, batch, imgs, busy,
                                                   n == 0 and len(batches) > 1))
                while len(pending) > (1 if self.overlap_scoring else 0):
                    records += pending.popleft().result()
            fault_point("eval_after_images")
            while pending:
                records += pending.popleft().result()
        finally:  # a failed or dropped shard: its queued batches are not scored for nothing
            for fut in pending:
                fut.cancel()
        rows = []
        for rec in records:
            extra = _jsonable(rec.extra)
            extra.setdefault("prompt", work.prompts.prompts[rec.prompt_index])
            rows.append({"prompt_index": rec.prompt_index, "sample_index": rec.sample_index, "score": rec.score,
                         "seed": self._seed(spec, rec.prompt_index, rec.sample_index), "extra": extra})
        return rows, gen_s, busy[0]

    @staticmethod
    def _seed(spec: EvalSpec, prompt_index: int, sample_index: int) -> int:
        from trainers.awm.generate import image_seed  # deferred: light job import

        return image_seed(spec.seed, prompt_index, sample_index)

    def _images(self, work: _Work, batch: list[tuple[int, int]]) -> list[Image.Image]:
        """The batch's images: cached PNGs, the missing ones generated (and cached). A batch with a
        missing image is generated whole: kernels round by batch size, so an image made in another
        batch composition could differ by a pixel level from the one the spec defines."""
        out = [work.cache.load(p, s) for p, s in batch]
        missing = [i for i, im in enumerate(out) if im is None]
        if missing:
            spec = work.spec
            gen = self.generator(work)
            made = gen.generate([work.prompts.prompts[p] for p, _ in batch], [self._seed(spec, *item) for item in batch],
                                num_steps=spec.num_steps, guidance_scale=spec.guidance_scale,
                                resolution=spec.resolution, max_sequence_length=spec.max_sequence_length)
            for i in missing:
                work.cache.save(*batch[i], made[i])
                out[i] = made[i]
        self.stats.generated += len(missing)
        self.stats.reused += len(batch) - len(missing)
        return [im for im in out if im is not None]

    @staticmethod
    def _score(work: _Work, batch: list[tuple[int, int]], imgs: list[Image.Image], busy: list[float],
               first_of_many: bool) -> list[SampleRecord]:
        t = time.monotonic()
        recs = work.bench.score_records(imgs, [work.prompts.prompts[p] for p, _ in batch],
                                        [work.prompts.metadata[p] for p, _ in batch],
                                        [p for p, _ in batch], [s for _, s in batch])
        busy[0] += time.monotonic() - t
        if len(recs) != len(batch):
            raise BenchmarkError(f"{work.bench.name}: {len(recs)} scores for {len(batch)} images")
        if first_of_many:
            fault_point("eval_mid_scoring")
        return recs

    # ---------------------------------------------------------------- aggregate ----
    def maybe_complete(self, eval_id: int) -> bool:
        """Aggregate and complete the evaluation if every shard is DONE; True if this worker did."""
        ev = self.store.get_evaluation(eval_id)
        if ev.status not in (EvalStatus.PENDING, EvalStatus.RUNNING):
            return False
        if any(s.status != ShardStatus.DONE for s in self.store.list_shards(eval_id)):
            return False
        try:
            return self._complete(ev)
        except Exception as exc:  # noqa: BLE001 - a crash here would be resubmitted forever (all shards DONE)
            msg = f"aggregate: {redact_text(f'{type(exc).__name__}: {exc}')[0]}"
            if self.store.fail_evaluation(eval_id, msg):
                self.stats.failed.append(eval_id)
            _log(f"evaluation {eval_id} FAILED: {msg}")
            return False

    def _complete(self, ev: Evaluation) -> bool:
        eval_id = ev.id
        t0 = time.monotonic()
        rows = self.store.get_sample_scores(eval_id)
        spec = EvalSpec.model_validate(ev.spec)
        bench = self.benchmark(ev.benchmark)
        n_total = len(bench.prompt_sets()[spec.prompt_set])
        n_prompts = n_total if spec.limit is None else min(spec.limit, n_total)
        expected = {(p, s) for p in range(n_prompts) for s in range(spec.samples_per_prompt)}
        got = {(r.prompt_index, r.sample_index) for r in rows}
        if got != expected:  # cannot happen while shards commit their rows with their DONE
            msg = (f"sample rows do not cover the evaluation: {len(expected - got)} missing, "
                   f"{len(got - expected)} unexpected")
            if self.store.fail_evaluation(eval_id, msg):
                self.stats.failed.append(eval_id)
            return False
        records = [SampleRecord(r.prompt_index, r.sample_index, r.score, dict(r.extra)) for r in rows]
        summary = bench.aggregate(records, n_boot=N_BOOT, seed=BOOT_SEED)
        sub = _jsonable(summary.extra)
        sub["engine"] = summary.engine
        sub["ci_method"] = ci_method(sub)
        started = as_utc(ev.started_at)
        wall_s = (utcnow() - started).total_seconds() if started is not None else None
        fault_point("eval_before_aggregate_commit")
        won = self.store.complete_evaluation(
            eval_id, score=summary.score, ci_low=summary.ci_low, ci_high=summary.ci_high, sub_scores=sub,
            num_samples=len(records), wall_s=wall_s, gpu_hours=(time.monotonic() - t0) * self.gpus / 3600.0)
        fault_point("eval_after_aggregate_commit")
        if won:
            self.stats.completed.append(eval_id)
            _log(f"evaluation {eval_id} ({ev.target} {ev.benchmark}) COMPLETED: {summary.score:.4f} "
                 f"[{summary.ci_low:.4f}, {summary.ci_high:.4f}]")
            self.mirror(eval_id)
        return won

    def mirror(self, eval_id: int) -> None:
        """Mirror the evaluation this worker completed to MLflow and mark it mirrored. MLflow being
        down is a warning: the evaluation stays `mirrored=false` and the scheduler mirrors it later."""
        if self.job.tracking_uri is None:
            return
        # deferred: light job import (mlflow)
        from awm_platform.evals.mirror import MirrorError, mirror_stored

        try:
            mirror_stored(self.store, eval_id, tracking_uri=self.job.tracking_uri,
                          experiment=self.job.tracking_experiment, artifact_location=self.job.tracking_artifact_root)
        except MirrorError as exc:
            _log(f"warning: evaluation {eval_id} not mirrored to MLflow ({exc}); the scheduler mirrors it later")


def _evals_root_of(ev: Evaluation) -> Path:
    """The evals folder the evaluation's images go to: the one its recorded `images_dir`
    (`<root>/<eval key>/images`, absolute, written by the scheduler) is in, so a job whose working
    directory or $AWM_HOME differs from the scheduler's writes where the store points; else
    `$AWM_HOME/evals`."""
    if ev.images_dir:
        recorded = Path(ev.images_dir)
        if recorded.name == images.IMAGES_DIR and recorded.parent.name == ev.key and recorded.is_absolute():
            return recorded.parent.parent
    return images.evals_root()


def ci_method(sub_scores: dict[str, Any]) -> str:
    """How the CI of an aggregate was computed (stored in `sub_scores.ci_method`)."""
    base = f"percentile bootstrap, {N_BOOT} resamples (seed {BOOT_SEED}), over prompts"
    if "per_tag" in sub_scores:
        return base + ", stratified by tag (each tag's prompts resampled within the tag)"
    return base + " (the per-prompt mean score)"


def _jsonable(obj: Any) -> Any:
    """Benchmark audit fields as strict JSON (numpy scalars -> Python, non-finite floats -> None)."""
    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
            return v
        if isinstance(v, float) or hasattr(v, "__float__"):
            f = float(v)
            return f if math.isfinite(f) else None
        return str(v)

    return fix(obj)


def _claimable(shards: Sequence[EvalShard]) -> bool:
    """A shard `claim_shard` could take now: PENDING, or RUNNING with an expired lease. (Preflight,
    which hashes the checkpoint and loads the model, is skipped for an evaluation with none.)"""
    now = utcnow()
    return any(shard_claimable(s, now) for s in shards)


def auto_device(visible_gpus: int, task_index: int) -> str:
    """`device: auto`: the CPU without a GPU; else GPU `task_index mod visible GPUs`. A SLURM task
    sees only the GPU it was given (cuda:0); the local executor's tasks share the machine's GPUs
    and spread over them instead of all loading the model on the first."""
    if visible_gpus < 1:
        return "cpu"
    return f"cuda:{task_index % visible_gpus}"


def run_job(job_dir: Path, eval_ids: Sequence[int], prefer_shard: int | None = None) -> dict[str, Any]:
    """The job: read `job_dir/job.json`, serve the evaluations, return a summary."""
    job = EvalJobFile.read(job_dir)
    worker = Worker(job, task_index=prefer_shard or 0)
    try:
        stats = worker.run(eval_ids, prefer_shard)
    finally:
        worker.close()
    return {"holder": worker.holder, "generated": stats.generated, "reused": stats.reused,
            "shards_done": [list(x) for x in stats.shards_done], "completed": stats.completed,
            "failed": stats.failed}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m awm_platform.evals.worker JOB_DIR --evals 1,2 [--shard K]` (debugging, tests)."""
    parser = argparse.ArgumentParser(prog="python -m awm_platform.evals.worker",
                                     description="Run an evaluation job in this process.")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--evals", required=True, help="comma-separated evaluation ids")
    parser.add_argument("--shard", type=int, default=None, help="the shard to claim first")
    args = parser.parse_args(argv)
    try:
        ids = [int(x) for x in args.evals.split(",") if x.strip()]
    except ValueError:
        print(f"error: --evals {args.evals!r}: expected comma-separated evaluation ids", file=sys.stderr)
        return 2
    if not ids:
        print("error: --evals: no evaluation id given", file=sys.stderr)
        return 2
    try:
        EvalJobFile.read(args.job_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = EvalJob(args.job_dir, ids, args.shard)()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
