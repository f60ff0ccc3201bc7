"""An in-process stand-in for the runner, for the narrowest orchestrator unit tests only
(bookkeeping: counting, retries, pruning decisions). Fault, concurrency and end-to-end tests
use the real runner and executors."""

from __future__ import annotations

from typing import Any

from awm_platform.config import config_hash, resolved_config


class FakeBackend:
    """Each run logs `eval/jpeg_compressibility` = objective(params) * step/steps at steps
    0..steps-1 (one step per poll) and then completes. `fail_once` trial numbers fail at their
    first poll; `cancelled` records (name, status) of cancel calls."""

    def __init__(self, steps: int = 3, fail_once: set[int] | None = None, fail_always: set[int] | None = None,
                 gpu_hours_per_run: float = 0.0):
        self.steps = steps
        self.gpu_hours_per_run = gpu_hours_per_run
        self.fail_once = set(fail_once or ())
        self.fail_always = set(fail_always or ())
        self.progress: dict[str, int] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.submitted: list[tuple[str, int]] = []
        self.cancelled: list[tuple[str, str]] = []
        self.failed_roots: set[int] = set()

    def submit(self, cfg: Any, *, cluster: str, store: Any, sweep_name: str, trial_number: int,
               mlflow_parent_run_id: str | None, extra_tags: dict[str, str]) -> tuple[str, str | None]:
        store.create_run(name=cfg.name, config_hash=config_hash(cfg), resolved_config=resolved_config(cfg),
                         output_dir="/nonexistent", cluster=cluster, sweep_name=sweep_name,
                         trial_number=trial_number, status="RUNNING")
        self.progress[cfg.name] = 0
        self.params[cfg.name] = {"beta": cfg.train.beta, "seed": cfg.seed, "tags": extra_tags}
        self.submitted.append((cfg.name, trial_number))
        return cfg.name, f"fake-{trial_number}"

    def refresh(self, store: Any, names: list[str]) -> dict[str, str]:
        out = {}
        for name in names:
            run = store.get_run(name)
            if run.status not in ("PENDING", "RUNNING"):
                out[name] = run.status
                continue
            beta = self.params[name]["beta"]
            if run.trial_number in self.fail_always or (run.trial_number in self.fail_once
                                                        and run.trial_number not in self.failed_roots):
                self.failed_roots.add(run.trial_number)
                store.update_run(name, status="FAILED", error="process died (fake)")
                out[name] = "FAILED"
                continue
            k = self.progress[name]
            store.log_metrics(name, {"eval/jpeg_compressibility": 1000 * beta * (k + 1)}, step=k)
            self.progress[name] = k + 1
            if k + 1 >= self.steps:
                store.update_run(name, status="COMPLETED", gpu_hours=self.gpu_hours_per_run)
            out[name] = store.get_run(name).status
        return out

    def cancel(self, name: str, store: Any, status: str) -> None:
        self.cancelled.append((name, status))
        store.update_run(name, status=status)
