"""The local backend: submitit's `LocalExecutor` on this machine.

The job id is the pid of submitit's local controller process; its start time is recorded in
`run_dir/local_jobs.json` at submission, so a recycled pid is never taken for the job
(`local_job_alive`). The controller is started with a copy of os.environ (the run's code snapshot
first on PYTHONPATH, no MLFLOW_RUN_ID) and with its stdio pointed at `run_dir/local_controller.log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit

from awm_platform.runner import snapshot
from awm_platform.runner.backends.base import JobObservation, OneMachineBackend
from awm_platform.runner.launch import setup_commands, setup_failure, submitit_folder
from awm_platform.runner.proc import is_alive, kill_tree, process_start_time, scrubbed_environ
from benchmarks.files import atomic_write

LOCAL_JOBS_FILE = "local_jobs.json"
EXITED_WITHOUT_REPORTING = "the local job process exited without reporting (killed?)"
# cancel: SIGTERM is re-sent this often (submitit's controller may be between two task restarts)
_RESEND_TERM_S = 5.0


def record_local_job(run_dir: Path, pid: int) -> None:
    """Remember the start time of a local job's controller process next to its pid."""
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


def _latest_pid(run: Any) -> int | None:
    job_id = run.job_ids[-1] if run.job_ids else ""
    return int(job_id) if job_id.isdigit() else None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


@contextlib.contextmanager
def _controller_stdio(log: Path) -> Iterator[None]:
    """submitit's LocalExecutor starts the job's controller (which outlives us) with a bare Popen,
    so it would inherit our stdin/stdout/stderr: a caller capturing `awm submit`'s output
    (`name=$(awm submit ...)`, `subprocess.run(..., capture_output=True)`) would then wait until
    the JOB ends, and the controller would write into a terminal it does not own. Point fds 0-2
    elsewhere (stdin: /dev/null; stdout/stderr: `log`) while it starts."""
    sys.stdout.flush()
    sys.stderr.flush()
    log.parent.mkdir(parents=True, exist_ok=True)
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)  # never world-readable
    try:
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        yield
    finally:
        for fd, orig in zip((0, 1, 2), saved, strict=True):
            os.dup2(orig, fd)
            os.close(orig)
        os.close(null)
        os.close(out)


class LocalBackend(OneMachineBackend):
    name: ClassVar[str] = "local"

    def submit(self, cfg: Any, run_dir: Path, job: Any) -> Any:
        lc = cfg.launcher
        executor = submitit.LocalExecutor(folder=submitit_folder(run_dir), max_num_timeout=lc.max_requeues)
        # gpus_per_node is not passed: the controller starts its own processes, and on a CPU
        # machine submitit would otherwise export an empty CUDA_VISIBLE_DEVICES... which is fine,
        # but visible GPUs are the trainer's business.
        executor.update_parameters(
            timeout_min=lc.time_min,
            signal_delay_s=lc.signal_delay_s,
            tasks_per_node=1,
            setup=setup_commands(cfg, run_dir),
        )
        # the controller gets a copy of os.environ (SLURM: a line of the sbatch script does it)
        with (scrubbed_environ(), snapshot.code_environ(snapshot.code_dir(run_dir)),
              _controller_stdio(Path(run_dir) / "local_controller.log")):
            submitted = executor.submit(job)
        record_local_job(run_dir, int(submitted.job_id))  # the job id is a pid: pids are recycled
        return submitted

    def poll(self, runs: Sequence[Any]) -> dict[str, JobObservation]:
        """An observation only for a run whose controller process is gone (the controller reports
        everything else itself): FAILED, explained by a failed setup line if there is one."""
        out: dict[str, JobObservation] = {}
        for run in runs:
            pid = _latest_pid(run)
            if pid is None or local_job_alive(run, pid):
                continue
            _reap(pid)
            out[run.name] = JobObservation(
                status="FAILED", error=setup_failure(Path(run.output_dir)) or EXITED_WITHOUT_REPORTING
            )
        return out

    def cancel(self, run: Any, timeout_s: float) -> None:
        """SIGTERM to submitit's controller (it forwards it; our job controller checkpoints the
        trainer), re-sent while the controller lives, then the whole tree is killed at `timeout_s`."""
        pid = _latest_pid(run)
        if pid is None or not local_job_alive(run, pid):
            return
        deadline = time.monotonic() + timeout_s
        last_term = 0.0
        while time.monotonic() < deadline and local_job_alive(run, pid):
            # re-send: submitit's local controller may be between two task restarts (requeue)
            if time.monotonic() - last_term > _RESEND_TERM_S:
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

    def job_alive(self, run: Any) -> bool:
        pid = _latest_pid(run)
        return pid is not None and local_job_alive(run, pid)  # not a recycled pid
