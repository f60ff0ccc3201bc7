"""The evaluation scheduler: which evaluations should exist, which need a job, and the jobs.

One pass (`Scheduler.schedule`):

1. **Targets.** `awm eval run TARGET` names them (`targets.resolve_targets`); `awm eval schedule`
   discovers them: every checkpoint of every run in the store (`--runs GLOB`, `--sweep NAME`), after
   registering the checkpoints of those runs' directories that the store does not know yet
   (`store.add_checkpoint`: a trainer killed before its store logger flushed). A run whose
   directory is gone is skipped with one message; a checkpoint folder that is gone (retention) is
   skipped silently (counted in `skipped`).
2. **Ensure.** For each target x benchmark x weights: `spec.plan_evaluation` (spec, benchmark
   version, generation key) and `store.ensure_evaluation` (insert-or-get on the key, its shards in
   the same transaction): racing schedulers get one row.
3. **Submit.** An evaluation needs a job when it is PENDING or RUNNING, none of the jobs of its
   latest submission is alive (`backend.poll`, one batch per cluster; a job the scheduler does not
   know yet counts as alive) and a job would have work: a claimable shard (PENDING, or RUNNING
   with an expired lease) or, every shard being DONE, the aggregate. The scheduler wins it with
   `store.claim_submission` (one winner among racing schedulers; a previous submission must be
   older than the grace, `AWM_EVAL_SUBMIT_GRACE_S`, default 60 s, so a job that was just submitted
   and is not yet visible to the scheduler is not submitted twice), groups the won evaluations by
   base model (and, without arrays, shard count) and submits ONE array per group
   (`backend.submit_array`: SLURM one sbatch `--array=0-(n-1)%launcher.array_parallelism` with one
   task per shard of the group; local one process per shard of an evaluation, in parallel; debug in
   this process, one task after the other). Task k runs `EvalJob(job_dir, eval_ids,
   prefer_shard=k)`: every task serves every evaluation of the group, claiming whichever shard is
   free. At most `max_jobs` jobs per pass.

An evaluation whose shards were all claimed `max_attempts` times without finishing, and that no
live job serves, is FAILED by the scheduler (a worker killed every time cannot say it itself).
`wait` repeats passes over a set of evaluations (resubmitting dead work) until each is
terminal, then mirrors COMPLETED evaluations not yet mirrored to MLflow.

The job directory `$AWM_HOME/evals/jobs/<name>/` is what the executor backends call a run
directory: `job.json` (0600: it holds the store URL), `setup.sh` (0600, `launcher.setup`), `code`
(the code snapshot the tasks import), `submitit/` (logs, pickles), `jobs.json` (the job ids of
this submission) and `local_jobs.json` (local).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from awm_platform import paths
from awm_platform.config import ExperimentConfig, apply_overrides
from awm_platform.evals.images import eval_images_dir, evals_root
from awm_platform.evals.spec import (
    EvalServiceConfig,
    benchmark_options,
    build_benchmark,
    num_batches,
    plan_evaluation,
)
from awm_platform.evals.targets import EvalTarget, checkpoint_target, manifest_sha256, resolve_targets
from awm_platform.evals.worker import EvalJob, EvalJobFile
from awm_platform.runner import snapshot
from awm_platform.runner.api import SubmitError, tracking_target
from awm_platform.runner.backends import backend_for
from awm_platform.runner.proc import fault_point
from awm_platform.runner.spec import SETUP_FILE, JobSpec, setup_script
from awm_platform.store import (
    EVAL_TERMINAL_STATUSES,
    EvalStatus,
    Evaluation,
    NotFoundError,
    ShardStatus,
    Store,
    as_utc,
    eval_key,
    shard_claimable,
    utcnow,
)
from benchmarks.files import atomic_write
from benchmarks.registry import BENCHMARKS, list_benchmarks
from trainers.awm.checkpoint import MANIFEST, CheckpointError, list_step_dirs, validate

SUBMIT_GRACE_ENV = "AWM_EVAL_SUBMIT_GRACE_S"
DEFAULT_SUBMIT_GRACE_S = 60.0
JOBS_DIR = "jobs"
JOBS_FILE = "jobs.json"  # in a job directory: the job ids of that submission
MAX_ARRAY_TASKS = 1000  # SLURM's default MaxArraySize is 1001 (indices 0-1000)
WEIGHTS = ("policy", "ema")
# benchmark options naming weight folders (benchmarks/<name>/README.md); shown when weights are missing
WEIGHTS_KEYS: dict[str, tuple[str, ...]] = {"geneval": ("detector_path", "clip_path"),
                                            "pickscore": ("model_path", "processor_path")}


class ScheduleError(ValueError):
    """Bad input for the scheduler (unknown benchmark, missing weights, bad TARGET): one line."""


@dataclass
class ScheduleSummary:
    """What one pass found and did (`awm eval schedule --once --json`)."""

    found: int = 0          # evaluations considered (checkpoint x benchmark x weights)
    submitted: int = 0      # put into a job by this pass
    already_done: int = 0   # COMPLETED
    running: int = 0        # not terminal and served by a live job (or submitted moments ago by another scheduler)
    failed: int = 0         # FAILED or CANCELLED
    skipped: int = 0        # checkpoints not evaluated: folder gone, no EMA weights for --weights ema
    deferred: int = 0       # needed a job beyond --max-jobs: the next pass submits them
    jobs: list[str] = field(default_factory=list)            # job ids submitted by this pass
    evaluation_ids: list[int] = field(default_factory=list)  # every evaluation considered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _JobRef:
    """What `ExecutorBackend.poll` reads of a run, for one job of an evaluation."""

    name: str
    job_ids: list[str]
    output_dir: str
    num_gpus: int = 1


def submission_job_ids(ev: Evaluation) -> list[str]:
    """The jobs of the evaluation's latest submission: `job_dir/jobs.json` of the job directory the
    store records last (a scheduler killed before writing it never recorded that job either)."""
    try:
        data = json.loads((Path(str(ev.job_dir)) / JOBS_FILE).read_text())
        return [str(j) for j in data["job_ids"]]
    except (OSError, ValueError, KeyError, TypeError):
        return [str(j) for j in ev.job_ids[-1:]]


def submit_grace_s() -> float:
    return float(os.environ.get(SUBMIT_GRACE_ENV, DEFAULT_SUBMIT_GRACE_S))


def parse_benchmarks(text: str | Sequence[str] | None) -> list[str]:
    """`geneval,ocr` -> ["geneval", "ocr"]; unknown names are a ScheduleError."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    names = list(dict.fromkeys(n.strip() for n in items if n.strip()))
    if not names:
        raise ScheduleError(f"--benchmarks: name at least one benchmark ({', '.join(list_benchmarks())})")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ScheduleError(f"--benchmarks: unknown benchmark {', '.join(map(repr, unknown))}; known: "
                            f"{', '.join(list_benchmarks())}")
    return names


