"""The sweep orchestrator: Optuna ask/tell around training runs submitted through the runner.

One orchestrator process owns a study. Each asked trial becomes one training run
(`<study>-t<number>`) submitted through `awm_platform.runner` (local executor or SLURM); the
training job never talks to Optuna. The orchestrator polls the runs' states (one batched
`refresh_states` per pass), reads the objective's eval metrics from the platform store and
reports them to Optuna *on the trial's behalf* (step = optimizer step), so pruning works
although the trial runs in another process or node.

Trial lifecycle (run status -> Optuna):
- PENDING / RUNNING / PREEMPTED: wait (a preempted run is requeued by the runner as the
  same run, so it stays the same trial).
- COMPLETED: tell COMPLETE with the objective's last (or best, `objective.final`) value;
  FAIL if the metric was never logged.
- FAILED (process died, job vanished): tell FAIL and, up to `sweep.max_retries` times,
  enqueue a retry with the same params (`user_attrs: retry_of, root_trial, attempt`; also
  Optuna's own `system_attrs: failed_trial, retry_history`, as `RetryFailedTrialCallback` sets
  them, so Optuna's tools see the retry chain). A retry replaces its failed trial in the
  `n_trials` count.
- pruned (pruner says so on a newly reported value): `cancel_run(status="PRUNED")`, tell PRUNED.

Restart safety: the runs are found through the store (`sweep_name`, `trial_number`), so a
resumed orchestrator adopts RUNNING trials whose runs are still pending/running and submits
only trials that were asked but never reached the store. Run names are deterministic, so a
second submission of the same trial is refused by the store's unique name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from awm_platform.config import ExperimentConfig, config_from_dict, config_hash, resolved_config
from awm_platform.dotted import set_dotted
from awm_platform.paths import awm_home, validate_run_name
from awm_platform.redaction import REDACTED, redact_url
from awm_platform.runner.api import submit_run
from awm_platform.runner.proc import fault_point, is_alive, process_start_time
from awm_platform.runner.state import cancel_run, refresh_states
from awm_platform.store import ACTIVE_STATUSES, Store
from awm_platform.sweeps.optuna_bridge import (
    OpenStudy,
    distributions,
    grid_size,
    make_pruner,
    make_sampler,
    open_storage,
    study_exists,
    trial_seed,
)
from awm_platform.sweeps.spec import SweepSpec
from awm_platform.sweeps.tracking import log_study_summary, start_parent_run, summarize_study
from benchmarks.files import atomic_write
from trainers.awm.config import method_switched

SWEEP_RUNNING, SWEEP_STOPPING, SWEEP_STOPPED = "RUNNING", "STOPPING", "STOPPED"
SWEEP_COMPLETED, SWEEP_INTERRUPTED = "COMPLETED", "INTERRUPTED"
ORCH_ATTR = "awm_orchestrator"


class SweepError(RuntimeError):
    """A sweep that cannot be started/resumed/stopped; the message says why and what to do."""


# ----------------------------------------------------------------------- backend ----
class Backend(Protocol):
    """What the orchestrator needs from the runner (the real one is `RunnerBackend`)."""

    def submit(self, cfg: ExperimentConfig, *, cluster: str, store: Store, sweep_name: str, trial_number: int,
               mlflow_parent_run_id: str | None, extra_tags: dict[str, str]) -> tuple[str, str | None]: ...

    def refresh(self, store: Store, names: list[str]) -> dict[str, str]: ...

    def cancel(self, name: str, store: Store, status: str) -> None: ...


class RunnerBackend:
    def submit(self, cfg: ExperimentConfig, *, cluster: str, store: Store, sweep_name: str, trial_number: int,
               mlflow_parent_run_id: str | None, extra_tags: dict[str, str]) -> tuple[str, str | None]:
        sub = submit_run(cfg, cluster=cluster, store=store, sweep_name=sweep_name, trial_number=trial_number,
                         mlflow_parent_run_id=mlflow_parent_run_id, extra_tags=extra_tags)
        return sub.name, (None if sub.job_id is None else str(sub.job_id))

    def refresh(self, store: Store, names: list[str]) -> dict[str, str]:
        return refresh_states(store, names)

    def cancel(self, name: str, store: Store, status: str) -> None:
        cancel_run(name, store, status=status)


# ----------------------------------------------------------------------- context ----
def sweep_dir(study_name: str) -> Path:
    return awm_home() / "sweeps" / validate_run_name(study_name)


@dataclass
class SweepContext:
    """Everything needed to (re)attach to a study, persisted in `$AWM_HOME/sweeps/<study>/sweep.json`
    (mode 0600: it holds the unredacted storage URLs a resumed orchestrator needs)."""

    study_name: str
    cfg: ExperimentConfig
    cluster: str
    storage_url: str

    @property
    def spec(self) -> SweepSpec:
        assert self.cfg.sweep is not None
        return self.cfg.sweep

    @property
    def state_dir(self) -> Path:
        return sweep_dir(self.study_name)

    def save(self) -> None:
        data = {"study_name": self.study_name, "cluster": self.cluster, "storage_url": self.storage_url,
                "config": self.cfg.model_dump(mode="json")}
        atomic_write(self.state_dir / "sweep.json", json.dumps(data, indent=2), mode=0o600)

    @classmethod
    def load(cls, study_name: str, *, store: Store | None = None) -> SweepContext:
        path = sweep_dir(study_name) / "sweep.json"
        if path.exists():
            data = json.loads(path.read_text())
            return cls(study_name=data["study_name"], cfg=ExperimentConfig.model_validate(data["config"]),
                       cluster=data["cluster"], storage_url=data["storage_url"])
        if store is None:
            raise SweepError(f"no sweep named {study_name!r}: {path} does not exist (is $AWM_HOME right?)")
        sw = store.get_sweep(study_name)  # NotFoundError names the store
        conf = {k: v for k, v in (sw.resolved_config or {}).items() if k != "derived"}
        if REDACTED in sw.optuna_storage or REDACTED in json.dumps(conf):
            raise SweepError(f"sweep {study_name!r} was started on another machine and its config holds secrets "
                             f"(a storage password, setup lines) the store keeps only redacted: copy {path} from "
                             "there (or run the command there)")
        cfg = ExperimentConfig.model_validate(conf)
        return cls(study_name=study_name, cfg=cfg, cluster=cfg.launcher.cluster, storage_url=sw.optuna_storage)

    def open_store(self) -> Store:
        return Store.for_config(self.cfg)


# ------------------------------------------------------------------ trial config ----
def trial_config(cfg: ExperimentConfig, study_name: str, number: int, params: dict[str, Any],
                 seed: int) -> ExperimentConfig:
    """The experiment config of one trial: the study's config without its `sweep:` section,
    the trial's params applied as dotted overrides, its own name and seed."""
    data = cfg.model_dump(mode="json", exclude={"sweep"})
    if "method" in params:  # a searched method: its own defaults, without keys only the study's method reads
        data = method_switched(data, params["method"])
    for key, value in params.items():
        data = set_dotted(data, key, value)
    data["name"] = trial_run_name(study_name, number)
    data["seed"] = seed
    return config_from_dict(data, source=f"sweep {study_name} trial {number}")


