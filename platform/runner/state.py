"""Job state: one batched, rate-limited poll of the scheduler for all active runs.

* SLURM: ONE `sacct` call for every job id of every active run (`-D` lists the requeued
  instances too, so GPU-hours = sum of their elapsed times x GPUs, preempted time included).
* local: the job id is the pid of submitit's local controller; alive = that pid runs the
  process started at submission (its start time is recorded in `run_dir/local_jobs.json`,
  so a recycled pid is not taken for the job).
* debug: in-process; the controller reports itself.

The controller inside the job also reports RUNNING / PREEMPTED / COMPLETED / FAILED, which is
faster than the scheduler; the poller only fills in what the job could not say (it was
killed, cancelled, timed out for good, never started). Scheduler states we do not know are
treated as transient (nothing changes). A PENDING run that still has no job id
`AWM_JOB_ID_GRACE_S` (default 600 s) after it was registered was never submitted (its
submitting process died): it is FAILED with that reason (a sweep retries its trial).

Every terminal status goes through `end_run`: store row + end time + the MLflow run's status.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from awm_platform.runner.proc import is_alive, process_start_time

MIN_POLL_INTERVAL_ENV = "AWM_POLL_INTERVAL_S"
DEFAULT_MIN_POLL_INTERVAL_S = 2.0
JOB_ID_GRACE_ENV = "AWM_JOB_ID_GRACE_S"
DEFAULT_JOB_ID_GRACE_S = 600.0
ACTIVE = ("PENDING", "RUNNING", "PREEMPTED")
LOCAL_JOBS_FILE = "local_jobs.json"


def end_run(store: Any, name: str, status: str, **fields: Any) -> Any:
    """Record a terminal status (COMPLETED, FAILED, CANCELLED, PRUNED) with its end time
    (default: now) and close the run's MLflow run with the matching MLflow status
    (`tracking.mlflow_status`). The one place a process that notices a run's end goes through."""
    from awm_platform.runner.tracking import end_mlflow_run

    fields.setdefault("ended_at", datetime.now(UTC))
    store.update_run(name, status=status, **fields)
    run = store.get_run(name)
    end_mlflow_run(run)
    return run


# ------------------------------------------------------------- local job identity ----
def record_local_job(run_dir: Path, pid: int) -> None:
    """Remember the start time of a local job's controller process next to its pid."""
    from awm_platform.runner.capsule import atomic_write

    path = Path(run_dir) / LOCAL_JOBS_FILE
    jobs = _read_local_jobs(path)
    jobs[str(pid)] = process_start_time(pid)
    atomic_write(path, json.dumps(jobs, indent=2) + "\n")


