"""The SLURM backend: submitit's `SlurmExecutor`, one `sacct` for every job of every polled run,
`scancel` + wait until the job is gone from `squeue`.

* Parameters: `slurm_parameters` (one srun task per node; `launcher.*` keys -> sbatch options).
* Preview: the exact sbatch file submitit writes (`sbatch_script`; golden files in tests/runner/golden).
* Poll: `sacct -D` lists the requeued instances too, so GPU-hours = the sum of their elapsed times x
  GPUs (preempted time included); the scheduler accounts them, not the job controller.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import submitit

from awm_platform.runner import snapshot
from awm_platform.runner.backends import submitit_compat
from awm_platform.runner.backends.base import ExecutorBackend, JobObservation
from awm_platform.runner.launch import setup_commands, setup_failure, submitit_folder
from awm_platform.runner.proc import scrubbed_environ

# Set to 1 on CPU-only SLURM clusters (CI): do not request GPUs (`--gpus-per-node`).
NO_GPUS_ENV = "AWM_SLURM_NO_GPUS"

# Exported by the sbatch script: the rendezvous host is the first node of the allocation and
# the port is derived from the job id so that two jobs sharing a node never collide.
RENDEZVOUS_SETUP = [
    'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
    "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
]

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

# sbatch's rejection message -> the config key that usually fixes it
_SBATCH_HINTS = (
    (("gres", "generic resource"), "launcher.gpus_per_node (or export AWM_SLURM_NO_GPUS=1 on a CPU-only cluster)"),
    (("account",), "launcher.account"),
    (("partition",), "launcher.partition"),
    (("qos",), "launcher.qos"),
    (("time limit",), "launcher.time_min"),
    (("memory",), "launcher.mem_gb"),
    (("feature", "constraint"), "launcher.constraint"),
    (("node count", "node configuration", "nodes"), "launcher.nodes / launcher.gpus_per_node / launcher.cpus_per_task"),
)


class PollError(RuntimeError):
    pass


def _parse_extra_sbatch(lines: list[str]) -> dict[str, Any]:
    """`["--exclusive", "mail-type=END"]` -> {"exclusive": True, "mail_type": "END"}."""
    out: dict[str, Any] = {}
    for line in lines:
        item = line.strip()
        item = item.removeprefix("#SBATCH").strip().lstrip("-")
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep and " " in key:
            key, value = key.split(None, 1)
            sep = "="
        out[key.strip().replace("-", "_")] = value.strip() if sep else True
    return out


def slurm_parameters(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters from `cfg.launcher` (one srun task per node).

    `launcher.cpus_per_task` counts CPUs per trainer process; a node's task hosts
    `gpus_per_node` processes, so the task asks for the product.
    """
    lc = cfg.launcher
    params: dict[str, Any] = {
        "job_name": cfg.name,
        "time": lc.time_min,
        "nodes": lc.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": lc.cpus_per_task * lc.gpus_per_node,
        "signal_delay_s": lc.signal_delay_s,
        "array_parallelism": lc.array_parallelism,
    }
    if os.environ.get(NO_GPUS_ENV, "") not in ("1", "true", "yes"):
        params["gpus_per_node"] = lc.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(lc, key)
        if value:
            params[key] = value
    if lc.mem_gb:
        params["mem"] = f"{math.ceil(lc.mem_gb * 1024)}M"
    setup = list(RENDEZVOUS_SETUP) if lc.nodes * lc.gpus_per_node > 1 else []
    setup += setup_commands(cfg, run_dir)
    setup.append(snapshot.setup_line(snapshot.code_dir(run_dir)))  # last: user setup may reset PYTHONPATH
    if setup:
        params["setup"] = setup
    extra = _parse_extra_sbatch(list(lc.extra_sbatch))
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_script(
    cfg: Any, run_dir: Path, *, array_size: int | None = None, python: str | None = None
) -> str:
    """The exact sbatch file submitit writes for this run (same function, same inputs)."""
    params = slurm_parameters(cfg, run_dir)
    if array_size is not None and array_size > 1:
        params["map_count"] = array_size
    folder = submitit_folder(run_dir)
    return submitit_compat.sbatch_string(submitit_compat.submitit_command(folder, python), folder, params)


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