def parse_weights(text: str | None, service: EvalServiceConfig) -> list[str]:
    """`--weights policy|ema|both` (None: eval.service.weights)."""
    value = text or service.weights
    if value == "both":
        return list(WEIGHTS)
    if value not in WEIGHTS:
        raise ScheduleError(f"--weights: expected policy, ema or both, got {value!r}")
    return [value]


def check_weights(service: EvalServiceConfig, benchmarks: Iterable[str]) -> None:
    """Every benchmark's model weights are where the config says (no model is loaded): else one
    ScheduleError naming the key, the path and how to provide them, before anything is submitted."""
    for name in benchmarks:
        bench = build_benchmark(service, name)
        try:
            status = bench.check_models()
        finally:
            bench.close()
        if status.available:
            continue
        keys = WEIGHTS_KEYS.get(name, ())
        given = benchmark_options(service, name)
        where = ", ".join(f"eval.service.weights_dirs.{name}.{k}={given.get(k, '(not set)')}" for k in keys)
        raise ScheduleError(
            f"{name}: model weights missing: {status.detail} [{where}]; put local Hugging Face-format folders "
            f"there (--set eval.service.weights_dirs.{name}.{keys[0] if keys else 'KEY'}=DIR or the config; "
            f"layouts in docs/evals.md, 'Benchmark weights')")


