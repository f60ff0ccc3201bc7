"""The reproducibility capsule: everything needed to re-create a run, in `run_dir/capsule/`.

    config.yaml         resolved config (defaults, derived topology; secrets redacted)
                        (every capsule file is mode 0640: never world-readable)
    config_hash         awm_platform.config.config_hash
    git.json            commit, branch, dirty flag, repository root
    git.diff            `git diff HEAD` (uncommitted changes) when dirty, the config's secrets hidden
    pip-freeze.txt      installed distributions (name==version), sorted
    launch.json         cluster, launch command, seeds, submit host/user/time
    sbatch.sh           the generated sbatch script (SLURM only)
    hosts.jsonl         one line per job start: job id, hosts, time (appended by the controller)
    mlflow.json         MLflow tracking URI / experiment / run id (written by the worker)
    code.json           the code snapshot the job runs (runner/snapshot.py: sha256, path, sources)

`run_dir/job.json` (mode 0600, NOT redacted) is what the job itself loads.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import yaml

from awm_platform.config import config_hash, resolved_config
from awm_platform.redaction import scrub, secret_values
from benchmarks.files import FILE_MODE, atomic_write

REPO_ROOT = Path(__file__).resolve().parents[2]


def append_line(path: Path, line: str) -> None:
    """One write() on an O_APPEND descriptor: concurrent appenders never interleave lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def event(run_dir: Path | str, name: str, **fields: object) -> None:
    """Timeline of a run's jobs (`run_dir/events.jsonl`): controller/worker start and end,
    used by `perf/submit_overhead.py` and handy when debugging a slow start."""
    try:
        append_line(
            Path(run_dir) / "events.jsonl",
            json.dumps({"t": time.time(), "event": name, "pid": os.getpid(), **fields}),
        )
    except OSError:
        pass


def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """commit / branch / dirty of the code being launched (None values outside a checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": branch,
        "dirty": bool(status) if status is not None else None,
        "root": str(root),
    }


def git_diff(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "diff", "HEAD"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def pip_freeze() -> str:
    """`pip freeze`-equivalent from importlib.metadata (pip itself takes ~1 s to start)."""
    seen: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(seen[k] for k in sorted(seen)) + "\n"


def write_capsule(
    run_dir: Path,
    *,
    cfg: Any,
    cluster: str,
    launch_command: list[str],
    sbatch: str | None,
    git: dict[str, Any],
) -> Path:
    cap = Path(run_dir) / "capsule"
    cap.mkdir(parents=True, exist_ok=True)
    atomic_write(cap / "config.yaml", yaml.safe_dump(resolved_config(cfg), sort_keys=False))
    atomic_write(cap / "config_hash", config_hash(cfg) + "\n")
    atomic_write(cap / "git.json", json.dumps(git, indent=2) + "\n")
    if git.get("dirty"):
        # an edited config file in the checkout may hold this run's secrets: hide the values the
        # config's redaction hides, and any secret-looking assignment (docs/runner.md, "Secrets")
        diff = git_diff(Path(git.get("root") or REPO_ROOT))
        atomic_write(cap / "git.diff", scrub(diff, secret_values(cfg.model_dump(mode="json"))))
    atomic_write(cap / "pip-freeze.txt", pip_freeze())
    launch = {
        "cluster": cluster,
        "launch_command": launch_command,
        "seeds": {"seed": cfg.seed, "eval.seed": cfg.eval.seed},
        "world_size": cfg.launcher.nodes * cfg.launcher.gpus_per_node,
        "submit_host": socket.gethostname(),
        "user": user_name(),
        "submitted_at": datetime.now(UTC).isoformat(),
    }
    atomic_write(cap / "launch.json", json.dumps(launch, indent=2) + "\n")
    if sbatch is not None:
        atomic_write(cap / "sbatch.sh", sbatch)
    return cap


def user_name() -> str:
    """The submitting user (for the capsule and MLflow's `mlflow.user`)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "unknown")
