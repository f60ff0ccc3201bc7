"""Where embedded platform state lives: everything under one home directory.

`$AWM_HOME` (default `./.awm`) holds the platform DB, the MLflow store, the Optuna
storage, run directories and submitit logs. Pointing `AWM_HOME` at an empty directory
gives a clean, isolated platform (the tests rely on this).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

AWM_HOME_ENV = "AWM_HOME"
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def awm_home(create: bool = True) -> Path:
    home = Path(os.environ.get(AWM_HOME_ENV) or "./.awm").expanduser().resolve()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def validate_run_name(name: str) -> str:
    """Run names become directory names, MLflow run names and SLURM job names."""
    if not _RUN_NAME_RE.match(name):
        raise ValueError(
            f"invalid run name {name!r}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return name


def runs_dir() -> Path:
    return awm_home() / "runs"


def run_dir(name: str) -> Path:
    return runs_dir() / validate_run_name(name)


def default_platform_db_url() -> str:
    return f"sqlite:///{awm_home() / 'awm.db'}"


def default_mlflow_tracking_uri() -> str:
    return f"sqlite:///{awm_home() / 'mlflow.db'}"


def default_mlflow_artifact_root() -> Path:
    return awm_home() / "mlartifacts"


def default_optuna_storage_url() -> str:
    return f"sqlite:///{awm_home() / 'optuna.db'}"
