"""Project-wide test setup.

- Tests never reach a network: the Hugging Face hub is switched off before anything imports it.
- Every test gets an empty, isolated `$AWM_HOME` (platform DB, MLflow store, Optuna DB and run
  directories all live there), and MLflow is never pointed at the working directory.
- Fixtures for the real local services (SLURM, PostgreSQL) come from tests/fixtures/services.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("MLFLOW_RUN_ID", None)

pytest_plugins = [p for p in ("tests.fixtures.services", "tests.fixtures.mlflow_server")
                  if (Path(__file__).parent / "fixtures" / (p.rsplit(".", 1)[1] + ".py")).exists()]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_awm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "awm_home"
    home.mkdir()
    monkeypatch.setenv("AWM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return home


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight SD3 pipeline (`trainers.awm.tiny.make_tiny`, seed 0), built once per
    session (6 s) for every test that trains or submits on it (runner, sweeps, security): tests
    and their jobs only read it. This process computes with one thread (the box runs jobs too)."""
    import torch  # deferred: only the tests that train need torch

    from trainers.awm.tiny import make_tiny

    torch.set_num_threads(1)
    return Path(make_tiny(tmp_path_factory.mktemp("tiny-model") / "pipe"))
