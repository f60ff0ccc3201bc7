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


class PlatformHomeError(RuntimeError):
    """`$AWM_HOME` cannot hold platform state (a file, read-only, not creatable); the message says which."""


def awm_home(create: bool = True) -> Path:
    """The platform home. `create=True` (a command that writes state): make it and insist that it is
    a writable directory. `create=False` (read-only uses, dry runs): just the path."""
    home = Path(os.environ.get(AWM_HOME_ENV) or "./.awm").expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise PlatformHomeError(f"AWM_HOME={home} is not a directory; point AWM_HOME at a directory")
    if create:
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlatformHomeError(f"cannot create AWM_HOME={home}: {exc.strerror or exc}") from None
        if not is_writable_dir(home):
            raise PlatformHomeError(f"AWM_HOME={home} is read-only; this command writes platform state there "
                                    "(point AWM_HOME at a writable directory)")
    return home


def is_writable_dir(path: Path) -> bool:
    """Writable for this process: permissions (not enough for root) and a read-only mount (enough)."""
    try:
        return os.access(path, os.W_OK | os.X_OK) and not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return False


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


def platform_db_path(create: bool = True) -> Path:
    """The embedded platform DB; `create=False` for readers that must not create the home."""
    return awm_home(create) / "awm.db"


def default_platform_db_url() -> str:
    return f"sqlite:///{platform_db_path()}"


def default_mlflow_tracking_uri() -> str:
    return f"sqlite:///{awm_home() / 'mlflow.db'}"


def default_mlflow_artifact_root() -> Path:
    return awm_home() / "mlartifacts"


def default_optuna_storage_url() -> str:
    return f"sqlite:///{awm_home() / 'optuna.db'}"


# Everything the platform creates may hold configuration (DBs, run dirs, capsules, logs, spools):
# files 0640 / directories 0750 at most, never world-readable. Entry points (the CLI, the job
# controller, the trainer process) set it once; third-party writers (SQLite, MLflow, Optuna,
# submitit) inherit it.
PRIVATE_UMASK = 0o027


def restrict_umask() -> None:
    """Add PRIVATE_UMASK to the process umask (only tightens: a stricter 077 stays)."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
