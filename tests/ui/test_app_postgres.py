"""The app on a PostgreSQL store (the clusters' case): the same pages, and the server's real
password never on a page."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from awm_platform.evals import images
from awm_platform.store import Store
from tests.ui.conftest import BENCHMARKS, Seeded, _Seeder, page_text

pytestmark = pytest.mark.postgres


def test_leaderboard_and_checkpoint_on_postgresql_never_show_its_password(
        fresh_postgres_db: str, open_page: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    password = make_url(fresh_postgres_db).password
    assert password and len(password) >= 8
    out = Seeded(home=tmp_path, url=fresh_postgres_db, optuna_url="", evals_root=images.evals_root(tmp_path))
    with Store(fresh_postgres_db) as store:
        seeder = _Seeder(store, out)
        store.create_run(name="pg-run", config_hash="h", resolved_config={"train": {"beta": 0.001}},
                         output_dir=tmp_path / "pg-run", status="COMPLETED")
        for step in (10, 20):
            sha = hashlib.sha256(f"pg/{step}".encode()).hexdigest()
            ck = store.add_checkpoint("pg-run", step=step, path=tmp_path / f"c{step}", sha256=sha, formats=["x"]).id
            for bench in BENCHMARKS:
                seeder.evaluate(sha=sha, bench=bench, weights="policy", quality=0.3 + step / 50, run="pg-run",
                                step=step, checkpoint_path=str(tmp_path / f"c{step}"), target=f"run:pg-run@{step}",
                                with_images=bench == "ocr", checkpoint_id=ck)
        best = max(e.score for e in store.list_evaluations(benchmark="geneval", status="COMPLETED"))
    monkeypatch.setenv("AWM_UI_DB_URL", fresh_postgres_db)
    monkeypatch.setenv("AWM_HOME", str(tmp_path))
    at = open_page()
    board = next(df.value for df in at.dataframe if "rank interval" in df.value.columns)
    assert list(board["row"]) == ["pg-run@20", "pg-run@10"]
    assert board.iloc[0]["geneval"] == pytest.approx(round(best, 4))
    text = page_text(at)
    assert "***@" in text and password not in text  # the sidebar names the store, redacted
    at = open_page(view="checkpoint", run="pg-run", step=20)
    assert len(at.get("image")) == 0 and {m.label for m in at.metric} >= {"run status", "GPU-hours (run)"}
    assert password not in page_text(at)
    at = open_page(view="gallery", run="pg-run", benchmark="ocr")
    assert len(at.get("image")) == 4 * 2  # the fixed panel x the two steps, served from this $AWM_HOME