MIRROR_GRACE_ENV = "AWM_EVAL_MIRROR_GRACE_S"
# `wait`'s longest poll interval (default 30 s); a test waiting on a short real evaluation sets it
# to 1 s, where the growing interval (2, 3, 4.5, 6.8, 10 s...) would overshoot its end by seconds
WAIT_MAX_POLL_ENV = "AWM_EVAL_WAIT_MAX_POLL_S"
DEFAULT_WAIT_MAX_POLL_S = 30.0


class Scheduler:
    """Ensures evaluations and submits their jobs for one eval command's config (`cfg`: its
    `eval.service`, `launcher`, `storage`, `tracking`)."""

    def __init__(self, store: Store, cfg: ExperimentConfig, *, cluster: str | None = None,
                 echo: Callable[[str], None] | None = None, run_spec_overrides: Sequence[str] | None = None) -> None:
        """`run_spec_overrides` (the command had no `--config`): a run's checkpoints are evaluated
        with the run's own `eval.service` (its training config says how it is evaluated), these
        `--set eval.service.*` overrides applied on top; the command's `weights_dirs` (this
        machine's folders) always. None: `cfg.eval.service` for every target."""
        self.store = store
        self.cfg = cfg
        self.service: EvalServiceConfig = cfg.eval.service
        self.run_spec_overrides = None if run_spec_overrides is None else [
            o for o in run_spec_overrides if o.split("=", 1)[0].strip().startswith("eval.service.")]
        self._run_services: dict[str, EvalServiceConfig] = {}
        self.cluster = cluster or cfg.launcher.cluster
        self.backend = backend_for(self.cluster)
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self._benchmarks: dict[str, Any] = {}

    # ------------------------------------------------------------------ targets ----
    def discover(self, *, runs_glob: str | None = None, sweep: str | None = None,
                 summary: ScheduleSummary | None = None) -> list[EvalTarget]:
        """Every checkpoint of the store's runs (filtered), after registering the unregistered
        checkpoint folders of their run directories."""
        summary = summary if summary is not None else ScheduleSummary()
        out: list[EvalTarget] = []
        for run in self.store.list_runs(sweep_name=sweep):
            if runs_glob and not fnmatch.fnmatchcase(run.name, runs_glob):
                continue
            run_dir = Path(run.output_dir)
            if not run_dir.is_dir():
                self.echo(f"skipping run {run.name}: its directory {run_dir} is gone")
                summary.skipped += 1
                continue
            self._register_checkpoints(run.name, run_dir)
            for ckpt in self.store.list_checkpoints(run.name):
                if not (Path(ckpt.path) / MANIFEST).is_file():
                    summary.skipped += 1  # pruned by checkpoint retention
                    continue
                out.append(checkpoint_target(self.store, run.name, ckpt, run.resolved_config or {}))
        return out

    def _register_checkpoints(self, run_name: str, run_dir: Path) -> None:
        known = {c.step for c in self.store.list_checkpoints(run_name)}
        for step, path in list_step_dirs(run_dir):
            if step in known:
                continue
            try:
                info = validate(path, verify_hashes=False)  # the worker verifies the files before use
            except CheckpointError:
                continue
            self.store.add_checkpoint(run_name, step=step, path=path, sha256=manifest_sha256(path),
                                      formats=list(info.manifest.get("formats", [])))

    def resolve(self, target: str) -> list[EvalTarget]:
        return resolve_targets(self.store, target, defaults=self.cfg, warn=self.echo)

    # ------------------------------------------------------------------- ensure ----
    def service_for(self, target: EvalTarget) -> EvalServiceConfig:
        """The spec defaults `target` is evaluated with (see `__init__`)."""
        if self.run_spec_overrides is None or target.run_name is None:
            return self.service
        if target.run_name not in self._run_services:
            resolved = self.store.get_run(target.run_name).resolved_config or {}
            own = dict((resolved.get("eval") or {}).get("service") or {})
            own["weights_dirs"] = self.service.model_dump(mode="json")["weights_dirs"]
            try:
                data = apply_overrides({"eval": {"service": own}}, self.run_spec_overrides)
                service = EvalServiceConfig.model_validate(data["eval"]["service"])
            except (ValueError, TypeError) as exc:  # a run from before a schema change
                self.echo(f"run {target.run_name}: its eval.service cannot be used ({str(exc).splitlines()[0]}); "
                          "evaluating it with the command's")
                service = self.service
            self._run_services[target.run_name] = service
        return self._run_services[target.run_name]

    def _benchmark(self, name: str) -> Any:
        if name not in self._benchmarks:
            self._benchmarks[name] = build_benchmark(self.service, name)
        return self._benchmarks[name]

    def ensure(self, targets: Sequence[EvalTarget], benchmarks: Sequence[str], weights: Sequence[str],
               summary: ScheduleSummary | None = None) -> list[Evaluation]:
        """The evaluations of every target x benchmark x weights, created where missing."""
        summary = summary if summary is not None else ScheduleSummary()
        out: dict[int, Evaluation] = {}
        for target in targets:
            for w in weights:
                if w == "ema" and not target.is_base and not target.has_ema:
                    self.echo(f"skipping {target.label} --weights ema: the checkpoint has no EMA weights "
                              "(train.ema off)")
                    summary.skipped += 1
                    continue
                for name in benchmarks:
                    plan = plan_evaluation(self.service_for(target), self._benchmark(name), target.ctx,
                                           target.checkpoint_sha256, w)  # type: ignore[arg-type]
                    key = eval_key(target.checkpoint_sha256, name, plan.benchmark_version, plan.spec.hash)
                    ev, _created = self.store.ensure_evaluation(
                        checkpoint_sha256=target.checkpoint_sha256, benchmark=name,
                        benchmark_version=plan.benchmark_version, spec_hash=plan.spec.hash,
                        spec=plan.spec.model_dump(mode="json"), target=target.label,
                        num_shards=max(1, min(self.service_for(target).shards, num_batches(plan.num_prompts, plan.spec))),
                        run_name=target.run_name, step=target.step, checkpoint_id=target.checkpoint_id,
                        checkpoint_path=None if target.path is None else str(target.path),
                        partial=plan.spec.partial, images_dir=str(eval_images_dir(key)))
                    fault_point("eval_after_ensure")
                    out[ev.id] = ev  # base:MODEL with --weights both is one evaluation
        return list(out.values())

    # ------------------------------------------------------------------- submit ----
    def live_jobs(self, evals: Sequence[Evaluation]) -> dict[int, bool]:
        """{evaluation id: a job of its latest submission may still be running}. One poll per cluster."""
        refs: dict[str, list[tuple[int, _JobRef]]] = {}
        out: dict[int, bool] = {}
        for ev in evals:
            out[ev.id] = False
            if not ev.job_ids or not ev.cluster or not ev.job_dir:
                continue
            backend = backend_for(ev.cluster)
            if backend.runs_in_process:
                continue  # its jobs ran to their end inside the process that submitted them
            for job_id in submission_job_ids(ev):
                refs.setdefault(ev.cluster, []).append((ev.id, _JobRef(f"{ev.id}:{job_id}", [str(job_id)],
                                                                      ev.job_dir)))
        for cluster, items in refs.items():
            observed = backend_for(cluster).poll([ref for _, ref in items])
            for ev_id, ref in items:
                obs = observed.get(ref.name)
                # absent (nothing known yet, a live local process) or a non-final state: alive
                if obs is None or obs.status not in ("COMPLETED", "FAILED", "CANCELLED"):
                    out[ev_id] = True
        return out

    def has_work(self, ev: Evaluation) -> bool:
        """A job would do something now: a shard is claimable (PENDING, or its lease expired), or
        every shard is DONE and only the aggregate is missing. (A shard whose worker died keeps
        its lease until it expires: resubmitting before would start a job with nothing to claim.)"""
        now = utcnow()
        shards = self.store.list_shards(ev.id)
        if all(s.status == ShardStatus.DONE for s in shards):
            return True
        return any(shard_claimable(s, now) for s in shards)

    def fail_exhausted(self, ev: Evaluation) -> bool:
        """FAIL `ev` when a shard that is not DONE was claimed max_attempts times and nobody holds
        a live lease on it (its workers died each time). Call only when no live job serves `ev`."""
        now = utcnow()
        max_attempts = self._submitted_max_attempts(ev)
        for shard in self.store.list_shards(ev.id):
            if shard.status == ShardStatus.DONE or shard.attempts < max_attempts:
                continue
            lease = as_utc(shard.lease_expires_at)
            if shard.status == ShardStatus.RUNNING and lease is not None and lease > now:
                continue
            why = f": {shard.error}" if shard.error else " (its worker died each time)"
            return self.store.fail_evaluation(
                ev.id, f"shard {shard.shard_index} failed {shard.attempts} times (max_attempts "
                f"{max_attempts}){why}")
        return False

    def _submitted_max_attempts(self, ev: Evaluation) -> int:
        """The max_attempts its jobs run with (their job.json), not this command's config's."""
        if ev.job_dir:
            try:
                return EvalJobFile.read(Path(ev.job_dir)).max_attempts
            except (ValueError, OSError):  # job dir gone or unreadable: this command's value
                pass
        return self.service.max_attempts

    def submit(self, evals: Sequence[Evaluation], *, max_jobs: int | None = None,
               summary: ScheduleSummary | None = None) -> ScheduleSummary:
        """Submit jobs for the evaluations among `evals` that need one; count every evaluation in
        `summary` (done, failed, running, submitted, deferred)."""
        summary = summary if summary is not None else ScheduleSummary()
        evals = [self.store.get_evaluation(ev.id) for ev in evals]
        open_evals = [ev for ev in evals if ev.status not in EVAL_TERMINAL_STATUSES]
        live = self.live_jobs(open_evals)
        need: list[Evaluation] = []
        for ev in open_evals:
            if live[ev.id] or self.fail_exhausted(ev):
                continue
            if self.has_work(ev):
                need.append(ev)
        groups: dict[tuple[Any, ...], list[Evaluation]] = {}
        for ev in need:
            spec = ev.spec or {}
            key = (spec.get("model"), spec.get("revision"), spec.get("family"), spec.get("precision"))
            if not self.backend.supports_arrays:  # one process per task at once: the shards are the parallelism
                key += (ev.num_shards,)
            groups.setdefault(key, []).append(ev)
        submitted_ids: set[int] = set()
        deferred_ids: set[int] = set()
        jobs_done = 0
        grace = submit_grace_s()
        for group in groups.values():
            if max_jobs is not None and jobs_done >= max_jobs:
                deferred_ids.update(ev.id for ev in group)
                continue
            token = uuid.uuid4().hex
            won = [ev for ev in group if self.store.claim_submission(ev.id, token, stale_after_s=grace)]
            if not won:
                continue  # another scheduler submitted them moments ago
            job_ids = self._submit_group(won, token)
            summary.jobs.extend(job_ids)
            submitted_ids.update(ev.id for ev in won)
            jobs_done += 1
        for ev in evals:
            current = self.store.get_evaluation(ev.id)
            if ev.id in submitted_ids:
                summary.submitted += 1
            elif current.status == EvalStatus.COMPLETED:
                summary.already_done += 1
            elif current.status in EVAL_TERMINAL_STATUSES:
                summary.failed += 1
            elif ev.id in deferred_ids:
                summary.deferred += 1
            else:
                summary.running += 1
        return summary

    def num_tasks(self, evals: Sequence[Evaluation]) -> int:
        """Tasks of the job serving `evals`. Every task serves every evaluation of the group, claiming
        whichever shard is free, so the work spreads over the tasks by itself. With arrays (SLURM:
        at most `launcher.array_parallelism` run at once) one task per shard of the group, so that
        checkpoints are evaluated in parallel too; without (local: every task is a process started
        now, sharing the machine's GPUs) one task per shard of ONE evaluation (`eval.service.shards`)."""
        if self.backend.supports_arrays:
            return max(1, min(MAX_ARRAY_TASKS, sum(max(1, ev.num_shards) for ev in evals)))
        return max(1, max(ev.num_shards for ev in evals))

    def _submit_group(self, evals: Sequence[Evaluation], token: str) -> list[str]:
        """ONE array of `num_tasks` tasks serving `evals`; returns the job ids (recorded)."""
        num_tasks = self.num_tasks(evals)
        name = f"eval-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{token[:8]}"
        job_dir = evals_root() / JOBS_DIR / name
        job_cfg = self.job_config(name)
        self.write_job_dir(job_dir, job_cfg, sorted({ev.benchmark for ev in evals}))
        jobs = [EvalJob(str(job_dir), [ev.id for ev in evals], prefer_shard=k) for k in range(num_tasks)]
        try:
            submitted = self.backend.submit_array([job_cfg] * num_tasks, [job_dir] * num_tasks, jobs,
                                                  job_dir / "submitit")
        except Exception as exc:
            # nothing was submitted: give the claims back (a fixed command may submit at once, not
            # after the grace) and leave no job directory behind
            for ev in evals:
                self.store.release_submission(ev.id, token)
            shutil.rmtree(job_dir, ignore_errors=True)
            rejected = self.backend.rejection(exc)
            if rejected is not None:
                raise SubmitError(rejected) from None
            raise
        fault_point("eval_after_submit")
        job_ids = [str(j.job_id) for j in submitted]
        # which jobs make up this submission (`submission_job_ids`): written before the store points at it
        atomic_write(job_dir / JOBS_FILE, json.dumps({"job_ids": job_ids, "evaluation_ids": [ev.id for ev in evals]},
                                                     indent=2) + "\n")
        for job_id in job_ids:
            self.store.record_eval_job([ev.id for ev in evals], cluster=self.cluster, job_dir=str(job_dir),
                                       job_id=job_id)
        labels = ", ".join(f"{ev.id} ({ev.target} {ev.benchmark})" for ev in evals)
        self.echo(f"submitted {name} on {self.cluster} ({num_tasks} task{'s' if num_tasks > 1 else ''}: "
                  f"{', '.join(job_ids)}) for evaluations {labels}")
        if self.backend.runs_in_process:
            for job in submitted:  # the debug executor runs each task here, when its result is asked for
                try:
                    with contextlib.redirect_stdout(sys.stderr):  # the caller's stdout stays its own (--json)
                        job.result()
                except Exception as exc:  # noqa: BLE001 - the store says what the task managed to do
                    self.echo(f"evaluation task failed: {type(exc).__name__}: {str(exc)[:500]}")
        return job_ids

    def job_config(self, name: str) -> ExperimentConfig:
        """The launcher settings of an evaluation task: the command's `launcher` on ONE GPU of one
        node (a shard is one process; more GPUs = more shards), named after the job."""
        launcher = self.cfg.launcher.model_copy(update={"nodes": 1, "gpus_per_node": 1, "cluster": self.cluster})
        return self.cfg.model_copy(update={"name": name, "launcher": launcher})

    def write_job_dir(self, job_dir: Path, job_cfg: ExperimentConfig, benchmarks: Sequence[str]) -> None:
        """job.json (0600), setup.sh (0600, launcher.setup), the code snapshot link."""
        job_dir.mkdir(parents=True, exist_ok=True)
        tracking_uri, artifact_root = tracking_target(job_cfg)
        EvalJobFile(
            store_url=self.store.url,
            tracking_uri=tracking_uri,
            tracking_experiment=job_cfg.tracking.experiment,
            tracking_artifact_root=artifact_root,
            lease_s=self.service.lease_s,
            max_attempts=self.service.max_attempts,
            benchmark_options={name: benchmark_options(self.service, name) for name in benchmarks},
        ).write(job_dir)
        if job_cfg.launcher.setup:
            atomic_write(job_dir / SETUP_FILE, setup_script(list(job_cfg.launcher.setup), job_dir), mode=0o600)
        snapshot.link_snapshot(job_dir, snapshot.snapshot_code(paths.awm_home()))

    # ------------------------------------------------------------------- passes ----
    def schedule(self, *, benchmarks: Sequence[str], weights: Sequence[str], targets: Sequence[EvalTarget] | None = None,
                 runs_glob: str | None = None, sweep: str | None = None,
                 max_jobs: int | None = None) -> ScheduleSummary:
        """One pass: targets (given, else discovered) -> ensure -> submit what needs a job."""
        summary = ScheduleSummary()
        if targets is None:
            targets = self.discover(runs_glob=runs_glob, sweep=sweep, summary=summary)
        evals = self.ensure(targets, benchmarks, weights, summary)
        summary.found = len(evals)
        summary.evaluation_ids = [ev.id for ev in evals]
        self.submit(evals, max_jobs=max_jobs, summary=summary)
        self.mirror_pending(evals)
        return summary

    def mirror_pending(self, evals: Sequence[Evaluation]) -> None:
        """Mirror COMPLETED evaluations whose worker died between completing and mirroring (or found
        MLflow down). Only those completed more than `AWM_EVAL_MIRROR_GRACE_S` (default 120 s) ago:
        the worker that completed one mirrors it within seconds, and two mirrors of one evaluation
        at once could each log the per-sample table."""
        grace = float(os.environ.get(MIRROR_GRACE_ENV, "120"))
        now = utcnow()
        current = [self.store.get_evaluation(ev.id) for ev in evals]
        todo = [ev.id for ev in current if ev.status == EvalStatus.COMPLETED and not ev.mirrored
                and (ev.ended_at is None or (now - as_utc(ev.ended_at)).total_seconds() >= grace)]
        if not todo:
            return
        # deferred: mlflow (2.5 s of a 6.7 s no-op `schedule --once`) loads only when something needs mirroring
        from awm_platform.evals.mirror import MirrorError, mirror_stored

        tracking_uri, artifact_root = tracking_target(self.cfg)
        for eval_id in todo:
            try:
                mirror_stored(self.store, eval_id, tracking_uri=tracking_uri, experiment=self.cfg.tracking.experiment,
                              artifact_location=artifact_root)
            except MirrorError as exc:  # MLflow down: the next pass mirrors it
                self.echo(str(exc))

    def wait(self, eval_ids: Sequence[int], *, poll_s: float = 2.0, max_poll_s: float | None = None,
             timeout_s: float | None = None, stop: Callable[[], bool] | None = None) -> list[Evaluation]:
        """Until every evaluation is terminal: resubmit dead work, fail exhausted shards, then mirror.
        The poll interval grows from `poll_s` to `max_poll_s` (default `AWM_EVAL_WAIT_MAX_POLL_S`,
        30 s: an hours-long wait must not put a scheduler query every 2 s on a SLURM controller)."""
        if max_poll_s is None:
            max_poll_s = float(os.environ.get(WAIT_MAX_POLL_ENV, DEFAULT_WAIT_MAX_POLL_S))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = min(poll_s, max_poll_s)
        while True:
            evals = [self.store.get_evaluation(i) for i in eval_ids]
            if all(ev.status in EVAL_TERMINAL_STATUSES for ev in evals):
                self.mirror_pending(evals)
                return [self.store.get_evaluation(i) for i in eval_ids]
            if (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop()):
                return evals
            self.submit(evals)
            time.sleep(delay)
            delay = min(max_poll_s, delay * 1.5)


