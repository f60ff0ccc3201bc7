"""The generated multi-node path run for real on one machine: the sbatch script submitit wrote for
a 2-node job is executed by bash, with stand-ins for the SLURM commands it calls (`srun` starts one
task per "node" with the variables SLURM sets per task; `scontrol` answers `show hostnames` and
records `requeue`). Everything else is real: submitit's task entry point, our two job controllers
(SLURM_NODEID / SLURM_PROCID 0 and 1), the `accelerate launch --machine_rank ... --rdzv_backend c10d`
line each controller runs, gloo DDP on 127.0.0.1 and the tiny trainer.

A preemption signal sent to the rank-1 node only must stop both nodes at the same step, write one
checkpoint, requeue the job once (through the rank-0 task, as submitit does), and the requeued job
(the same script again, as SLURM restarts it) must resume from that checkpoint and complete."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import jsonl_steps, tiny_config

pytestmark = pytest.mark.slow

EPOCHS = 2  # one optimizer step per epoch: stopped after step 1, resumed for step 2
SHIMS = {
    "sbatch": 'echo "$*" >> "$SHIM_DIR/sbatch.log"; echo "Submitted batch job $SHIM_JOB_ID"\n',
    "scontrol": """echo "$*" >> "$SHIM_DIR/scontrol.log"
if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1; fi
""",
    "scancel": 'echo "$*" >> "$SHIM_DIR/scancel.log"\n',
    "squeue": "true\n",  # the job is not in any queue: nothing to wait for
    # srun --unbuffered --output PATTERN --error PATTERN COMMAND...: one task per node
    "srun": r"""out= err=
while [ $# -gt 0 ]; do
  case $1 in
    --output) out=$2; shift 2 ;;
    --error) err=$2; shift 2 ;;
    --*) shift ;;
    *) break ;;
  esac
done
pids=""
for i in $(seq 0 $((SLURM_JOB_NUM_NODES - 1))); do
  o=$(echo "$out" | sed "s/%j/$SLURM_JOB_ID/g; s/%t/$i/g")
  e=$(echo "$err" | sed "s/%j/$SLURM_JOB_ID/g; s/%t/$i/g")
  SLURM_PROCID=$i SLURM_NODEID=$i SLURM_LOCALID=0 SLURM_NTASKS=$SLURM_JOB_NUM_NODES SLURM_STEP_ID=0 \
    "$@" >>"$o" 2>>"$e" &
  echo $! > "$SHIM_DIR/task-$i.pid"
  pids="$pids $!"
