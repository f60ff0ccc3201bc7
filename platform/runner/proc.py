"""Process-tree helpers for the job controller: signal forwarding and no-orphan cleanup.

torch's elastic launcher (under `accelerate launch`) starts each rank with
`start_new_session=True`, so signalling the child's process group does not reach the
ranks. We walk /proc instead and signal every descendant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces/parentheses: parse after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        ppid = int(fields[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (children first), not including `pid`."""
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


# Two readings of one process's start time differ by far less than this; a recycled pid's
# process started later by at least a clock tick (10 ms).
_START_TIME_TOLERANCE_S = 0.005


def process_start_time(pid: int) -> float | None:
    """The process's start time (psutil `create_time()`, seconds since the epoch), or None if
    there is no such process. Recorded next to a pid so that a recycled pid is not taken for
    the process we started (`is_alive(pid, start_time)`)."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_alive(pid: int, start_time: float | None = None) -> bool:
    """True if `pid` exists, is not a zombie and, when `start_time` (from `process_start_time`)
    is given, is still the process that started then (not a recycled pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    if start_time is None:
        return True
    now = process_start_time(pid)
    return now is not None and abs(now - start_time) < _START_TIME_TOLERANCE_S


def signal_tree(pid: int, sig: int, *, include_root: bool = True) -> None:
    targets = descendants(pid)
    if include_root:
        targets.insert(0, pid)
    for p in targets:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(pid: int, *, grace_s: float = 5.0) -> None:
    """SIGTERM the tree, then SIGKILL whatever is left after `grace_s` (no orphans)."""
    tree = [pid, *descendants(pid)]
    try:
        os.killpg(pid, signal.SIGTERM)  # the child leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p) for p in tree):
        time.sleep(0.05)
    for p in [*tree, *descendants(pid)]:
        if is_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ------------------------------------------------------------------ fault injection ----
FAULT_INJECT_ENV = "AWM_FAULT_INJECT"
# Where a submitting process can die (tests/sweeps/test_fault_injection.py kills `awm sweep start`
# at each one): before the run's store row, right after it, after submitit started the job but
# before its job id is in the store, after the submission returned to the sweep orchestrator.
FAULT_POINTS = ("before_store_row", "after_store_row", "before_job_id", "after_submit")


def fault_point(name: str) -> None:
    """Test hook: SIGKILL this process here when `AWM_FAULT_INJECT` names this point (a crash
    no cleanup code can soften). Unset in production; costs one environment lookup."""
    if os.environ.get(FAULT_INJECT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def scoped_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """os.environ with `changes` applied (None: unset) for the duration of the block, then exactly
    as before. Child processes started inside (submitit's local executor copies os.environ) see
    the changes; the calling process keeps its own settings afterwards."""
    saved = {key: os.environ.get(key) for key in changes}
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------ job environment ----
# Never leak a parent's active MLflow run into a job: a sweep's orchestrator holds one, and
# submitit copies os.environ into the job (local: Popen env; SLURM: sbatch exports it).
SCRUBBED_ENV = ("MLFLOW_RUN_ID",)


def scrubbed_environ() -> contextlib.AbstractContextManager[None]:
    """os.environ without `SCRUBBED_ENV` for the duration of a submission."""
    return scoped_environ(dict.fromkeys(SCRUBBED_ENV))


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without `SCRUBBED_ENV`, plus `extra`: the environment of a process we start."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra or {})
    return env


def scrub_environ() -> None:
    """Drop `SCRUBBED_ENV` from this process's environment (a job's entry point, first thing)."""
    for key in SCRUBBED_ENV:
        os.environ.pop(key, None)
