"""How a run is launched: the trainer command line one job controller runs, the line that sources
`launcher.setup`, and what a failed setup line reported. (Executor parameters and the sbatch
script: `backends/`.)

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
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awm_platform.redaction import redact, scrub
from awm_platform.runner.spec import SETUP_DIR, SETUP_FILE, JobSpec

WORKER_MODULE = "awm_platform.runner.worker"


def setup_commands(cfg: Any, run_dir: Path) -> list[str]:
    """What the job script runs before the job: one line sourcing `run_dir/setup.sh`, if any."""
    if not cfg.launcher.setup:
        return []
    return [f". {shlex.quote(str(Path(run_dir) / SETUP_FILE))}"]


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


def setup_failure(run_dir: Path, max_chars: int = 2000) -> str | None:
    """What `reported_setup` recorded about a failed `launcher.setup` line: which line (redacted),
    its exit code and the end of its output; None when no setup line failed."""
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
        output = JobSpec.load(Path(run_dir)).scrub(output)
    except (OSError, ValueError, TypeError):
        output = scrub(output, set())
    return (f"launcher.setup line {index} failed with exit code {code}: {line}"
            + (f"\n{output}" if output else " (no output)")
            + f"\n(output of every setup line: {d}/line-<n>.log)")
