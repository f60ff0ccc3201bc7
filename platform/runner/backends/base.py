"""The executor backend interface: how the runner (and the sweeps, and the evaluation service)
talk to a place that runs jobs. Every scheduler-specific decision lives behind it; the rest of
the platform never compares a cluster name.

Contract (docs/runner.md, "Executor backends"):

* `validate(cfg)` raises ValueError naming the key to change for what the executor would refuse
  (e.g. `launcher.nodes=2` on one machine). Called before anything is written, and by `--dry-run`.
* `preview(cfg, run_dir, array_size=None)` is the launch script a submission would use, exactly
  (SLURM: the sbatch file submitit writes), or None where there is no script. Pure: no scheduler call.
* `submit(cfg, run_dir, job)` starts the callable `job` (a `TrainJob`) for the run in `run_dir` and
  returns the submitit Job; `str(job.job_id)` is what the store records. A scheduler refusal is
  raised as is; `rejection(exc)` turns a scheduler's refusal into one line (or None).
* `submit_array(cfgs, run_dirs, jobs, folder)` starts several runs with identical launcher sections
  in one submission with at most `launcher.array_parallelism` in flight (`supports_arrays`); a
  backend without arrays submits them one by one.
* `poll(runs)` looks at the jobs of many runs in ONE batch (SLURM: one sacct call) and returns
  {run name: JobObservation} for the runs it learned something about; a run it has nothing to
  say about (no record yet, a live local process) is absent. Polling never writes the store: the
  run lifecycle (`lifecycle.apply_observation`) decides what an observation changes.
* `cancel(run, timeout_s)` stops the run's job (SIGTERM first, so the controller checkpoints the
  trainer) and returns once it is gone, or after `timeout_s`. It does NOT write a status.
* `job_alive(run)` says whether the run's job process is known to be still running on this
  machine (a local job after it reported its end still writes its last log lines).

A backend is stateless: one instance per cluster name (`backend_for`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

CLUSTERS = ("local", "debug", "slurm")


@dataclass(frozen=True)
class JobObservation:
    """What one poll learned about one run's job.

    * `status`: the run status the job's state implies (PENDING, RUNNING, PREEMPTED, COMPLETED,
      FAILED, CANCELLED), or None when the state is transient or unknown (nothing to change).
    * `gpu_hours`: GPU-hours accounted by the scheduler for all of the run's jobs (requeued
      instances and preempted time included), or None where the job controller accounts them
      (`ExecutorBackend.controller_accounts_gpu_hours`).
    * `hosts`: the hosts the scheduler reports for the latest job (may be empty).
    * `started_at` / `ended_at`: the scheduler's start and end times of the latest job, if known.
    * `error`: the best explanation of a FAILED/CANCELLED job: a failed `launcher.setup` line
      (`launch.setup_failure`) first, else the scheduler's words ("SLURM state TIMEOUT", "the local
      job process exited without reporting (killed?)"); None when nothing failed.
    """

    status: str | None
    gpu_hours: float | None = None
    hosts: list[str] = field(default_factory=list)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None


class ExecutorBackend(ABC):
    """One place that runs jobs (see the module docstring for the contract)."""

    name: ClassVar[str]
    # The job controller adds its own wall time x GPUs to the run's GPU-hours when it reports an
    # end or a preemption (local, debug); False where the scheduler accounts them (SLURM: sacct).
    controller_accounts_gpu_hours: ClassVar[bool] = True
    # The job runs inside the submitting process, lazily, when its result is asked for (debug):
    # `submit_run` waits for it; the job's stdout goes to stderr so the caller's stdout stays clean.
    runs_in_process: ClassVar[bool] = False
    # One submission can start many runs with a concurrency limit (SLURM job arrays).
    supports_arrays: ClassVar[bool] = False

    @abstractmethod
    def validate(self, cfg: Any) -> None:
        """Raise ValueError naming the key to change if this executor would refuse `cfg`."""

    def preview(self, cfg: Any, run_dir: Path, array_size: int | None = None) -> str | None:
        """The launch script a submission of `cfg` in `run_dir` would use, or None."""
        return None

    def rejection(self, exc: BaseException) -> str | None:
        """One line naming the launcher key to change if `exc` is the scheduler refusing a job."""
        return None

    @abstractmethod
    def submit(self, cfg: Any, run_dir: Path, job: Any) -> Any:
        """Start `job` for the run in `run_dir`; return the submitit Job."""

    def submit_array(self, cfgs: Sequence[Any], run_dirs: Sequence[Path], jobs: Sequence[Any],
                     folder: Path) -> list[Any]:
        """Start `jobs` (one per run, identical launcher sections); `folder` is the shared submitit
        folder of an array. Without arrays: one submission per run."""
        return [self.submit(cfg, run_dir, job) for cfg, run_dir, job in zip(cfgs, run_dirs, jobs, strict=True)]

    @abstractmethod
    def poll(self, runs: Sequence[Any]) -> dict[str, JobObservation]:
        """{run name: observation} for `runs` (store rows with job ids), in one batch."""

    @abstractmethod
    def cancel(self, run: Any, timeout_s: float) -> None:
        """Stop the run's latest job and wait until it is gone (at most `timeout_s`); no status write."""

    def job_alive(self, run: Any) -> bool:
        """Is the run's latest job still running a process on this machine? (False: unknown/remote.)"""
        return False


class OneMachineBackend(ExecutorBackend):
    """An executor that runs every job on this machine (local, debug)."""

    def validate(self, cfg: Any) -> None:
        nodes = cfg.launcher.nodes
        if nodes != 1:
            raise ValueError(
                f"launcher.nodes={nodes}: the {self.name} executor runs on one machine; set launcher.nodes=1 "
                "or use --cluster slurm"
            )