def trial_run_name(study_name: str, number: int) -> str:
    return f"{study_name}-t{number}"


def this_host() -> str:
    return socket.gethostname()


def orchestrator_alive(info: dict[str, Any] | None, grace_period_s: float) -> bool:
    """Another orchestrator holds the study if it beat recently (and, on this host, its pid
    still runs the process that started at `info["started"]`)."""
    if not info:
        return False
    if time.time() - float(info.get("heartbeat", 0)) > grace_period_s:
        return False
    if info.get("host") == this_host():
        started = info.get("started")
        return is_alive(int(info.get("pid", -1)), None if started is None else float(started))
    return True


def objective_names(spec: SweepSpec) -> list[str]:
    """One name per objective for `study.set_metric_names` (optuna-dashboard labels the values)."""
    return [o.metric if o.final == "last" else f"{o.metric} ({o.final})" for o in spec.objective]


def enqueue_retry(study: optuna.Study, failed: FrozenTrial, *, attempt: int) -> None:
    """A WAITING trial with the failed trial's params: what `enqueue_trial` adds (`fixed_params`),
    plus our `retry_of / root_trial / attempt` user attrs and the system attrs Optuna's
    `RetryFailedTrialCallback` sets (`failed_trial` = the first trial of the chain,
    `retry_history` = every trial of the chain so far), which `RetryFailedTrialCallback.retried_trial_number`
    and `.retry_history` read back."""
    root = int(failed.user_attrs.get("root_trial", failed.number))
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": dict(failed.params), "failed_trial": int(failed.system_attrs.get("failed_trial", root)),
                      "retry_history": [*failed.system_attrs.get("retry_history", []), failed.number]},
        user_attrs={"retry_of": failed.number, "root_trial": root, "attempt": attempt}))


