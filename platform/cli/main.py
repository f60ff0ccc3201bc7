"""`awm`: the platform's command line.

Start-up must stay instant (`awm --help` well under 1 s): this module and every sub-app it
mounts import only typer and the standard library at top level; torch, diffusers, mlflow,
optuna, sqlalchemy and pandas are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any

import typer

from awm_platform import services
from awm_platform.cli.common import OverridesOpt, fail, is_user_error
from awm_platform.paths import restrict_umask
from trainers.awm.process import EXIT_BAD_INPUT

app = typer.Typer(
    name="awm",
    help="AWM platform: train, sweep, evaluate and compare RL fine-tuning runs of text-to-image flow models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate and inspect experiment configs.", no_args_is_help=True)
db_app = typer.Typer(help="The platform store (runs, checkpoints, evaluations, sweeps).", no_args_is_help=True)
services_app = typer.Typer(help="Local SLURM + PostgreSQL for trying the platform and for tests.",
                           no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(services_app, name="services")


# ----------------------------------------------------------------------- version ----
def _platform_version() -> str:
    from importlib.metadata import PackageNotFoundError  # ~30 ms: only `awm version` pays it
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("awm-platform")
    except PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_platform_version())
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the platform version and exit.")] = False,
) -> None:
    pass


@app.command()
def version() -> None:
    """Print the platform version."""
    typer.echo(_platform_version())


# ------------------------------------------------------------------------ config ----
WorldSizeOpt = Annotated[int | None, typer.Option("--world-size", "-w", min=1,
                                                  help="Derive per-process sizes for this many processes "
                                                       "(default: launcher.nodes x launcher.gpus_per_node).")]


def _load(path: Path, overrides: list[str] | None, world_size: int | None = None) -> Any:
    from awm_platform.config import ConfigError, load_config

    try:
        return load_config(path, overrides or [], world_size=world_size)
    except ConfigError as exc:
        fail(str(exc))


@config_app.command("validate")
def config_validate(path: Path, set_: OverridesOpt = None, world_size: WorldSizeOpt = None) -> None:
    """Exit 0 if CONFIG is valid (with its derived topology); exit 2 naming the offending key if not."""
    cfg = _load(path, set_, world_size)
    topo = cfg.topology(world_size)
    typer.echo(f"ok: {path} (run '{cfg.name}', {topo.images_per_update} images per update, "
               f"world size {topo.world_size})")


@config_app.command("show")
def config_show(path: Path, set_: OverridesOpt = None, world_size: WorldSizeOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False) -> None:
    """Print the resolved config: every default filled in, derived values, secrets redacted, hash."""
    import yaml

    from awm_platform.config import config_hash, resolved_config

    cfg = _load(path, set_, world_size)
    data = {"config_hash": config_hash(cfg), **resolved_config(cfg, world_size)}
    typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------------------------------------------- db ----
DbUrlOpt = Annotated[str | None, typer.Option("--url", help="Database URL (default: sqlite:///$AWM_HOME/awm.db).")]


@db_app.command("upgrade")
def db_upgrade(url: DbUrlOpt = None) -> None:
    """Create or migrate the platform store to the latest schema (Alembic)."""
    from awm_platform.store import Store

    store = Store.default(url)
    typer.echo(f"platform store at {store.redacted_url}: schema revision {store.current_revision()}")


@db_app.command("current")
def db_current(url: DbUrlOpt = None) -> None:
    """Print the store's schema revision and the latest one this version knows."""
    from awm_platform.store import Store

    store = Store.default(url) if url else Store.default()
    typer.echo(f"current={store.current_revision()} head={store.head_revision()}")


# ---------------------------------------------------------------------- services ----
Which = Annotated[str, typer.Argument(help="slurm, postgres or all")]


def _services_call(fn_name: str, which: str) -> Any:
    if which not in ("slurm", "postgres", "all"):
        fail(f"unknown service {which!r}: expected slurm, postgres or all")
    try:
        return getattr(services, fn_name)(which)
    except services.ServicesError as exc:
        fail(str(exc))


@services_app.command("up")
def services_up(which: Which = "all",
                show_env: Annotated[bool, typer.Option("--env", help="Also print the KEY=VALUE env (URLs with "
                                                       "the PostgreSQL password) to use them.")] = False) -> None:
    """Install (if needed) and start the local services: one progress line per phase (on stderr), then
    the status table."""
    if which not in ("slurm", "postgres", "all"):
        fail(f"unknown service {which!r}: expected slurm, postgres or all")
    try:
        env = services.services_up(which, progress=lambda line: typer.echo(line, err=True))
        status = services.services_status(which)
    except services.ServicesError as exc:
        fail(str(exc))
    for k, v in status.items():
        if k in services.SERVICES:  # `env` holds passwords: only with --env
            typer.echo(f"{k}: {v}")
    if show_env:
        for k, v in env.items():
            typer.echo(f"{k}={v}")


@services_app.command("down")
def services_down(which: Which = "all",
                  purge: Annotated[bool, typer.Option("--purge", help="Also delete their data (job state, "
                                                      "accounting DB, PostgreSQL data).")] = False) -> None:
    """Stop exactly the service processes `up` started (by PID)."""
    if which not in ("slurm", "postgres", "all"):
        fail(f"unknown service {which!r}: expected slurm, postgres or all")
    try:
        services.services_down(which, purge=purge)
    except services.ServicesError as exc:
        fail(str(exc))
    typer.echo(f"stopped: {which}" + (" (data purged)" if purge else ""))


@services_app.command("status")
def services_status(which: Which = "all") -> None:
    """Show which local services are running (exit 1 if any requested one is down)."""
    status = _services_call("services_status", which)
    shown = {k: v for k, v in status.items() if k in ("slurm", "postgres")}  # `env` holds passwords
    for k, v in shown.items():
        typer.echo(f"{k}: {v}")
    if not all(str(v).startswith("up") for v in shown.values()):
        raise typer.Exit(1)


def _mount_parts() -> None:
    """Mount the commands owned by the other parts (trainer, runner, sweeps, benchmarks).
    A part exposes `register(app)` (top-level commands) or a Typer `app` mounted as a group;
    either way it keeps its own heavy imports inside the commands."""
    parts = {"awm_platform.runner.train_cli": None, "trainers.awm.cli": None, "awm_platform.runner.cli": None,
             "awm_platform.sweeps.cli": "sweep", "benchmarks.cli": "bench", "awm_platform.evals.cli": None,
             "awm_platform.ui.cli": None}
    for module, group in parts.items():
        try:
            mod = import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if hasattr(mod, "register"):
            mod.register(app)
        elif group is not None and hasattr(mod, "app"):
            app.add_typer(mod.app, name=group)


_mount_parts()


def main() -> None:
    restrict_umask()  # nothing the platform writes is world-readable (docs/runner.md, "Secrets")
    # Commands turn the errors they expect into one line (`fail`); this is the last resort for an
    # input or environment error raised where no command expected it (an unusable $AWM_HOME, an
    # unreachable store): one line and exit 2 instead of a traceback.
    try:
        app()
    except Exception as exc:
        if not is_user_error(exc):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
