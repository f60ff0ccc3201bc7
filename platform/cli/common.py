"""Small pieces shared by every part's CLI commands (kept import-light)."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

OverridesOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Dotted override, e.g. --set train.beta=0.003 (repeatable)."),
]

# Exit codes: 0 ok, 1 a failed operation/check, 2 bad input (invalid config, unknown run, ...).
EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a clear error on stderr and exit (2 = bad input, the config-validation convention)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