def _read_local_jobs(path: Path) -> dict[str, float | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def local_job_alive(run: Any, pid: int) -> bool:
    """Is the local job `pid` of `run` still the process submitted (not a recycled pid)?"""
    start = _read_local_jobs(Path(run.output_dir) / LOCAL_JOBS_FILE).get(str(pid))
    return is_alive(pid, None if start is None else float(start))

# sacct state -> run status (None = transient / keep)
SLURM_STATES: dict[str, str | None] = {
    "PENDING": "PENDING",
    "CONFIGURING": "PENDING",
    "REQUEUE_HOLD": "PREEMPTED",
    "REQUEUE_FED": "PREEMPTED",
    "REQUEUED": "PREEMPTED",
    "RESIZING": None,
    "SUSPENDED": "PREEMPTED",
    "PREEMPTED": "PREEMPTED",
    "RUNNING": "RUNNING",
    "COMPLETING": None,
    "STAGE_OUT": None,
    "SIGNALING": None,
    "COMPLETED": "COMPLETED",
    "CANCELLED": "CANCELLED",
    "FAILED": "FAILED",
    "NODE_FAIL": "FAILED",
    "OUT_OF_MEMORY": "FAILED",
    "BOOT_FAIL": "FAILED",
    "DEADLINE": "FAILED",
    "TIMEOUT": "FAILED",
    "REVOKED": "CANCELLED",
}


class PollError(RuntimeError):
    pass


def parse_sacct(text: str) -> dict[str, dict[str, Any]]:
    """`sacct -n -P -X -D -o JobID,State,NodeList,ElapsedRaw,Start,End` -> per job id: the
    latest instance's state/nodes/times and the summed elapsed seconds of all instances."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or not parts[0]:
            continue
        job_id, state, nodes, elapsed, start, end = parts[:6]
        if "." in job_id:  # a step (batch/extern/0), not the allocation
            continue
        rec = out.setdefault(job_id, {"instances": 0, "elapsed_s": 0})
        rec["instances"] += 1
        rec["elapsed_s"] += int(elapsed) if elapsed.isdigit() else 0
        rec.update(state=state.split()[0] if state else "", nodes=nodes, start=start, end=end)
    return out


def _run_sacct(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    cmd = [
        "sacct",
        "-n",
        "-P",
        "-X",
        "-D",
        "-o",
        "JobID,State,NodeList,ElapsedRaw,Start,End",
        "-j",
        ",".join(job_ids),
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PollError(f"sacct failed: {exc}") from exc
    if out.returncode != 0:
        raise PollError(f"sacct failed ({out.returncode}): {out.stderr.strip()[:300]}")
    return parse_sacct(out.stdout)


def _parse_time(value: str) -> datetime | None:
    if not value or value in ("Unknown", "None"):
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        return None


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
    from awm_platform.paths import awm_home

    runs = store.list_runs() if names is None else [store.get_run(n) for n in names]
    statuses = {r.name: r.status for r in runs}
    for r in runs:
        if r.status == "PENDING" and not r.job_ids and _fail_if_never_submitted(store, r):
            statuses[r.name] = "FAILED"
    active = [r for r in runs if r.status in ACTIVE and r.job_ids]
    if not active:
        return statuses
    interval = float(os.environ.get(MIN_POLL_INTERVAL_ENV, DEFAULT_MIN_POLL_INTERVAL_S))
    if not force and not _RateLimit(awm_home() / "poll.lock", interval).acquire():
        return statuses
    slurm = [r for r in active if r.cluster == "slurm"]
    if slurm:
        try:
            info = _run_sacct(sorted({j for r in slurm for j in r.job_ids}))
        except PollError:
            info = {}  # transient: keep what we have
        for r in slurm:
            new = _apply_slurm(store, r, info)
            if new:
                statuses[r.name] = new
    for r in active:
        if r.cluster == "local":
            new = _apply_local(store, r)
            if new:
                statuses[r.name] = new
    return statuses


def _fail_if_never_submitted(store: Any, run: Any) -> bool:
    """A PENDING run with no job id long after it was registered: the process submitting it
    died between registering the run and recording its job (e.g. a killed sweep
    orchestrator). Nothing would ever update it, so it is FAILED with the reason; a job that
    was submitted after all refuses to start (job.py: a FAILED run without job ids)."""
    from awm_platform.store.store import as_utc

    grace = float(os.environ.get(JOB_ID_GRACE_ENV, DEFAULT_JOB_ID_GRACE_S))
    created = as_utc(run.created_at)
    age = (datetime.now(UTC) - created).total_seconds() if created is not None else 0.0
    if age < grace:
        return False
    fresh = store.get_run(run.name)  # the submitter may have recorded the job meanwhile
    if fresh.status != "PENDING" or fresh.job_ids:
        return False
    end_run(store, run.name, "FAILED",
            error=f"never submitted: no job id recorded {age:.0f} s after the run was registered "
                  f"(the submitting process died?; grace {JOB_ID_GRACE_ENV}={grace:g} s)")
    return True


def _apply_slurm(store: Any, run: Any, info: dict[str, dict[str, Any]]) -> str | None:
    from awm_platform.runner.launch import setup_failure

    recs = [info[j] for j in run.job_ids if j in info]
    if not recs:
        return None
    latest = recs[-1]
    mapped = SLURM_STATES.get(latest["state"])
    fields: dict[str, Any] = {"gpu_hours": sum(r["elapsed_s"] for r in recs) * run.num_gpus / 3600.0}
    if latest.get("nodes") and latest["nodes"] not in ("None assigned", ""):
        if latest["nodes"] not in run.hosts:
            fields["hosts"] = [*run.hosts, latest["nodes"]]
    if mapped is not None and mapped != run.status:
        # The job's own PREEMPTED beats a lagging RUNNING/PENDING from the scheduler
        if not (run.status == "PREEMPTED" and mapped in ("PENDING",)):
            fields["status"] = mapped
            if mapped in ("COMPLETED", "FAILED", "CANCELLED"):
                fields["ended_at"] = _parse_time(latest.get("end", "")) or datetime.now(UTC)
                if mapped == "FAILED" and not run.error:
                    # a failed launcher.setup line (setup.sh, sourced by the sbatch script) says which
                    fields["error"] = setup_failure(Path(run.output_dir)) or f"SLURM state {latest['state']}"
            if mapped == "RUNNING" and run.started_at is None:
                fields["started_at"] = _parse_time(latest.get("start", ""))
    new_status = fields.pop("status", None)
    if new_status in ("COMPLETED", "FAILED", "CANCELLED"):
        end_run(store, run.name, new_status, **fields)
    else:
        store.update_run(run.name, **fields, **({"status": new_status} if new_status else {}))
    return new_status


def _apply_local(store: Any, run: Any) -> str | None:
    from awm_platform.runner.launch import setup_failure

    pid = int(run.job_ids[-1]) if run.job_ids[-1].isdigit() else None
    if pid is None or local_job_alive(run, pid):
        return None
    _reap(pid)
    fresh = store.get_run(run.name)  # the job may have reported while we looked
    if fresh.status not in ACTIVE:
        return fresh.status
    error = (setup_failure(Path(run.output_dir)) or fresh.error
             or "the local job process exited without reporting (killed?)")
    end_run(store, run.name, "FAILED", error=error)
    return "FAILED"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


# ---------------------------------------------------------------------- cancel ----
def cancel_run(name: str, store: Any, *, status: str = "CANCELLED", timeout_s: float = 120.0) -> None:
    """Cancel the run's job and wait until it is gone from the executor / squeue.

    The job gets SIGTERM (SLURM `scancel`; local: the submitit controller forwards it), the
    controller asks the trainer to checkpoint, so a cancelled run can be rerun from where it
    stopped. Then the status is set (CANCELLED, or PRUNED for sweeps)."""
    import signal

    from awm_platform.runner.proc import kill_tree

    run = store.get_run(name)
    if run.status in ("COMPLETED", "FAILED", "CANCELLED", "PRUNED"):
        return
    job_id = run.job_ids[-1] if run.job_ids else None
    deadline = time.monotonic() + timeout_s
    if job_id and run.cluster == "slurm":
        subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
        while time.monotonic() < deadline:
            q = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60
            )
            if q.returncode != 0 or not q.stdout.strip():
                break
            time.sleep(0.5)
    elif job_id and run.cluster == "local" and job_id.isdigit() and local_job_alive(run, int(job_id)):
        pid = int(job_id)
        last_term = 0.0
        while time.monotonic() < deadline and local_job_alive(run, pid):
            # re-send: submitit's local controller may be between two task restarts (requeue)
            if time.monotonic() - last_term > 5.0:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                last_term = time.monotonic()
            _reap(pid)
            time.sleep(0.1)
        if local_job_alive(run, pid):
            kill_tree(pid)
        _reap(pid)
    end_run(store, name, status)
