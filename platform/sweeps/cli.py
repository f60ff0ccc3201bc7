"""`awm sweep ...`: hyper-parameter sweeps (Optuna) over training runs.

Import-light on purpose: optuna, mlflow, sqlalchemy and the runner are imported inside the
commands, so `awm --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from awm_platform.cli.common import OverridesOpt, fail

StudyArg = Annotated[str, typer.Argument(help="Study name (defaults at start to the config's `name`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DetachOpt = Annotated[bool, typer.Option("--detach", help="Run the orchestrator in the background "
                                                          "(pid and log in $AWM_HOME/sweeps/<study>/).")]


def register(app: typer.Typer) -> None:
    sweep_app = typer.Typer(help="Hyper-parameter sweeps: one training run per Optuna trial.", no_args_is_help=True)
    app.add_typer(sweep_app, name="sweep")

    @sweep_app.command("start")
    def start_cmd(
        config: Annotated[Path, typer.Argument(help="Experiment config with a `sweep:` section.")],
        cluster: Annotated[Literal["local", "debug", "slurm"] | None, typer.Option(
            "--cluster", help="Where the trials run (default: launcher.cluster).")] = None,
        set_: OverridesOpt = None,
        study: Annotated[str | None, typer.Option("--study", help="Study name (default: the config's name).")] = None,
        detach: DetachOpt = False,
        as_json: Annotated[bool, typer.Option("--json", help="Progress on stderr; at the end one JSON object on "
                                                             "stdout: `sweep status --json` of the study, or "
                                                             "{study, pid, log} with --detach.")] = False,
    ) -> None:
        """Create the study and run it: blocks until every trial finished (Ctrl-C leaves the jobs
        running; `awm sweep resume` adopts them), or returns at once with --detach."""
        from awm_platform.config import ConfigError
        from awm_platform.sweeps import commands
        from awm_platform.sweeps.orchestrator import SweepError

        try:
            ctx = commands.prepare(config, set_, cluster=cluster, study=study)
        except (ConfigError, SweepError) as exc:
            fail(str(exc))
        echo = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
        try:
            out = commands.start(ctx, detach=detach, echo=echo, install_signal_handlers=True)
        except SweepError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            _interrupted(ctx.study_name)
        if as_json:
            _finish_json(ctx, out)
        else:
            _finish(ctx, out)

    @sweep_app.command("resume")
    def resume_cmd(study: StudyArg, detach: DetachOpt = False) -> None:
        """Re-attach to a study: adopts trials still pending/running in the cluster (no duplicate
        jobs), re-runs trials cancelled by `stop`, and continues until n_trials are finished."""
        from awm_platform.store.store import NotFoundError
        from awm_platform.sweeps import commands
        from awm_platform.sweeps.orchestrator import SweepContext, SweepError

        try:
            out = commands.resume(study, detach=detach, echo=typer.echo, install_signal_handlers=True)
        except (SweepError, NotFoundError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            _interrupted(study)
        from awm_platform.store import Store

        _finish(SweepContext.load(study, store=Store.default()), out)

    @sweep_app.command("stop")
    def stop_cmd(study: StudyArg) -> None:
        """Cancel the study's in-flight jobs cleanly and mark the sweep STOPPED."""
        from awm_platform.store.store import NotFoundError
        from awm_platform.sweeps import commands
        from awm_platform.sweeps.orchestrator import SweepError

        try:
            n = commands.stop(study, echo=typer.echo)
        except (SweepError, NotFoundError) as exc:
            fail(str(exc))
        typer.echo(f"sweep {study} stopped" + (f" ({n} in-flight trials cancelled)" if n else ""))

    @sweep_app.command("status")
    def status_cmd(study: StudyArg, as_json: JsonOpt = False) -> None:
        """Table of trials: number, state, params, objective, run, job, GPU-hours."""
        from awm_platform.store.store import NotFoundError
        from awm_platform.sweeps import commands
        from awm_platform.sweeps.orchestrator import SweepError

        try:
            data = commands.status(study)
        except (SweepError, NotFoundError) as exc:
            fail(str(exc))
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
            return
        _print_status(data)


def _interrupted(study: str) -> None:
    typer.echo(f"\norchestrator interrupted; the running trials keep running. Re-attach with "
               f"`awm sweep resume {study}`, or cancel them with `awm sweep stop {study}`.", err=True)
    raise typer.Exit(130)


def _finish(ctx: Any, out: Any) -> None:
    from awm_platform.sweeps import commands

    if isinstance(out, int):
        d = ctx.state_dir
        typer.echo(f"orchestrator running in the background: pid {out}, log {d / 'orchestrator.log'}")
        typer.echo(f"follow it with `awm sweep status {ctx.study_name}`; stop it with `awm sweep stop {ctx.study_name}`")
        return
    for line in commands.best_trial_report(ctx, out):
        typer.echo(line)
    if out.status != "COMPLETED":
        raise typer.Exit(1)


def _finish_json(ctx: Any, out: Any) -> None:
    from awm_platform.sweeps import commands

    if isinstance(out, int):
        typer.echo(json.dumps({"study": ctx.study_name, "pid": out, "log": str(ctx.state_dir / "orchestrator.log")}))
        return
    for line in commands.best_trial_report(ctx, out):
        typer.echo(line, err=True)
    typer.echo(json.dumps(commands.status(ctx.study_name), default=str))
    if out.status != "COMPLETED":
        raise typer.Exit(1)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _print_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    orch = data["orchestrator"]
    orch_s = f"pid {orch['pid']} on {orch['host']}" if orch else "not running"
    head = (f"study {data['study']} [{data['status']}] - objective {', '.join(data['objective'])} "
            f"({', '.join(data['directions'])}), {data['n_trials']} trials, parallelism {data['parallelism']}, "
            f"cluster {data['cluster']}, storage {data['storage']}, GPU-hours {data['gpu_hours']:.3f}, "
            f"orchestrator: {orch_s}")
    table = Table(title=head, title_justify="left")
    for col in ("trial", "state", "params", "objective", "run", "run status", "job", "GPU-h"):
        table.add_column(col)
    for r in data["trials"]:
        state = r["state"] + (f" (retry of t{r['retry_of']})" if r["retry_of"] is not None else "")
        table.add_row(str(r["number"]), state, ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items()),
                      ", ".join(_fmt(v) for v in r["values"] or []), _fmt(r["run"]), _fmt(r["run_status"]),
                      _fmt(r["job"]), f"{r['gpu_hours']:.3f}")
    Console(width=200).print(table)
