"""Preemption / time limits / requeue for real: the local executor's time-out signal and the
real single-node SLURM (`scontrol requeue`, time limit). The requeued job must resume the same
run, and the final LoRA weights must equal an uninterrupted run's bitwise, with a gap-free,
duplicate-free metric history (JSONL, store and MLflow)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import jsonl_steps, tiny_config, wait_terminal

pytestmark = pytest.mark.slow

EPOCHS = 3
LORA = "lora/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def baseline(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run, in-process."""
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from trainers.awm.recipe import train

    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    res = train(tiny_config(tiny_model, "baseline", num_epochs=EPOCHS), run_dir)
    assert res.status == "completed"
    return {
        "weights": load_file(run_dir / "checkpoints" / f"step-{res.global_step}" / LORA),
        "steps": res.global_step,
        "loss": jsonl_steps(run_dir, "train/loss"),
    }


def _check_resumed_run(store: Any, name: str, baseline: dict[str, Any], min_jobs: int) -> None:
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from awm_platform.paths import default_mlflow_tracking_uri

    run = store.get_run(name)
    run_dir = Path(run.output_dir)
    assert run.status == "COMPLETED", run.error
    starts = [json.loads(x) for x in (run_dir / "capsule" / "hosts.jsonl").read_text().splitlines()]
    assert len(starts) >= min_jobs, f"expected the job to be (re)started >= {min_jobs} times, got {starts}"
    # bitwise-identical final LoRA
    final = load_file(run_dir / "checkpoints" / f"step-{baseline['steps']}" / LORA)
    assert final.keys() == baseline["weights"].keys()
    for k, v in baseline["weights"].items():
        assert torch.equal(final[k], v), f"LoRA tensor {k} differs from the uninterrupted run"
    expected = list(range(1, baseline["steps"] + 1))
    assert jsonl_steps(run_dir, "train/loss") == expected
    assert [s for s, _ in store.get_metric_history(name, "train/loss")] == expected
    # one MLflow run for the whole (requeued) training run; its history has every step once
    client = MlflowClient(default_mlflow_tracking_uri())
    info = json.loads((run_dir / "capsule" / "mlflow.json").read_text())
    assert info["run_id"] == run.mlflow_run_id
    hist = client.get_metric_history(run.mlflow_run_id, "train/loss")
    assert sorted(m.step for m in hist) == expected
    exp = client.get_experiment_by_name("runner-tests")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'")
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"


def test_local_timeout_requeue_resumes_same_run(tiny_model: Path, baseline: dict[str, Any]) -> None:
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store

    # time limit 2 min, signal 117 s before it: USR2 ~3 s into every job segment, i.e. during start-up
    # (the trainer's imports alone take 3.5 s on a fast machine; at 6 s in, a fast machine was already
    # in its last epoch, which completed the run unrequeued): every segment makes at least one step
    # (the stop is honoured after a step), so the run is interrupted several times whatever the
    # machine. (submitit's local controller restarts a task at most 5 times: EPOCHS must stay <= 5.)
    cfg = tiny_config(
        tiny_model,
        "pre-local",
        num_epochs=EPOCHS,
        launcher={"time_min": 2, "signal_delay_s": 117, "max_requeues": 5},
    )
    store = Store.default()
    sub = submit_run(cfg, cluster="local", store=store)
    assert wait_terminal(store, sub.name, 420) == "COMPLETED", store.get_run(sub.name).error
    log = "".join(p.read_text() for p in (sub.run_dir / "submitit").glob("*_log.*"))
    assert "Requeued job" in log
    _check_resumed_run(store, sub.name, baseline, min_jobs=2)


@pytest.mark.slurm
def test_slurm_scontrol_requeue_and_time_limit(
    tiny_model: Path, baseline: dict[str, Any], slurm_cluster: Any
) -> None:
    """Real SLURM: an admin `scontrol requeue` (SIGTERM, which submitit ignores: our
    controller checkpoints) in the first segment, then time-limit signals (USR2, ~1 min limit)
    in the next ones. Requeued jobs wait ~120 s for their BeginTime; the test releases them."""
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store

    cfg = tiny_config(
        tiny_model,
        "pre-slurm",
        num_epochs=EPOCHS,
        launcher={
            "partition": slurm_cluster.partition,
            "cpus_per_task": 1,
            "gpus_per_node": 1,
            # SLURM may send --signal up to 60 s early: with a 3 min limit USR2 comes 6-66 s
            # into each segment, never before submitit's handler is installed
            "time_min": 3,
            "signal_delay_s": 114,
            "max_requeues": 8,
        },
    )
    store = Store.default()
    sub = submit_run(cfg, cluster="slurm", store=store)
    job = sub.job_id
    assert sub.sbatch_script and "#SBATCH --signal=USR2@114" in sub.sbatch_script
    deadline = time.monotonic() + 120
    events = sub.run_dir / "events.jsonl"
    while time.monotonic() < deadline and not (events.exists() and "child_spawned" in events.read_text()):
        time.sleep(0.5)
    assert events.exists() and "child_spawned" in events.read_text(), "the SLURM job never started"
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)

    def release() -> None:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True)
        if out.stdout.startswith("PENDING") and "BeginTime" in out.stdout:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)

    assert wait_terminal(store, sub.name, 420, on_tick=release) == "COMPLETED", store.get_run(sub.name).error
    run = store.get_run(sub.name)
    assert run.job_ids == [job]  # a requeue keeps the job id
    assert run.gpu_hours > 0 and run.hosts
    logs = "".join(p.read_text() for p in (sub.run_dir / "submitit").glob(f"{job}_*_log.*"))
    assert "caught SIGTERM" in logs
    _check_resumed_run(store, sub.name, baseline, min_jobs=2)
