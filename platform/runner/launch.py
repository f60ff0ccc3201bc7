"""How a run is launched: the trainer command line, SLURM parameters, the sbatch script.

Layout of one job (see docs/runner.md):

    sbatch script (submitit)  ->  srun: one task per node  ->  submitit task = `TrainJob`
        (the controller)  ->  child process: `python -m awm_platform.runner.worker RUN_DIR`
        or, for more than one process, `accelerate launch ... -m awm_platform.runner.worker RUN_DIR`
        (c10d rendezvous on the first node of the allocation).

Everything here is pure (no scheduler calls) so `--dry-run` and the golden tests see exactly
what a real submission uses.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awm_platform.runner import snapshot

CLUSTERS = ("local", "debug", "slurm")
WORKER_MODULE = "awm_platform.runner.worker"
# Set to 1 on CPU-only SLURM clusters (CI): do not request GPUs (`--gpus-per-node`).
NO_GPUS_ENV = "AWM_SLURM_NO_GPUS"

# Exported by the sbatch script: the rendezvous host is the first node of the allocation and
# the port is derived from the job id so that two jobs sharing a node never collide.
RENDEZVOUS_SETUP = [
    'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
    "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
]


# The user's `launcher.setup` lines may hold secrets (`export HF_TOKEN=...`): they are never copied
# into the sbatch script (SLURM keeps it in its spool; `scontrol write batch_script`) nor into a
# command line (`ps` shows the local executor's `sh -c` line to every user). The job script sources
# them from this 0600 file, written next to job.json (`setup_script`).
SETUP_FILE = "setup.sh"


def setup_commands(cfg: Any, run_dir: Path) -> list[str]:
    """What the job script runs before the job: one line sourcing `run_dir/setup.sh`, if any."""
    if not cfg.launcher.setup:
        return []
    return [f". {shlex.quote(str(Path(run_dir) / SETUP_FILE))}"]


def setup_script(lines: list[str], run_dir: Path) -> str:
    """The text of `run_dir/setup.sh`: the lines as `reported_setup` wraps them (a failing line
    is reported and ends the job script with its exit code), on SLURM and locally alike."""
    return "\n".join(["# launcher.setup, sourced by the job script (mode 0600: it may hold secrets)",
                      *reported_setup(lines, run_dir)]) + "\n"


def submitit_folder(run_dir: Path) -> Path:
    """submitit's folder for a run: `%j` files (`<job>_<task>_log.out`, pickles) in one place."""
    return Path(run_dir) / "submitit"


def launch_command(
    cfg: Any, run_dir: Path, env: Mapping[str, str] | None = None, python: str | None = None
) -> list[str]:
    """The trainer command one controller runs on its node.

    With `env=None` the per-node values stay as shell placeholders (`$SLURM_NODEID`,
    `$MASTER_ADDR`, `$MASTER_PORT`) for display; the controller passes its environment.
    """
    py = python or sys.executable
    lc = cfg.launcher
    world = lc.nodes * lc.gpus_per_node
    worker = ["-m", WORKER_MODULE, str(run_dir)]
    if world == 1:
        return [py, "-u", *worker]

    def val(name: str, default: str) -> str:
        if env is None:
            return f"${name}"
        return str(env.get(name, default))

    cmd = [
        py,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        str(lc.nodes),
        "--num_processes",
        str(world),
        "--mixed_precision",
        cfg.mixed_precision,
        "--dynamo_backend",
        "no",
        "--main_process_port",
        val("MASTER_PORT", "29500"),
    ]
    if lc.nodes > 1:
        cmd += [
            "--machine_rank",
            val("SLURM_NODEID", "0"),
            "--main_process_ip",
            val("MASTER_ADDR", "127.0.0.1"),
            "--rdzv_backend",
            "c10d",
            "--same_network",
        ]
    return [*cmd, *worker]


def format_command(cmd: list[str]) -> str:
    # keep `$VAR` placeholders readable (shlex would single-quote them)
    return " ".join(c if c.startswith("$") else shlex.quote(c) for c in cmd)


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