def run_sacct(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """One `sacct` call for `job_ids` (parsed by `parse_sacct`); PollError if it fails."""
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


def observe(run: Any, info: dict[str, dict[str, Any]]) -> JobObservation | None:
    """What sacct's records (`parse_sacct`) say about `run`'s jobs; None if it knows none of them."""
    recs = [info[j] for j in run.job_ids if j in info]
    if not recs:
        return None
    latest = recs[-1]
    status = SLURM_STATES.get(latest["state"])
    nodes = latest.get("nodes") or ""
    error = None
    if status == "FAILED":  # a failed launcher.setup line (setup.sh, sourced by the sbatch script) says which
        error = setup_failure(Path(run.output_dir)) or f"SLURM state {latest['state']}"
    return JobObservation(
        status=status,
        gpu_hours=sum(r["elapsed_s"] for r in recs) * run.num_gpus / 3600.0,
        hosts=[nodes] if nodes and nodes != "None assigned" else [],
        started_at=_parse_time(latest.get("start", "")),
        ended_at=_parse_time(latest.get("end", "")),
        error=error,
    )


class SlurmBackend(ExecutorBackend):
    name: ClassVar[str] = "slurm"
    controller_accounts_gpu_hours: ClassVar[bool] = False
    supports_arrays: ClassVar[bool] = True

    def validate(self, cfg: Any) -> None:
        """sbatch itself judges the request (its refusal is reported by `rejection`)."""

    def preview(self, cfg: Any, run_dir: Path, array_size: int | None = None) -> str | None:
        return sbatch_script(cfg, run_dir, array_size=array_size)

    def rejection(self, exc: BaseException) -> str | None:
        """One line for a job the scheduler refused (submitit's FailedJobError around sbatch's stderr):
        sbatch's own message and the launcher key to change. None for any other error."""
        if not isinstance(exc, submitit_compat.FailedJobError):
            return None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        message = " ".join(ln.removeprefix("sbatch: error: ") for ln in lines) or "no message"
        low = message.lower()
        key = next((k for words, k in _SBATCH_HINTS if any(w in low for w in words)), "the launcher section")
        return f"sbatch rejected the job: {message} (change {key})"

    def _executor(self, cfg: Any, run_dir: Path) -> submitit.SlurmExecutor:
        ex = submitit.SlurmExecutor(folder=submitit_folder(run_dir), max_num_timeout=cfg.launcher.max_requeues)
        ex.update_parameters(**slurm_parameters(cfg, run_dir))
        return ex

    def submit(self, cfg: Any, run_dir: Path, job: Any) -> Any:
        executor = self._executor(cfg, run_dir)
        # submitit prints a rejected sbatch's stderr itself; it is in the exception too (`rejection`)
        with scrubbed_environ(), contextlib.redirect_stderr(io.StringIO()):
            return executor.submit(job)

    def submit_array(self, cfgs: Sequence[Any], run_dirs: Sequence[Path], jobs: Sequence[Any],
                     folder: Path) -> list[Any]:
        """ONE job array (`--array=0-<N-1>%launcher.array_parallelism`) in the shared `folder`."""
        executor = self._executor(cfgs[0], run_dirs[0])
        executor.folder = Path(folder).resolve()
        # as `submit`: submitit prints a rejected sbatch's stderr itself; `rejection` says it once
        with scrubbed_environ(), contextlib.redirect_stderr(io.StringIO()), executor.batch():
            return [executor.submit(job) for job in jobs]

    def poll(self, runs: Sequence[Any]) -> dict[str, JobObservation]:
        try:
            info = run_sacct(sorted({j for r in runs for j in r.job_ids}))
        except PollError:
            return {}  # transient: keep what we have
        observations = {r.name: observe(r, info) for r in runs}
        return {name: obs for name, obs in observations.items() if obs is not None}

    def cancel(self, run: Any, timeout_s: float) -> None:
        """`scancel` (the job gets SIGTERM: its controller checkpoints the trainer), then wait until
        the job is gone from `squeue`."""
        job_id = run.job_ids[-1] if run.job_ids else None
        if not job_id:
            return
        deadline = time.monotonic() + timeout_s
        subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
        while time.monotonic() < deadline:
            q = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60
            )
            if q.returncode != 0 or not q.stdout.strip():
                break
            time.sleep(0.5)
