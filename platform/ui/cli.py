"""`awm ui`: start the Streamlit leaderboard (`platform/ui/app.py`) on this machine.

Validates first, then replaces this process with `python -m streamlit run app.py` (same pid: a
Ctrl-C or a `kill` reaches Streamlit itself). The store URL, the tracking URI and the extra image
roots travel in environment variables, never in argv: `ps` shows every user's argv, and a
PostgreSQL URL holds a password. The server binds 127.0.0.1 unless `--host` says otherwise
(anyone who can reach the port can read every result).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from awm_platform.cli.common import fail
from awm_platform.paths import default_mlflow_tracking_uri, default_platform_db_url
from awm_platform.redaction import redact_text, redact_url

#: environment variables `app.py` reads (the only way the command's options reach the app)
ENV_DB_URL = "AWM_UI_DB_URL"
ENV_TRACKING_URI = "AWM_UI_TRACKING_URI"
ENV_IMAGE_ROOTS = "AWM_UI_IMAGE_ROOTS"  # os.pathsep-joined absolute folders
APP_FILE = Path(__file__).resolve().parent / "app.py"

def streamlit_argv(host: str, port: int) -> list[str]:
    """The command `awm ui` runs (secrets never appear in it)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.headless", "true",
            "--server.address", host, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false", "--client.toolbarMode", "minimal"]


def _check_bind(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        fail(f"--port {port}: expected a TCP port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail(f"--host {host!r}: not an address of this machine ({exc.strerror})")
    family, _type, _proto, _name, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(addr)
        except OSError as exc:
            why = "already in use (another `awm ui`? pick another --port)" if exc.errno == 98 else exc.strerror
            fail(f"cannot listen on {host}:{port}: {why}")


def _check_store(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from awm_platform.store import Store, StoreError

    db = make_url(url).database if url.startswith("sqlite") else None
    if db is not None and db != ":memory:" and not Path(db).is_file():
        fail(f"no platform store at {db}: nothing has run with this $AWM_HOME yet (the quickstart, `awm run`), "
             "or pass --db URL")
    read_only = db is not None and not os.access(db, os.W_OK)
    try:
        with Store(url, upgrade=False, read_only=read_only) as store:
            current, head = store.current_revision(), store.head_revision()
    except StoreError as exc:  # the message names the store by its redacted URL
        fail(str(exc))
    except OperationalError as exc:  # the first connection (PostgreSQL connects lazily): server down, bad login
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        fail(f"cannot open the platform store {redact_url(url)}: {redact_text(reason[0] if reason else '')[0]}")
    if current != head:
        fail(f"the store {store.redacted_url} is at schema revision {current or 'none'}, this awm reads {head}: "
             f"run `awm db upgrade --url URL` first")


def ui(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only; "
                                                     "0.0.0.0 opens it to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8501,
    db: Annotated[str | None, typer.Option("--db", help="Platform store URL (default: $AWM_HOME's SQLite "
                                                        "store).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI for the links to runs (default: $AWM_HOME's).")] = None,
    image_root: Annotated[list[Path] | None, typer.Option(
        "--image-root", help="Extra folder images may be served from (repeatable); $AWM_HOME/evals and the "
                             "store's evaluation folders always are.")] = None,
) -> None:
    """Open the leaderboard: checkpoints x benchmarks with CIs, comparisons, galleries, sweeps.

    Example: awm ui --port 8501   (then browse http://127.0.0.1:8501)"""
    _check_bind(host, port)
    roots: list[str] = []
    for root in image_root or []:
        if not root.is_dir():
            fail(f"--image-root {root}: not a folder")
        roots.append(str(root.resolve()))
    url = db or default_platform_db_url()
    _check_store(url)
    env = dict(os.environ)
    env[ENV_DB_URL] = url
    env[ENV_TRACKING_URI] = tracking_uri or env.get("MLFLOW_TRACKING_URI") or default_mlflow_tracking_uri()
    env[ENV_IMAGE_ROOTS] = os.pathsep.join(roots)
    typer.echo(f"awm ui: http://{host}:{port} (Ctrl-C stops it)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = streamlit_argv(host, port)
    os.execve(argv[0], argv, env)


def register(root: typer.Typer) -> None:
    root.command("ui")(ui)
