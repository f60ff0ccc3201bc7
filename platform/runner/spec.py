"""`run_dir/job.json`: what a job needs to run, resolved at submit time (mode 0600, not
redacted: it may hold database passwords; the capsule holds the redacted copy), and
`run_dir/setup.sh` (mode 0600): the raw `launcher.setup` lines the job script sources, each wrapped
so that a failing line is reported in `run_dir/setup/` (`launch.setup_failure` reads it)."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from awm_platform.config import ExperimentConfig
from awm_platform.redaction import scrub, secret_values
from benchmarks.files import atomic_write

# The user's `launcher.setup` lines may hold secrets (`export HF_TOKEN=...`): they are never copied
# into the sbatch script (SLURM keeps it in its spool; `scontrol write batch_script`) nor into a
# command line (`ps` shows the local executor's `sh -c` line to every user). The job script sources
# them from this 0600 file, written next to job.json (`setup_script`).
SETUP_FILE = "setup.sh"
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


def setup_script(lines: list[str], run_dir: Path) -> str:
    """The text of `run_dir/setup.sh`: the lines as `reported_setup` wraps them (a failing line
    is reported and ends the job script with its exit code), on SLURM and locally alike."""
    return "\n".join(["# launcher.setup, sourced by the job script (mode 0600: it may hold secrets)",
                      *reported_setup(lines, run_dir)]) + "\n"


@dataclass
class JobSpec:
    name: str
    config: dict[str, Any]
    cluster: str
    store_url: str
    tracking_uri: str
    artifact_root: str | None
    experiment: str
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        lc = self.config.get("launcher", {})
        return int(lc.get("nodes", 1)) * int(lc.get("gpus_per_node", 1))

    def experiment_config(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.config)

    def save(self, run_dir: Path) -> None:
        """job.json and, with `launcher.setup` lines, setup.sh: the only files holding them raw."""
        atomic_write(Path(run_dir) / "job.json", json.dumps(asdict(self), indent=2) + "\n", mode=0o600)
        setup = list(self.config.get("launcher", {}).get("setup") or [])
        if setup:
            atomic_write(Path(run_dir) / SETUP_FILE, setup_script(setup, Path(run_dir)), mode=0o600)

    def scrub(self, text: str) -> str:
        """`text` (a traceback, a setup line's output) fit for a log or the store: this job's
        secrets (config, store and tracking URLs) and secret-looking assignments hidden."""
        return scrub(text, secret_values([self.config, self.store_url, self.tracking_uri]))

    @classmethod
    def load(cls, run_dir: Path) -> JobSpec:
        path = Path(run_dir) / "job.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} is missing: {run_dir} is not a run directory made by `awm submit`"
            ) from None
        return cls(**data)
