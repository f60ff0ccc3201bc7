"""`run_dir/job.json`: what a job needs to run, resolved at submit time (mode 0600, not
redacted: it may hold database passwords; the capsule holds the redacted copy), and
`run_dir/setup.sh` (mode 0600): the raw `launcher.setup` lines the job script sources."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from awm_platform.runner.capsule import atomic_write

EXIT_INTERRUPTED = 3  # trainer contract: checkpointed after a stop request


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

    def experiment_config(self) -> Any:
        from awm_platform.config import ExperimentConfig

        return ExperimentConfig.model_validate(self.config)

    def save(self, run_dir: Path) -> None:
        """job.json and, with `launcher.setup` lines, setup.sh: the only files holding them raw."""
        from awm_platform.runner.launch import SETUP_FILE, setup_script

        atomic_write(Path(run_dir) / "job.json", json.dumps(asdict(self), indent=2) + "\n", mode=0o600)
        setup = list(self.config.get("launcher", {}).get("setup") or [])
        if setup:
            atomic_write(Path(run_dir) / SETUP_FILE, setup_script(setup, Path(run_dir)), mode=0o600)

    def scrub(self, text: str) -> str:
        """`text` (a traceback, a setup line's output) fit for a log or the store: this job's
        secrets (config, store and tracking URLs) and secret-looking assignments hidden."""
        from awm_platform.redaction import scrub, secret_values

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
