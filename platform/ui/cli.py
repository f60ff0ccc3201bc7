"""`awm ui`: the Streamlit leaderboard's entry point.

The leaderboard arrives with its own issue; until then this group says so plainly instead of
pretending, and points at what already shows results."""

from __future__ import annotations

import typer

from awm_platform.cli.common import fail

app = typer.Typer(help="The results leaderboard (Streamlit). Not part of this release yet.",
                  invoke_without_command=True)


@app.callback()
def ui(ctx: typer.Context) -> None:
    """Open the leaderboard (not available yet)."""
    if ctx.invoked_subcommand is None:
        fail("the Streamlit leaderboard is not part of this release yet; meanwhile use `awm status`, "
             "`awm sweep status STUDY`, `awm eval list`, or the MLflow UI "
             "(`mlflow ui --backend-store-uri sqlite:///$AWM_HOME/mlflow.db`)", code=1)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ui")
