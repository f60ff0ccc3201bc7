"""A no-op worker mode for measuring the orchestrator (perf/sweep_overhead.py).

`NoopBackend` stands in for the runner: each trial is a real submitit job (local executor or
SLURM) that logs the objective at two steps to the store and marks its run COMPLETED, with no
trainer. The orchestrator code path (ask, config build, submit, poll, report, tell) is the
real one; only the job body is trivial, so time beyond the scheduler's own latency is ours.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def noop_trial(store_url: str, run_name: str, metric: str, value: float) -> str:
    from awm_platform.store import Store

    store = Store(store_url, upgrade=False)
    try:
        store.update_run(run_name, status="RUNNING")
        store.log_metrics(run_name, {metric: value * 0.5}, step=0)
        store.log_metrics(run_name, {metric: value}, step=1)
        store.update_run(run_name, status="COMPLETED")
    finally:
        store.close()
    return run_name


class NoopBackend:
    def __init__(self, cluster: str, folder: Path, metric: str, partition: str | None = None) -> None:
        self.cluster, self.folder, self.metric, self.partition = cluster, Path(folder), metric, partition
        self.jobs: dict[str, Any] = {}
        self.scheduler_submit_s = 0.0  # time inside submitit's submit (sbatch / Popen): the scheduler's
        self.scheduler_poll_s = 0.0

    def _executor(self) -> Any:
        import submitit

        if self.cluster == "slurm":
            ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster="slurm")
            ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1,
                                 **({"slurm_partition": self.partition} if self.partition else {}))
        else:
            ex = submitit.LocalExecutor(folder=str(self.folder / "%j"))
            ex.update_parameters(timeout_min=5)
        return ex

    def submit(self, cfg: Any, *, cluster: str, store: Any, sweep_name: str, trial_number: int,
               mlflow_parent_run_id: str | None, extra_tags: dict[str, str]) -> tuple[str, str | None]:
        from awm_platform.config import config_hash, resolved_config

        store.create_run(name=cfg.name, config_hash=config_hash(cfg), resolved_config=resolved_config(cfg),
                         output_dir=str(self.folder / cfg.name), cluster=self.cluster, sweep_name=sweep_name,
                         trial_number=trial_number, status="PENDING")
        value = float(sum(hash(str(v)) % 1000 for v in extra_tags.values()) % 997) / 997.0
        t0 = time.perf_counter()
        job = self._executor().submit(noop_trial, store.url, cfg.name, self.metric, value)
        self.scheduler_submit_s += time.perf_counter() - t0
        self.jobs[cfg.name] = job
        store.append_job_id(cfg.name, str(job.job_id))
        return cfg.name, str(job.job_id)

    def refresh(self, store: Any, names: list[str]) -> dict[str, str]:
        out = {}
        for name in names:
            run = store.get_run(name)
            job = self.jobs.get(name)
            if run.status in ("PENDING", "RUNNING") and job is not None:
                t0 = time.perf_counter()
                done = job.done()
                self.scheduler_poll_s += time.perf_counter() - t0
                if done and store.get_run(name).status in ("PENDING", "RUNNING"):
                    store.update_run(name, status="FAILED", error="no-op job ended without reporting")
            out[name] = store.get_run(name).status
        return out

    def cancel(self, name: str, store: Any, status: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            job.cancel(check=False)
        store.update_run(name, status=status)
