"""`awm eval`: checkpoint evaluations recorded in the platform store.

Scheduled evaluation of checkpoints arrives with its own issue; what exists now reads the
`evaluations` table that benchmarks and runs write (one row per checkpoint x benchmark x eval
spec)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from awm_platform.cli.common import fail

app = typer.Typer(help="Checkpoint evaluations (GenEval, OCR, PickScore) recorded in the platform store.",
                  no_args_is_help=True)


@app.command("list")
def eval_list(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's checkpoints.")] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", help="Only this benchmark.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON records instead of a table.")] = False,
    db: Annotated[str | None, typer.Option("--db", help="Platform DB URL (default: $AWM_HOME/awm.db).")] = None,
) -> None:
    """List evaluations: run, step, benchmark, version, status, score with its 95% CI, samples."""
    from awm_platform.store import NotFoundError, Store

    store = Store.default(db)
    try:
        evals = store.list_evaluations(run_name=run, benchmark=benchmark)
        runs_by_id = {r.id: r.name for r in store.list_runs()}
        ckpts = {c.id: c for name in set(runs_by_id.values()) for c in store.list_checkpoints(name)}
    except NotFoundError as exc:
        fail(str(exc))
    finally:
        store.close()
    records = []
    for ev in evals:
        ckpt = ckpts[ev.checkpoint_id]
        records.append({"run": runs_by_id[ckpt.run_id], "step": ckpt.step, "benchmark": ev.benchmark,
                        "version": ev.benchmark_version, "spec_hash": ev.spec_hash, "status": ev.status,
                        "score": ev.score, "ci_low": ev.ci_low, "ci_high": ev.ci_high, "n": ev.num_samples})
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "step", "benchmark", "version", "status", "score", "95% CI", "n")
    for r in records:
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        ci = "" if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        table.add_row(r["run"], str(r["step"]), r["benchmark"], r["version"], r["status"], score, ci, str(r["n"]))
    Console().print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")
