"""A no-op worker mode for measuring the orchestrator (perf/sweep_overhead.py) and for sweep
tests that need real jobs without a trainer (tests/sweeps/test_sweep_real_jobs.py).

Not product code: only perf scripts and tests import it. `NoopBackend` stands in for the
orchestrator's `RunnerBackend`: each trial is a real job submitted through the runner's executor
backend for the cluster (`awm_platform.runner.backends`: local executor or SLURM) whose body
logs the objective at two steps to the store and completes the run, with no trainer. The
orchestrator code path (ask, config build, submit, poll, report, tell) is the real one; only
the job body is trivial, so time beyond the scheduler's own latency is ours.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle

from awm_platform.config import ExperimentConfig, config_hash, resolved_config
from awm_platform.runner.backends import backend_for
from awm_platform.runner.backends.slurm import NO_GPUS_ENV
from awm_platform.runner.lifecycle import RunEvent, apply_event, apply_observation
from awm_platform.runner.proc import scoped_environ
from awm_platform.store import ACTIVE_STATUSES, Store

# The job unpickles `noop_trial` where this file is not importable (submitit's task runs from
# the installed package): ship the function's code with the job.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CANCEL_TIMEOUT_S = 30.0


def noop_trial(store_url: str, run_name: str, metric: str, value: float) -> str:
    store = Store(store_url, upgrade=False)
    try:
        apply_event(store, run_name, RunEvent.STARTED)
        store.log_metrics(run_name, {metric: value * 0.5}, step=0)
        store.log_metrics(run_name, {metric: value}, step=1)
        apply_event(store, run_name, RunEvent.COMPLETED)
    finally:
        store.close()
    return run_name


class NoopBackend:
    def __init__(self, cluster: str, folder: Path, metric: str, partition: str | None = None) -> None:
        self.cluster, self.folder, self.metric, self.partition = cluster, Path(folder), metric, partition
        self.executor = backend_for(cluster)
        self.jobs: dict[str, Any] = {}
        self.scheduler_submit_s = 0.0  # time inside the executor's submit (sbatch / Popen): the scheduler's
        self.scheduler_poll_s = 0.0

    def _job_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The trial's config with a small job's launcher: 5 minutes, 1 CPU, 1 GB, no setup lines."""
        launcher = cfg.launcher.model_copy(update={
            "time_min": 5, "cpus_per_task": 1, "gpus_per_node": 1, "mem_gb": 1, "setup": [],
            **({"partition": self.partition} if self.partition else {}),
        })
        return cfg.model_copy(update={"launcher": launcher})

    def submit(self, cfg: ExperimentConfig, *, cluster: str, store: Store, sweep_name: str, trial_number: int,
               mlflow_parent_run_id: str | None, extra_tags: dict[str, str]) -> tuple[str, str | None]:
        run_dir = self.folder / cfg.name
        run_dir.mkdir(parents=True, exist_ok=True)
        store.create_run(name=cfg.name, config_hash=config_hash(cfg), resolved_config=resolved_config(cfg),
                         output_dir=str(run_dir), cluster=self.cluster, sweep_name=sweep_name,
                         trial_number=trial_number)  # born PENDING
        value = float(sum(hash(str(v)) % 1000 for v in extra_tags.values()) % 997) / 997.0
        job_cfg = self._job_config(cfg)
        t0 = time.perf_counter()
        with scoped_environ({NO_GPUS_ENV: "1"}):  # the no-op job uses no GPU
            job = self.executor.submit(job_cfg, run_dir, partial(noop_trial, store.url, cfg.name, self.metric, value))
        self.scheduler_submit_s += time.perf_counter() - t0
        self.jobs[cfg.name] = job
        store.append_job_id(cfg.name, str(job.job_id))
        return cfg.name, str(job.job_id)

    def refresh(self, store: Store, names: list[str]) -> dict[str, str]:
        runs = [store.get_run(name) for name in names]
        active = [r for r in runs if r.status in ACTIVE_STATUSES and r.job_ids]
        if active:
            t0 = time.perf_counter()
            observations = self.executor.poll(active)  # one batch (SLURM: one sacct)
            self.scheduler_poll_s += time.perf_counter() - t0
            for name, observation in observations.items():  # the lifecycle keeps what the job reported
                apply_observation(store, name, observation)
        return {name: store.get_run(name).status for name in names}

    def cancel(self, name: str, store: Store, status: str) -> None:
        self.executor.cancel(store.get_run(name), CANCEL_TIMEOUT_S)
        apply_event(store, name, {"CANCELLED": RunEvent.CANCELLED, "PRUNED": RunEvent.PRUNED}[status])

