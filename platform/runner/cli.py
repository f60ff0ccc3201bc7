"""`awm submit | status | cancel | rerun | logs` (mounted by awm_platform.cli.main).

Only typer and the standard library at import time: the runner, submitit, the store and
rich are imported inside the commands (`awm --help` stays fast)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from awm_platform.cli.common import OverridesOpt, fail

ClusterOpt = Annotated[
    Literal["local", "debug", "slurm"] | None,  # = backends.CLUSTERS (tests check); a choice list in --help
    typer.Option(
        "--cluster",
        "-c",
        help="Where to run (default: launcher.cluster). Always passed explicitly to submitit.",
    ),
]


def _store() -> Any:
    from awm_platform.store import Store

    return Store.default()


def _store_for_reading() -> tuple[Any, bool]:
    """(store or None, writable) for commands that only read: no home, DB or migration is
    created; on a home this process cannot write, the DB is opened read-only."""
    from awm_platform import paths
    from awm_platform.store import Store

    db = paths.platform_db_path(create=False)
    if not db.is_file():
        return None, False
    writable = paths.is_writable_dir(db.parent)
    return Store(f"sqlite:///{db}", read_only=not writable), writable


def _get_run(store: Any, name: str) -> Any:
    from awm_platform.store.store import NotFoundError

    try:
        return store.get_run(name)
    except NotFoundError as exc:
        fail(str(exc))


def submit(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML).")],
    set_: OverridesOpt = None,
    cluster: ClusterOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sbatch script and launch command; submit nothing.")
    ] = False,
) -> None:
    """Submit a training run; prints the run name (details on stderr)."""
    from awm_platform.config import ConfigError, load_config
    from awm_platform.runner.api import SubmitError, submit_run
    from awm_platform.runner.launch import format_command
    from awm_platform.store.store import StoreError

    try:
        cfg = load_config(config, set_ or [])
        sub = submit_run(cfg, cluster=cluster, dry_run=dry_run)
    except (ConfigError, SubmitError, StoreError, ValueError) as exc:
        fail(str(exc))
    if dry_run:
        if sub.sbatch_script is not None:
            typer.echo("# ---- sbatch script ----")
            typer.echo(sub.sbatch_script.rstrip("\n"))
        typer.echo("# ---- launch command (one per node, run by the job controller) ----")
        typer.echo(format_command(sub.launch_command))
        return
    typer.echo(sub.name)
    typer.echo(f"submitted {sub.name} to {sub.cluster} as job {sub.job_id}; run dir {sub.run_dir}", err=True)


def status(
    run: Annotated[str | None, typer.Argument(help="One run (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of run records (one element with RUN) "
                                                        "instead of a table.")] = False,
) -> None:
    """Show run states (polls the schedulers once for all active runs). Only reads a home it cannot
    write (states as last recorded) and creates no store where there is none."""
    from awm_platform.runner.state import refresh_states

    store, writable = _store_for_reading()
    if store is None and run is not None:
        from awm_platform.paths import awm_home

        fail(f"no run named {run!r}: no platform store in {awm_home(create=False)} yet")
    if store is not None and run is not None:
        _get_run(store, run)
    if writable:
        refresh_states(store, [run] if run else None)
    elif store is not None:
        typer.echo("note: AWM_HOME is read-only: run states as last recorded (not refreshed)", err=True)
    runs = [] if store is None else [store.get_run(run)] if run else store.list_runs()
    if writable:
        _replay_spools(runs)
    records = [
        {
            "run": r.name,
            "status": r.status,
            "cluster": r.cluster,
            "job_ids": list(r.job_ids),
            "hosts": list(r.hosts),
            "gpu_hours": round(float(r.gpu_hours or 0.0), 6),
            "mlflow_run_id": r.mlflow_run_id,
            "run_dir": r.output_dir,
            "log_dir": r.log_dir,
            "sweep": r.sweep_name,
            "created_at": r.created_at.isoformat() if r.created_at else None,
            "started_at": r.started_at.isoformat() if r.started_at else None,
            "ended_at": r.ended_at.isoformat() if r.ended_at else None,
            "error": r.error,
        }
        for r in runs
    ]
    if as_json:  # always a list: the same shape with and without RUN
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "status", "cluster", "job ids", "GPU-h", "started", "MLflow run")
    for rec in records:
        table.add_row(
            rec["run"],
            rec["status"],
            rec["cluster"] or "",
            ",".join(rec["job_ids"]),
            f"{rec['gpu_hours']:.3f}",
            (rec["started_at"] or "")[:19],
            rec["mlflow_run_id"] or "",
        )
    Console().print(table)
    for rec in records:  # why a run failed (e.g. which launcher.setup line): all of it for one run
        if rec["status"] == "FAILED" and rec["error"]:
            typer.echo(f"{rec['run']}: " + (rec["error"] if run else rec["error"].strip().splitlines()[0]))


def _replay_spools(runs: list[Any]) -> None:
    """A job that ended while MLflow was unreachable left its metrics/artifacts in
    `run_dir/mlflow_spool`; send them now (a live job replays its own spool)."""
    from awm_platform.runner.tracking import replay_spool, spool_pending
    from awm_platform.store import TERMINAL_STATUSES

    for r in runs:
        if r.status in TERMINAL_STATUSES and spool_pending(Path(r.output_dir)):
            try:
                ok = replay_spool(Path(r.output_dir))
            except Exception as exc:  # noqa: BLE001 - status must still print; the spool is kept
                ok, why = False, f"{type(exc).__name__}: {exc}"
            else:
                why = "MLflow unreachable"
            typer.echo(f"{r.name}: sent its MLflow spool" if ok else f"{r.name}: MLflow spool kept ({why})",
                       err=True)


def cancel(run: Annotated[str, typer.Argument(help="Run name.")]) -> None:
    """Cancel a run's job (it checkpoints first) and wait until it is gone."""
    from awm_platform.runner.state import cancel_run
    from awm_platform.store import TERMINAL_STATUSES

    store = _store()
    r = _get_run(store, run)
    if r.status in TERMINAL_STATUSES:
        fail(f"run {run!r} is already {r.status}", code=1)
    cancel_run(run, store)
    typer.echo(f"cancelled {run}")