done
rc=0
for p in $pids; do wait $p || rc=$?; done
exit $rc
""",
}


def _write_shims(directory: Path) -> Path:
    directory.mkdir()
    for name, body in SHIMS.items():
        path = directory / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    return directory


def _free_port() -> int:
    """A free port in the range the sbatch script derives MASTER_PORT from (20000 + job id % 20000)."""
    for port in random.sample(range(20000, 40000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 20000-39999")


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _run_job_script(script: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def test_two_nodes_stay_identical_and_requeue_together(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import load_file

    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store
    from trainers.awm import checkpoint as C

    shims = _write_shims(tmp_path / "bin")
    port = _free_port()
    job_id = str(100000 + port - 20000)  # the script exports MASTER_PORT=20000 + job id % 20000 = port
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SHIM_DIR", str(shims))
    monkeypatch.setenv("SHIM_JOB_ID", job_id)
    monkeypatch.setenv("AWM_SLURM_NO_GPUS", "1")
    cfg = tiny_config(
        tiny_model,
        "two-nodes",
        num_epochs=EPOCHS,
        save_freq=1000,  # checkpoints only when stopped and at the end
        launcher={"nodes": 2, "gpus_per_node": 1, "time_min": 30, "signal_delay_s": 120, "max_requeues": 3},
    )
    store = Store.default()
    sub = submit_run(cfg, cluster="slurm", store=store)
    assert sub.job_id == job_id
    script = sub.job.paths.submission_file
    text = script.read_text()
    # the exact command line each controller runs, as the golden files pin it
    assert "--machine_rank $SLURM_NODEID" in " ".join(sub.launch_command)
    assert "#SBATCH --nodes=2" in text and "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in text

    env = {
        **os.environ,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "localhost",
        "OMP_NUM_THREADS": "1",
        # two "nodes" on one machine share its devices: gloo on CPU even where a GPU is present
        "ACCELERATE_USE_CPU": "true",
        "CUDA_VISIBLE_DEVICES": "",
        # the signal reaches node 1 only: the rank-0 controller, whose trainer stopped with node 1's,
        # gives a signal of its own 0.5 s (not 5) to arrive before it raises one and requeues the job
        "AWM_OWN_SIGNAL_WAIT_S": "0.5",
    }
    run_dir = sub.run_dir
    job = _run_job_script(script, env)
    try:
        # both ranks are in the trainer (past the rendezvous, stop handlers installed)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:
            if {e.get("rank") for e in _events(run_dir) if e["event"] == "train_call"} >= {0, 1}:
                break
            time.sleep(0.2)
        assert job.poll() is None, f"the job ended before training: {_logs(run_dir)}"
        node1_controller = int((shims / "task-1.pid").read_text())
        os.kill(node1_controller, signal.SIGUSR2)  # the preemption signal reaches node 1 only
        _wait(job, 240)  # both tasks end: the rank-0 one after requeueing the job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)

    logs = _logs(run_dir)
    requeues = [x for x in (shims / "scontrol.log").read_text().splitlines() if x.startswith("requeue")]
    assert requeues == [f"requeue {job_id}"], logs  # once, by the rank-0 task, for the whole job
    assert store.get_run(sub.name).status == "PREEMPTED", logs
    stopped_at = C.find_latest_valid(run_dir)
    assert stopped_at is not None and 1 <= stopped_at.step < EPOCHS, logs
    assert not _job_processes(run_dir), "processes of the preempted job are still running"

    # SLURM restarts the requeued job: the same script, the same job id, the checkpointed pickle
    job = _run_job_script(script, env)
    try:
        assert _wait(job, 300) == 0, _logs(run_dir)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    logs = _logs(run_dir)
    run = store.get_run(sub.name)
    assert run.status == "COMPLETED", (run.error, logs)
    assert run.job_ids == [job_id]
    assert f"resumed from {C.step_dir(run_dir, stopped_at.step)}" in logs
    assert not _job_processes(run_dir)

    # every step once (only rank 0 logs), checkpoints written once each, ranks identical
    assert jsonl_steps(run_dir, "train/loss") == list(range(1, EPOCHS + 1))
    assert [s for s, _ in store.get_metric_history(sub.name, "train/loss")] == list(range(1, EPOCHS + 1))
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert steps == [stopped_at.step, EPOCHS]
    assert not list((run_dir / "checkpoints").glob(".tmp-*")), "a checkpoint was left half-written"
    assert [c.step for c in store.list_checkpoints(sub.name)] == steps  # registered by rank 0's logger
    for step in steps:
        ckpt = C.step_dir(run_dir, step)
        manifest = json.loads((ckpt / C.MANIFEST).read_text())
        assert manifest["world_size"] == 2
        assert {"state/rank-0.pt", "state/rank-1.pt"} <= set(manifest["files"])
        digests = {C.load_torch(ckpt / "state" / f"rank-{r}.pt")["adapter_sha256"] for r in (0, 1)}
        assert len(digests) == 1, f"LoRA weights differ across ranks at step {step}"
    final = load_file(C.step_dir(run_dir, EPOCHS) / "lora" / "pytorch_lora_weights.safetensors")
    assert final and all(torch.isfinite(t).all() for t in final.values())


def _logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "submitit").glob("*_log.*")))


def _job_processes(run_dir: Path) -> list[int]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(run_dir) in part for part in (p.info["cmdline"] or [])):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out
