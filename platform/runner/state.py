"""Job state: one batched, rate-limited poll of the scheduler for all active runs.

Each executor backend polls its runs in one batch (`backends.ExecutorBackend.poll`):
* SLURM: ONE `sacct` call for every job id of every active run (`-D` lists the requeued
  instances too, so GPU-hours = sum of their elapsed times x GPUs, preempted time included).
* local: the job id is the pid of submitit's local controller; alive = that pid runs the
  process started at submission (its start time is recorded in `run_dir/local_jobs.json`,
  so a recycled pid is not taken for the job).
* debug: in-process; the controller reports itself.
The run lifecycle applies each observation (`lifecycle.apply_observation`).

The controller inside the job also reports RUNNING / PREEMPTED / COMPLETED / FAILED, which is
faster than the scheduler; the poller only fills in what the job could not say (it was
killed, cancelled, timed out for good, never started). Scheduler states we do not know are
treated as transient (nothing changes). A PENDING run that still has no job id
`AWM_JOB_ID_GRACE_S` (default 600 s) after it was registered was never submitted (its
submitting process died): it is FAILED with that reason (a sweep retries its trial).

Polling writes no status itself: the lifecycle is the only writer (the transition table, a
compare-and-set in the store; entering a terminal status closes the MLflow run).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from awm_platform.paths import awm_home
from awm_platform.runner.backends import CLUSTERS, backend_for
from awm_platform.runner.lifecycle import RunEvent, apply_event, apply_observation, stop_run
from awm_platform.store import ACTIVE_STATUSES, TERMINAL_STATUSES, Run, RunStatus, as_utc

MIN_POLL_INTERVAL_ENV = "AWM_POLL_INTERVAL_S"
DEFAULT_MIN_POLL_INTERVAL_S = 2.0
JOB_ID_GRACE_ENV = "AWM_JOB_ID_GRACE_S"
DEFAULT_JOB_ID_GRACE_S = 600.0


class _RateLimit:
    """Cross-process: many pollers (CLI, sweeps, UI) share one sacct call per interval."""

    def __init__(self, path: Path, interval_s: float) -> None:
        self.path, self.interval_s = path, interval_s

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            try:
                last = float(json.loads(fh.read() or "{}").get("last", 0.0))
            except ValueError:
                last = 0.0
            now = time.time()
            if now - last < self.interval_s:
                return False
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"last": now, "pid": os.getpid()}))
            return True


def refresh_states(store: Any, names: list[str] | None = None, *, force: bool = False) -> dict[str, str]:
    """Poll the schedulers once for all active runs (or `names`), update the store and
    return {run name: status}. Rate-limited (AWM_POLL_INTERVAL_S, default 2 s) unless
    `force`; a rate-limited call returns the stored statuses."""
    runs = store.list_runs() if names is None else [store.get_run(n) for n in names]
    statuses = {r.name: r.status for r in runs}
    for r in runs:
        if r.status == RunStatus.PENDING and not r.job_ids and _fail_if_never_submitted(store, r):
            statuses[r.name] = RunStatus.FAILED
    active = [r for r in runs if r.status in ACTIVE_STATUSES and r.job_ids]
    if not active:
        return statuses
    interval = float(os.environ.get(MIN_POLL_INTERVAL_ENV, DEFAULT_MIN_POLL_INTERVAL_S))
    if not force and not _RateLimit(awm_home() / "poll.lock", interval).acquire():
        return statuses
    by_cluster: dict[str, list[Any]] = {}
    for r in active:
        if r.cluster in CLUSTERS:
            by_cluster.setdefault(r.cluster, []).append(r)
    for cluster, cluster_runs in by_cluster.items():  # one batch per backend (SLURM: one sacct)
        for name, observation in backend_for(cluster).poll(cluster_runs).items():
            statuses[name] = apply_observation(store, name, observation).status
    return statuses


def _fail_if_never_submitted(store: Any, run: Any) -> bool:
    """A PENDING run with no job id long after it was registered: the process submitting it
    died between registering the run and recording its job (e.g. a killed sweep
    orchestrator). Nothing would ever update it, so it is FAILED with the reason; a job that
    was submitted after all refuses to start (job.py: its run is terminal)."""
    grace = float(os.environ.get(JOB_ID_GRACE_ENV, DEFAULT_JOB_ID_GRACE_S))
    created = as_utc(run.created_at)
    age = (datetime.now(UTC) - created).total_seconds() if created is not None else 0.0
    if age < grace:
        return False

    def unless_submitted_meanwhile(fresh: Run, _next: RunStatus) -> dict[str, Any] | None:
        if fresh.job_ids:  # the submitter recorded the job meanwhile
            return None
        return {"error": f"never submitted: no job id recorded {age:.0f} s after the run was registered "
                         f"(the submitting process died?; grace {JOB_ID_GRACE_ENV}={grace:g} s)"}

    return apply_event(store, run.name, RunEvent.NEVER_SUBMITTED, fields=unless_submitted_meanwhile).changed


# ---------------------------------------------------------------------- cancel ----
def cancel_run(name: str, store: Any, *, status: str = "CANCELLED", timeout_s: float = 120.0) -> None:
    """Cancel the run's job and wait until it is gone from the executor / squeue.

    The job gets SIGTERM (SLURM `scancel`; local: the submitit controller forwards it), the
    controller asks the trainer to checkpoint, so a cancelled run can be rerun from where it
    stopped (`ExecutorBackend.cancel`). The status (CANCELLED, or PRUNED for sweeps) is recorded
    before the job is stopped, so nothing the job reports meanwhile overrides it
    (`lifecycle.stop_run`); the end time is when the job is gone."""
    event = {RunStatus.CANCELLED: RunEvent.CANCELLED, RunStatus.PRUNED: RunEvent.PRUNED}[RunStatus(status)]
    run = store.get_run(name)
    if run.status in TERMINAL_STATUSES:
        return

    def stop(decided: Run) -> None:
        if decided.cluster in CLUSTERS:
            backend_for(decided.cluster).cancel(decided, timeout_s)

    stop_run(store, name, event, stop)