# ----------------------------------------------------------------- run forever ----
class _StopFlag:
    """SIGTERM / SIGINT: finish the current pass, then stop."""

    def __init__(self) -> None:
        self.stopped = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopped = True

    def __call__(self) -> bool:
        return self.stopped


def schedule_forever(scheduler: Scheduler, interval_s: float, *, benchmarks: Sequence[str], weights: Sequence[str],
                     runs_glob: str | None = None, sweep: str | None = None, max_jobs: int | None = None,
                     on_pass: Callable[[ScheduleSummary], None] | None = None) -> None:
    """`awm eval schedule --interval S`: a pass every S seconds until SIGTERM/SIGINT (the pass in
    progress finishes). Holds no state of its own: a restarted scheduler continues from the store."""
    stop = _StopFlag()
    stop.install()
    while not stop():
        try:
            summary = scheduler.schedule(benchmarks=benchmarks, weights=weights, runs_glob=runs_glob, sweep=sweep,
                                         max_jobs=max_jobs)
            if on_pass is not None:
                on_pass(summary)
        except Exception as exc:  # noqa: BLE001 - a failed pass (store briefly down) must not end the loop
            scheduler.echo(f"schedule pass failed: {type(exc).__name__}: {str(exc)[:500]}")
        deadline = time.monotonic() + interval_s
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(0.5, interval_s))


