"""Fixtures for sweeps that run real training jobs (tests/conftest.py's tiny model, a few seconds of
CPU each)."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training jobs inherit the environment: one thread each on the shared 2-core box (P1),
    and fast scheduler polls so the sweep tests stay short."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("AWM_POLL_INTERVAL_S", "0.3")
    monkeypatch.setenv("AWM_MLFLOW_FLUSH_S", "5")


@pytest.fixture
def quickstart_trial(tiny_model: Path, job_env: None) -> dict[str, Any]:
    """The quickstart experiment, shortened to 1 epoch (evals at steps 0 and 1), at the quickstart's
    own sizes (an epoch: 2.3 s of CPU)."""
    data = yaml.safe_load((REPO / "configs" / "quickstart_sweep.yaml").read_text())
    data.pop("sweep")
    data["pretrained"]["model"] = str(tiny_model)
    data["num_epochs"] = 1
    data["save_freq"] = 1
    return copy.deepcopy(data)


# A trial's epoch at the smallest sizes the trainer accepts (trainers.awm.tiny's experiment: 2 prompts
# x 2 images, 1 train timestep, 4/3 ODE steps, 2 eval prompts): 0.2 s of CPU instead of the quickstart's
# 2.3 s. The sweep tests check orchestration (concurrency, retries, pruning, adoption, tracking), which
# no epoch size changes; a test that needs a trial to stay in training sets its own num_epochs, or takes
# `quickstart_trial`.
SMALL_EPOCH = {
    "sample": {"num_steps": 4, "eval_num_steps": 3, "num_image_per_prompt": 2, "prompts_per_epoch": 2,
               "max_batch_size_per_gpu": 4, "test_batch_size": 2},
    "train": {"batch_size": 2, "train_timesteps": 1},
    "eval": {"max_prompts": 2},
}


@pytest.fixture
def trial_base(quickstart_trial: dict[str, Any]) -> dict[str, Any]:
    """`quickstart_trial` (its LoRA targets, EMA, evaluation at start) at `SMALL_EPOCH`'s sizes: a
    trial is mostly the job's start-up (imports)."""
    data = copy.deepcopy(quickstart_trial)
    for section, values in SMALL_EPOCH.items():
        data[section] = {**data[section], **values}
    return data


class OrchestratorThread:
    """Drive an orchestrator in a background thread (the test thread injects faults)."""

    def __init__(self, orch: Any, resume: bool = False) -> None:
        self.orch, self.result, self.error = orch, None, None
        self.thread = threading.Thread(target=self._run, args=(resume,), daemon=True)
        self.thread.start()

    def _run(self, resume: bool) -> None:
        try:
            self.result = self.orch.run(resume=resume)
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.orch.request_stop()
            self.thread.join(60)
            raise TimeoutError(f"sweep not finished within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def kill_job_tree(pid: int) -> None:
    """SIGKILL a local job's controller and everything under it (a dead trial process)."""
    import signal

    from awm_platform.runner.proc import descendants

    for p in [*descendants(pid), pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