def rerun(
    run: Annotated[str, typer.Argument(help="Run to re-submit.")],
    set_: OverridesOpt = None,
    cluster: ClusterOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the SAME run (failed/cancelled) from its "
            "latest checkpoint instead of a new NAME-rN run.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {run, rerun_of, cluster, job_id, run_dir} as "
                                                        "JSON instead of the run name.")] = False,
) -> None:
    """Re-submit a run from its capsule as NAME-r1, NAME-r2, ... (or --resume the same run)."""
    from awm_platform.config import ConfigError
    from awm_platform.runner.api import SubmitError
    from awm_platform.runner.api import rerun as do_rerun

    store = _store()
    _get_run(store, run)
    try:
        sub = do_rerun(run, set_ or [], store, cluster=cluster, resume=resume)
    except (ConfigError, SubmitError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"run": sub.name, "rerun_of": run, "cluster": sub.cluster, "job_id": sub.job_id,
                               "run_dir": str(sub.run_dir)}))
    else:
        typer.echo(sub.name)
    typer.echo(f"submitted {sub.name} to {sub.cluster} as job {sub.job_id}", err=True)


def _log_files(folder: Path, job_ids: list[str]) -> list[Path]:
    files: list[Path] = []
    for jid in job_ids:
        for suffix in ("out", "err"):
            files += sorted(folder.glob(f"{jid}_*_log.{suffix}"))
    return files


def logs(
    run: Annotated[str, typer.Argument(help="Run name.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")] = False,
) -> None:
    """Print the run's job logs (submitit's `<job>_<task>_log.{out,err}` in run_dir/submitit)."""
    from awm_platform.runner.state import refresh_states
    from awm_platform.store import TERMINAL_STATUSES

    store = _store()
    r = _get_run(store, run)
    folder = Path(r.log_dir or Path(r.output_dir) / "submitit")
    offsets: dict[Path, int] = {}
    last: dict[str, Any] = {"file": None, "newline": True}  # tail -f style: a header whenever the file changes

    def dump() -> int:
        printed = 0
        for f in _log_files(folder, list(store.get_run(run).job_ids)):
            try:
                with open(f, "rb") as fh:
                    fh.seek(offsets.get(f, 0))
                    data = fh.read()
            except OSError:
                continue
            if data:
                if last["file"] != f:
                    typer.echo(("" if last["newline"] else "\n") + f"==> {f} <==")
                    last["file"] = f
                text = data.decode(errors="replace")
                sys.stdout.write(text)
                sys.stdout.flush()
                last["newline"] = text.endswith("\n")
                printed += len(data)
            offsets[f] = offsets.get(f, 0) + len(data)
        return printed

    from awm_platform.runner.launch import setup_failure

    failure = setup_failure(Path(r.output_dir))  # the job never started: its setup line failed
    if failure:
        typer.echo(f"==> {Path(r.output_dir) / 'setup'} <==\n{failure}")
    dump()
    if not offsets and not follow and not failure:
        fail(f"no log files for run {run!r} in {folder} yet", code=1)
    while follow:
        if refresh_states(store, [run]).get(run) in TERMINAL_STATUSES:
            # the job writes its last lines after reporting the status: drain until its files stay
            # quiet and (local) its process is gone, at most 30 s; then exit 0
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if dump() == 0 and not _job_alive(store.get_run(run)):
                    break
            break
        time.sleep(1.0)
        dump()


def _job_alive(r: Any) -> bool:
    from awm_platform.runner.backends import CLUSTERS, backend_for

    return r.cluster in CLUSTERS and backend_for(r.cluster).job_alive(r)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("status")(status)
    app.command("cancel")(cancel)
    app.command("rerun")(rerun)
    app.command("logs")(logs)


__all__ = ["register"]