# ---------------------------------------------------------------------- counters ----
def consumed_trials(trials: list[FrozenTrial]) -> int:
    """Trials counted against `n_trials`: every trial except retries (a retry replaces the
    failed trial it retries, so each logical trial is counted once)."""
    return sum(1 for t in trials if "retry_of" not in t.user_attrs)


@dataclass
class Timings:
    """Wall time the orchestrator itself spends per phase (perf/sweep_overhead.py)."""

    ask: float = 0.0
    submit: float = 0.0
    poll: float = 0.0
    tell: float = 0.0
    passes: int = 0
    told: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"ask_s": self.ask, "submit_s": self.submit, "poll_s": self.poll, "tell_s": self.tell,
                "passes": self.passes, "trials_told": self.told}


@dataclass
class SweepResult:
    study_name: str
    status: str
    counts: dict[str, int]
    best: list[dict[str, Any]] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)


# ------------------------------------------------------------------ orchestrator ----
class Orchestrator:
    def __init__(self, ctx: SweepContext, *, store: Store | None = None, backend: Backend | None = None,
                 echo: Callable[[str], None] = print, install_signal_handlers: bool = False,
                 track: bool = True) -> None:
        self.ctx = ctx
        self.track = track  # MLflow parent run + summary (off only in bookkeeping unit tests)
        self.spec = ctx.spec
        self.store = store or ctx.open_store()
        self.backend = backend or RunnerBackend()
        self.echo = echo
        self.timings = Timings()
        self._wake = threading.Event()
        self._stop_requested = False
        self._last_beat = 0.0
        self._budget_note = False
        self._reported: dict[int, int] = {}  # trial number -> last step reported to Optuna
        self._started = process_start_time(os.getpid())  # with the pid: this orchestrator's identity
        self.opened: OpenStudy | None = None  # the study and its storage, once created or loaded
        self._search_space = distributions(self.spec)  # the Optuna distributions every ask uses
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _opened(self) -> OpenStudy:
        assert self.opened is not None, "the study is opened by create() or run()"
        return self.opened

    @property
    def study(self) -> optuna.Study:
        return self._opened().study

    # --------------------------------------------------------------- set-up ----
    def _open_study(self, *, create: bool) -> OpenStudy:
        storage = open_storage(self.ctx.storage_url)
        exists = study_exists(storage, self.ctx.study_name)
        if create and exists:
            raise SweepError(f"study {self.ctx.study_name!r} already exists in "
                             f"{redact_url(self.ctx.storage_url)}: resume it with "
                             f"`awm sweep resume {self.ctx.study_name}` or pick another --study")
        if not create and not exists:
            raise SweepError(f"no study {self.ctx.study_name!r} in {redact_url(self.ctx.storage_url)}")
        n_existing = 0 if create else len(storage.get_all_trials(
            storage.get_study_id_from_name(self.ctx.study_name), deepcopy=False))
        kwargs: dict[str, Any] = {"study_name": self.ctx.study_name, "storage": storage,
                                  "sampler": make_sampler(self.spec, seed_offset=n_existing),
                                  "pruner": make_pruner(self.spec)}
        if create:
            study = optuna.create_study(directions=[o.direction for o in self.spec.objective], **kwargs)
            with warnings.catch_warnings():  # experimental since optuna 3.2; optuna-dashboard shows these names
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(objective_names(self.spec))
            study.set_user_attr("objective", [o.model_dump() for o in self.spec.objective])
            study.set_user_attr("search_space", {k: v.model_dump(exclude_none=True) for k, v in self.spec.params.items()})
            study.set_user_attr("n_trials", self.spec.n_trials)
        else:
            study = optuna.load_study(**kwargs)
        return OpenStudy(study, storage)

    def create(self) -> str | None:
        """Create the study (once, before any job starts: P6), the store's sweep row and the
        MLflow parent run. Returns the parent run id."""
        if self.store.find_run(trial_run_name(self.ctx.study_name, 0)) is not None:
            raise SweepError(f"runs of a sweep {self.ctx.study_name!r} already exist in the store: "
                             f"pick another --study")
        try:
            self.store.get_sweep(self.ctx.study_name)
            raise SweepError(f"a sweep named {self.ctx.study_name!r} already exists: resume it with "
                             f"`awm sweep resume {self.ctx.study_name}` or pick another --study")
        except KeyError:
            pass
        self.opened = self._open_study(create=True)
        parent = (start_parent_run(self.ctx.cfg, self.ctx.study_name, redact_url(self.ctx.storage_url))
                  if self.track else None)
        if parent:
            self.study.set_user_attr("mlflow_parent_run_id", parent)
        self.store.create_sweep(study_name=self.ctx.study_name, optuna_storage=redact_url(self.ctx.storage_url),
                                mlflow_parent_run_id=parent, config_hash=config_hash(self.ctx.cfg),
                                resolved_config=resolved_config(self.ctx.cfg))
        self.ctx.save()
        return parent

    @property
    def parent_run_id(self) -> str | None:
        return self.store.get_sweep(self.ctx.study_name).mlflow_parent_run_id

    # ----------------------------------------------------------------- loop ----
    def run(self, *, resume: bool = False) -> SweepResult:
        """Drive the study to completion (or until stopped). `resume=True` adopts an existing study."""
        if self.opened is None:
            self.opened = self._open_study(create=False)
        study = self.study
        if resume:
            info = study.user_attrs.get(ORCH_ATTR)
            if orchestrator_alive(info, self.spec.grace_period_s):
                raise SweepError(f"study {self.ctx.study_name!r} is driven by a live orchestrator "
                                 f"(pid {info['pid']} on {info['host']}): stop it first, or wait "
                                 f"{self.spec.grace_period_s} s after it died")
            self.store.update_sweep(self.ctx.study_name, status=SWEEP_RUNNING)
            self._requeue_stopped()
        self._beat(force=True)
        parent = self.parent_run_id
        status = SWEEP_COMPLETED
        try:
            while True:
                t0 = time.perf_counter()
                done = self._pass(parent)
                self.timings.passes += 1
                self._beat()
                if self._stop_requested or self._sweep_status() == SWEEP_STOPPING:
                    self._stop_in_flight()
                    status = SWEEP_STOPPED
                    break
                if done:
                    break
                spent = time.perf_counter() - t0
                self._wake.wait(max(0.0, self.spec.poll_interval_s - spent))
                self._wake.clear()
        except KeyboardInterrupt:
            status = SWEEP_INTERRUPTED
            self._release()
            self.store.update_sweep(self.ctx.study_name, status=SWEEP_INTERRUPTED)
            raise
        self._release()
        self.store.update_sweep(self.ctx.study_name, status=status)
        try:  # what this orchestrator spent, for perf and for `awm sweep status --json`
            study.set_user_attr("orchestrator_timings", self.timings.as_dict())
        except Exception:  # noqa: S110, BLE001 - bookkeeping only
            pass
        if self.track:
            log_study_summary(self.ctx.cfg, parent, study, status="FINISHED" if status == SWEEP_COMPLETED else "KILLED")
        summary = summarize_study(study)
        return SweepResult(self.ctx.study_name, status, summary["counts"], summary["best_trials"], self.timings)

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake.set()

    def _on_sigterm(self, _sig: int, _frame: Any) -> None:
        self.request_stop()

    # ----------------------------------------------------------------- pass ----
    def _pass(self, parent: str | None) -> bool:
        """One poll: advance every in-flight trial, then ask for new ones. True when finished."""
        study, store = self.study, self.store
        t0 = time.perf_counter()
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        runs = {r.trial_number: r for r in store.list_runs(sweep_name=self.ctx.study_name)}
        active = [runs[t.number].name for t in running if t.number in runs and runs[t.number].status in ACTIVE_STATUSES]
        if active:
            self.backend.refresh(store, active)
            runs = {r.trial_number: r for r in store.list_runs(sweep_name=self.ctx.study_name)}
        self.timings.poll += time.perf_counter() - t0

        for t in running:
            run = runs.get(t.number)
            if run is None:  # asked, then the orchestrator died before the run reached the store
                self._submit(t.number, t.params, t.user_attrs, parent)
            else:
                self._advance(t, run, trials)

        # ask for new trials while there is room
        trials = study.get_trials(deepcopy=False)
        n_target = self._n_target()
        while not self._stop_requested:
            in_flight = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if in_flight >= self.spec.parallelism:
                break
            if not waiting and (consumed_trials(trials) >= n_target or self._over_budget(runs)):
                break
            t1 = time.perf_counter()
            trial = study.ask(self._search_space)
            self.timings.ask += time.perf_counter() - t1
            self._submit(trial.number, trial.params, self._opened().trial_user_attrs(trial.number), parent)
            trials = study.get_trials(deepcopy=False)
        trials = study.get_trials(deepcopy=False)
        return not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials) and (
            consumed_trials(trials) >= n_target or self._over_budget(runs))

    def _n_target(self) -> int:
        if self.spec.sampler.name == "grid":
            return min(self.spec.n_trials, grid_size(self.spec))
        return self.spec.n_trials

    def _over_budget(self, runs: dict[Any, Any]) -> bool:
        if self.spec.budget_gpu_hours is None:
            return False
        used = sum(float(r.gpu_hours or 0.0) for r in runs.values())
        if used >= self.spec.budget_gpu_hours:
            if not self._budget_note:
                self.echo(f"budget reached: {used:.3f} of {self.spec.budget_gpu_hours} GPU-hours used; "
                          f"no new trials, waiting for the running ones")
                self._budget_note = True
            return True
        return False

    # --------------------------------------------------------------- submit ----
    def _submit(self, number: int, params: dict[str, Any], attrs: dict[str, Any], parent: str | None) -> None:
        opened = self._opened()
        t0 = time.perf_counter()
        root = int(attrs.get("root_trial", number))
        seed = trial_seed(self.spec.sampler.seed, root)
        name = trial_run_name(self.ctx.study_name, number)
        try:
            cfg = trial_config(self.ctx.cfg, self.ctx.study_name, number, params, seed)
        except Exception as exc:  # noqa: BLE001 - a param combination the config rejects (e.g. topology): a failed trial
            self._tell_fail(number, f"invalid trial config: {exc}")
            self.echo(f"[t{number}] FAIL invalid config: {exc}")
            return
        tags = {"awm.sweep.study": self.ctx.study_name, "awm.sweep.trial": str(number),
                "awm.sweep.attempt": str(attrs.get("attempt", 0)),
                **{f"awm.sweep.param.{k}": str(v) for k, v in params.items()}}
        opened.set_trial_user_attr(number, "run_name", name)
        opened.set_trial_user_attr(number, "seed", seed)
        try:
            run_name, job_id = self.backend.submit(
                cfg, cluster=self.ctx.cluster, store=self.store, sweep_name=self.ctx.study_name,
                trial_number=number, mlflow_parent_run_id=parent, extra_tags=tags)
        except Exception as exc:  # noqa: BLE001 - any submission error fails the trial
            if self.store.find_run(name) is not None:
                # the run reached the store (submitted by an earlier orchestrator, or the runner
                # marked it FAILED): the next pass adopts it or retries it
                self.echo(f"[t{number}] submission raised ({exc}); following the stored run {name}")
                return
            self._tell_fail(number, f"submission failed: {exc}")
            self.echo(f"[t{number}] FAIL submission: {exc}")
            return
        fault_point("after_submit")
        if job_id is not None:
            opened.set_trial_user_attr(number, "job_id", job_id)
        self.timings.submit += time.perf_counter() - t0
        retry = f" (retry {attrs['attempt']} of t{attrs['retry_of']})" if "retry_of" in attrs else ""
        self.echo(f"[t{number}] submitted {run_name} job {job_id}{retry}: {_fmt_params(params)}")

    # -------------------------------------------------------------- advance ----
    def _advance(self, t: FrozenTrial, run: Any, trials: list[FrozenTrial]) -> None:
        study = self.study
        status = run.status
        t0 = time.perf_counter()
        if len(self.spec.objective) == 1:
            new = self._report(t, run.name)
            if status in ("PENDING", "RUNNING") and new and self._opened().live_trial(t.number).should_prune():
                step = max(self._reported.get(t.number, 0), 0)
                self.backend.cancel(run.name, self.store, "PRUNED")
                study.tell(t.number, state=TrialState.PRUNED)
                self.timings.told += 1
                self.timings.tell += time.perf_counter() - t0
                self.echo(f"[t{t.number}] PRUNED at step {step} (run {run.name} cancelled)")
                return
        if status == "COMPLETED":
            values, missing = self._final_values(run.name)
            if missing:
                self._tell_fail(t.number, f"run completed but never logged {missing} "
                                          f"(logged: {self.store.metric_keys(run.name)})")
                self.echo(f"[t{t.number}] FAIL: objective metric {missing} never logged")
            else:
                study.tell(t.number, values)
                self.echo(f"[t{t.number}] COMPLETE value={_fmt_values(values)} ({run.name})")
            self.timings.told += 1
        elif status == "PRUNED":  # pruned by someone else (e.g. a previous orchestrator died mid-prune)
            study.tell(t.number, state=TrialState.PRUNED)
            self.timings.told += 1
        elif status in ("FAILED", "CANCELLED"):
            reason = run.error or f"run {run.name} {status.lower()}"
            self._fail_and_maybe_retry(t, reason, trials, retry=status == "FAILED")
            self.timings.told += 1
        self.timings.tell += time.perf_counter() - t0

    def _report(self, t: FrozenTrial, run_name: str) -> bool:
        """Report eval values logged since the last pass; True if anything new was reported."""
        metric = self.spec.objective[0].metric
        hist = self.store.get_metric_history(run_name, metric)
        known = set(t.intermediate_values)
        trial = None
        new = False
        for step, value in hist:
            if step in known:
                continue
            trial = trial or self._opened().live_trial(t.number)
            trial.report(value, step)
            known.add(step)
            new = True
            self._reported[t.number] = step
        if new:  # progress: the latest objective value of this trial
            self.echo(f"[t{t.number}] step {self._reported[t.number]}: {metric}={value:.5g}")
        return new

    def _final_values(self, run_name: str) -> tuple[list[float], str | None]:
        values = []
        for obj in self.spec.objective:
            hist = self.store.get_metric_history(run_name, obj.metric)
            if not hist:
                return [], obj.metric
            vals = [v for _, v in hist]
            if obj.final == "best":
                values.append(max(vals) if obj.direction == "maximize" else min(vals))
            else:
                values.append(vals[-1])
        return values, None

    def _tell_fail(self, number: int, reason: str) -> None:
        self._opened().set_trial_user_attr(number, "error", reason[:2000])
        self.study.tell(number, state=TrialState.FAIL)

    def _fail_and_maybe_retry(self, t: FrozenTrial, reason: str, trials: list[FrozenTrial], *, retry: bool) -> None:
        attempt = int(t.user_attrs.get("attempt", 0))
        already = any(x.user_attrs.get("retry_of") == t.number for x in trials)
        if retry and not already and attempt < self.spec.max_retries:
            # enqueue before telling FAIL: a crash in between leaves a RUNNING trial whose retry
            # exists (`already`), never a failed trial without its retry
            enqueue_retry(self.study, t, attempt=attempt + 1)
            self.echo(f"[t{t.number}] FAIL ({reason}); retrying with the same params "
                      f"(attempt {attempt + 1} of {self.spec.max_retries})")
        else:
            why = "no retries left" if retry and not already else ("retry exists" if already else "not retried")
            self.echo(f"[t{t.number}] FAIL ({reason}); {why}")
        self._tell_fail(t.number, reason)

    # ---------------------------------------------------------------- stop ----
    def _sweep_status(self) -> str:
        return self.store.get_sweep(self.ctx.study_name).status

    def _stop_in_flight(self) -> None:
        stop_in_flight(self._opened(), self.store, self.backend, self.ctx.study_name, self.echo)

    def _requeue_stopped(self) -> None:
        """Trials cancelled by `awm sweep stop` are re-run (same params) when the sweep resumes;
        they do not use up a retry."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {x.user_attrs.get("retry_of") for x in trials}
        for t in trials:
            if t.state == TrialState.FAIL and t.user_attrs.get("stopped") and t.number not in retried:
                enqueue_retry(self.study, t, attempt=int(t.user_attrs.get("attempt", 0)))
                self.echo(f"[t{t.number}] was stopped; re-enqueued with the same params")

    # ------------------------------------------------------------ heartbeat ----
    def _beat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_beat >= self.spec.heartbeat_interval_s:
            self.study.set_user_attr(ORCH_ATTR, {"pid": os.getpid(), "host": this_host(), "heartbeat": now,
                                                 "started": self._started})
            self._last_beat = now

    def _release(self) -> None:
        try:
            self.study.set_user_attr(ORCH_ATTR, None)
        except Exception:  # noqa: BLE001, S110 - best effort on the way out
            pass


def stop_in_flight(opened: OpenStudy, store: Store, backend: Backend, study_name: str,
                   echo: Callable[[str], None] = print) -> int:
    """Cancel every in-flight trial's job, tell its trial FAIL (user attr `stopped`), mark the
    sweep STOPPED. Used by a running orchestrator on stop, and by `awm sweep stop` when none runs."""
    study = opened.study
    runs = {r.trial_number: r for r in store.list_runs(sweep_name=study_name)}
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.RUNNING:
            continue
        run = runs.get(t.number)
        if run is not None and run.status in ACTIVE_STATUSES:
            backend.cancel(run.name, store, "CANCELLED")
        opened.set_trial_user_attr(t.number, "stopped", True)
        opened.set_trial_user_attr(t.number, "error", "stopped by `awm sweep stop`")
        study.tell(t.number, state=TrialState.FAIL)
        echo(f"[t{t.number}] stopped" + (f" (run {run.name} cancelled)" if run is not None else ""))
        n += 1
    store.update_sweep(study_name, status=SWEEP_STOPPED)
    return n


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fmt_values(values: list[float]) -> str:
    return ", ".join(f"{v:.5g}" for v in values)