# ------------------------------------------------------------ eval.on_checkpoint ----
# The training job's store logger (runner/tracking.py, rank 0) runs `python -m
# awm_platform.evals.scheduler RUN_DIR STEP` in a detached process for each checkpoint it
# registers when the run's config has `eval.on_checkpoint`: training never waits for it.
def enqueue_checkpoint(run_dir: Path, step: int) -> ScheduleSummary | None:
    """Ensure and submit the `eval.on_checkpoint` evaluations of checkpoint `step` of the run in
    `run_dir`, with the run's own config (its eval.service, launcher, storage, tracking)."""
    spec = JobSpec.load(run_dir)
    cfg = spec.experiment_config()
    if not cfg.eval.on_checkpoint:
        return None
    benchmarks = []
    for name in cfg.eval.on_checkpoint:
        try:
            check_weights(cfg.eval.service, [name])
            benchmarks.append(name)
        except ScheduleError as exc:  # no evaluation that could only fail: say why in the hook's log
            print(f"[awm-eval] eval.on_checkpoint: skipping {exc}", file=sys.stderr, flush=True)
    if not benchmarks:
        return None
    store = Store(spec.store_url, upgrade=False)
    try:
        scheduler = Scheduler(store, cfg, cluster=spec.cluster)
        targets = scheduler.resolve(f"{spec.name}@{int(step)}")
        weights = parse_weights(None, cfg.eval.service)
        return scheduler.schedule(benchmarks=benchmarks, weights=weights, targets=targets)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m awm_platform.evals.scheduler RUN_DIR STEP", file=sys.stderr)
        return 2
    paths.restrict_umask()
    try:
        summary = enqueue_checkpoint(Path(args[0]), int(args[1]))
    except (NotFoundError, ValueError, OSError, SubmitError) as exc:
        print(f"[awm-eval] eval.on_checkpoint for {args[0]} step {args[1]} failed: {exc}", file=sys.stderr)
        return 1
    if summary is not None:
        print(json.dumps({"step": int(args[1]), **summary.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