def submitit_command(folder: Path, python: str | None = None) -> str:
    """What the sbatch script runs in each srun task (submitit's entry point)."""
    py = python or shlex.quote(sys.executable)
    return " ".join([py, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(
    cfg: Any, run_dir: Path, *, array_size: int | None = None, python: str | None = None
) -> str:
    """The exact sbatch file submitit writes for this run (same function, same inputs)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(cfg, run_dir)
    if array_size is not None and array_size > 1:
        params["map_count"] = array_size
    folder = submitit_folder(run_dir)
    return _make_sbatch_string(command=submitit_command(folder, python), folder=folder, **params)


SETUP_DIR = "setup"  # run_dir/setup/: output of each launcher.setup line, failed.json


def reported_setup(lines: list[str], run_dir: Path) -> list[str]:
    """`launcher.setup` lines for submitit's local executor, each wrapped so that a failing line
    is reported instead of silently ending the job: every line's stdout+stderr goes to
    `run_dir/setup/line-<i>.log`; the first failing line writes `run_dir/setup/failed.json`
    (line number, exit code) and ends the shell with its code (`setup_failure` reads it).
    A brace group runs in the same shell, so `export`/`cd`/`source` keep working."""
    if not lines:
        return []
    d = Path(run_dir) / SETUP_DIR
    out = [f"mkdir -p {shlex.quote(str(d))}"]
    for i, line in enumerate(lines, 1):
        log = shlex.quote(str(d / f"line-{i}.log"))
        failed = shlex.quote(str(d / "failed.json"))
        out.append(  # the newline ends a trailing comment of the line
            f"{{ {{ {line}\n}} >{log} 2>&1 || {{ awm_rc=$?; "
            f"printf '{{\"line\": {i}, \"exit_code\": %d}}\\n' \"$awm_rc\" >{failed}; exit \"$awm_rc\"; }}; }}"
        )
    return out


def setup_failure(run_dir: Path, max_chars: int = 2000) -> str | None:
    """What `reported_setup` recorded about a failed `launcher.setup` line: which line (redacted),
    its exit code and the end of its output; None when no setup line failed."""
    from awm_platform.config import redact

    d = Path(run_dir) / SETUP_DIR
    try:
        info = json.loads((d / "failed.json").read_text())
        index, code = int(info["line"]), int(info["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    line = "?"
    try:
        lines = json.loads((Path(run_dir) / "job.json").read_text())["config"]["launcher"]["setup"]
        line = str(redact(lines[index - 1]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    try:
        output = (d / f"line-{index}.log").read_text(errors="replace").strip()[-max_chars:]
    except OSError:
        output = ""
    try:  # the message reaches the store's error column: the output may echo a secret
        from awm_platform.runner.spec import JobSpec

        output = JobSpec.load(Path(run_dir)).scrub(output)
    except (OSError, ValueError, TypeError):
        from awm_platform.redaction import scrub

        output = scrub(output, set())
    return (f"launcher.setup line {index} failed with exit code {code}: {line}"
            + (f"\n{output}" if output else " (no output)")
            + f"\n(output of every setup line: {d}/line-<n>.log)")


def validate_launch(cfg: Any, cluster: str) -> None:
    """What the executor for `cluster` would refuse, checked before anything is written (and by
    `--dry-run`): raises ValueError naming the key to change."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}: expected one of {', '.join(CLUSTERS)}")
    nodes = cfg.launcher.nodes
    if cluster in ("local", "debug") and nodes != 1:
        raise ValueError(
            f"launcher.nodes={nodes}: the {cluster} executor runs on one machine; set launcher.nodes=1 "
            "or use --cluster slurm"
        )


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


def scheduler_rejection(exc: BaseException) -> str | None:
    """One line for a job the scheduler refused (submitit's FailedJobError around sbatch's stderr):
    sbatch's own message and the launcher key to change. None for any other error."""
    from submitit.core.utils import FailedJobError

    if not isinstance(exc, FailedJobError):
        return None
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    message = " ".join(ln.removeprefix("sbatch: error: ") for ln in lines) or "no message"
    low = message.lower()
    key = next((k for words, k in _SBATCH_HINTS if any(w in low for w in words)), "the launcher section")
    return f"sbatch rejected the job: {message} (change {key})"


def make_executor(cfg: Any, cluster: str, run_dir: Path) -> Any:
    """A submitit executor for `cluster` (always explicit: this machine has sbatch, so
    submitit's auto-detection would pick slurm)."""
    import submitit

    validate_launch(cfg, cluster)
    folder = submitit_folder(run_dir)
    lc = cfg.launcher
    if cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=lc.max_requeues)
        ex.update_parameters(**slurm_parameters(cfg, run_dir))
        return ex
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=lc.max_requeues)
        # gpus_per_node is not passed: the controller starts its own processes, and on a CPU
        # machine submitit would otherwise export an empty CUDA_VISIBLE_DEVICES... which is fine,
        # but visible GPUs are the trainer's business.
        ex.update_parameters(
            timeout_min=lc.time_min,
            signal_delay_s=lc.signal_delay_s,
            tasks_per_node=1,
            setup=setup_commands(cfg, run_dir),
        )
        return ex
    if cluster == "debug":
        return submitit.DebugExecutor(folder=folder)
    raise ValueError(f"unknown cluster {cluster!r}: expected one of {', '.join(CLUSTERS)}")
