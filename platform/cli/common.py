"""Small pieces shared by every part's CLI commands (kept import-light)."""

from __future__ import annotations

import sys
from typing import Annotated, NoReturn

import typer

from trainers.awm.process import EXIT_BAD_INPUT

OverridesOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, e.g. --set train.beta=0.003 (repeatable)."),
]

# Exit codes (README "Exit codes"): 0 ok; 1 a failed operation or check; 2 bad input: an invalid
# config or path, an unknown run, an unusable $AWM_HOME or storage.url, a job the scheduler rejects.
# EXIT_BAD_INPUT is defined once, with the trainer's exit codes (trainers.awm.process): `awm train`
# exits 2 for an invalid config as every other command does.

# Errors that mean "the input or the environment is wrong", by module and class name: the
# last-resort handler of `awm` (cli.main.main) prints them as one line instead of a traceback.
# Looked up in sys.modules, so checking costs no import (an unimported module raised nothing).
USER_ERRORS = {
    "awm_platform.paths": "PlatformHomeError",
    "awm_platform.config": "ConfigError",
    "awm_platform.store.store": "StoreError",
    "awm_platform.runner.api": "SubmitError",
    "awm_platform.sweeps.orchestrator": "SweepError",
    "benchmarks.base": "BenchmarkError",
}


def is_user_error(exc: BaseException) -> bool:
    for module, name in USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a clear error on stderr and exit (2 = bad input, the config-validation convention)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
