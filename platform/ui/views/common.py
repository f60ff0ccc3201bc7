"""What every page shares: the store (opened once per server), cached reads keyed on the store's
change marker, links, number formats and the image roots."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import streamlit as st
from sqlalchemy.engine import make_url

from awm_platform.evals import images
from awm_platform.paths import default_platform_db_url
from awm_platform.redaction import redact_text, redact_url
from awm_platform.store import Store
from awm_platform.ui import data, media
from awm_platform.ui.cli import ENV_DB_URL, ENV_IMAGE_ROOTS, ENV_TRACKING_URI
from awm_platform.ui.views import state

SCHEDULE_HINT = "awm eval schedule --once --benchmarks ocr --wait"


@dataclass
class Ctx:
    """One page render: the open store, where it is, what the URL asked for."""

    store: Store
    url: str
    tracking_uri: str | None
    extra_roots: tuple[Path, ...]
    marker: str
    page: state.PageState

    def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(store, *args)` from `awm_platform.ui.data`, cached until the store changes."""
        return _cached_read(self.url, self.marker, fn.__name__, repr(args), args)

    def roots(self, images_dirs: list[str | None]) -> tuple[Path, ...]:
        return media.allowed_roots(extra=self.extra_roots, images_dirs=images_dirs, home_evals=images.evals_root())


def _sqlite_read_only(url: str) -> bool:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - Store() reports a bad URL itself, redacted
        return False
    db = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return bool(db) and db != ":memory:" and Path(db).exists() and not os.access(db, os.W_OK)


@st.cache_resource(show_spinner=False)
def open_store(url: str) -> Store:
    """One store (connection pool) per server process and URL; never migrated or written by the UI."""
    return Store(url, upgrade=False, read_only=_sqlite_read_only(url))


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_read(url: str, marker: str, fn: str, key: str, _args: tuple[Any, ...]) -> Any:
    # `key` (the repr of the arguments) is what the cache hashes; `_args` are passed through unhashed
    return getattr(data, fn)(open_store(url), *_args)


def settings() -> tuple[str, str | None, tuple[Path, ...]]:
    """(store URL, tracking URI, extra image roots) as `awm ui` passed them (environment)."""
    url = os.environ.get(ENV_DB_URL) or default_platform_db_url()
    tracking = os.environ.get(ENV_TRACKING_URI) or None
    roots = tuple(Path(p) for p in os.environ.get(ENV_IMAGE_ROOTS, "").split(os.pathsep) if p)
    return url, tracking, roots


def safe(text: Any) -> str:
    """Free text from the store (errors, paths) fit to show: any credential hidden."""
    return redact_text(str(text))[0]


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def fmt_ci(lo: float | None, hi: float | None, digits: int = 3) -> str:
    if lo is None or hi is None:
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_date(d: datetime | None) -> str:
    return "–" if d is None else d.strftime("%Y-%m-%d %H:%M")


def row_label(row: data.LeaderboardRow) -> str:
    if row.is_base:
        return f"base model {row.base_model or row.target}"
    where = f"{row.run_name}@{row.step}" if row.run_name else row.target
    return where if row.weights == "policy" else f"{where} ({row.weights})"


def mlflow_link(tracking_uri: str | None, run_id: str | None) -> str | None:
    """The MLflow UI's page of a run when the tracking URI is a server (http/https); else None."""
    if not tracking_uri or not run_id or not tracking_uri.startswith(("http://", "https://")):
        return None
    # no credentials in a link (the browser asks for them): redacted first, then the userinfo dropped
    parts = urlsplit(redact_url(tracking_uri))
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")) + f"/#/runs/{run_id}"


def mlflow_hint(tracking_uri: str | None) -> str:
    """How to open MLflow's UI on a local tracking store."""
    if tracking_uri and not tracking_uri.startswith(("http://", "https://")):
        return f"mlflow ui --backend-store-uri {redact_url(tracking_uri)}"
    return "mlflow ui"


def empty_state() -> None:
    st.info("No benchmark evaluation in this store yet. Evaluate the checkpoints of your runs with:")
    st.code(SCHEDULE_HINT, language="bash")
