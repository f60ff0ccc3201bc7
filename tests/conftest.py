"""Project-wide test setup.

- Tests never reach a network: the Hugging Face hub is switched off before anything imports it.
- Every test gets an empty, isolated `$AWM_HOME` (platform DB, MLflow store, Optuna DB and run
  directories all live there), and MLflow is never pointed at the working directory.
- Fixtures for the real local services (SLURM, PostgreSQL) come from tests/fixtures/services.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


# ===================================================================== parallel runs (pytest-xdist)
# scripts/test.sh runs the suite on AWM_TEST_WORKERS processes (default 2) with `-n N --dist loadgroup`.
# A work unit (what one worker runs, in order, start to end) is
#   * an xdist group: every test that uses the single SLURM node (the `slurm_cluster` fixture or the
#     `slurm` marker; tests/services' modules are in it by their `xdist_group("slurm")`) is in group "slurm",
#     so one worker at a time submits to the node's 2 CPUs / 2 fake GPUs (tests that expect their jobs to
#     run at once, requeues, preemption, job arrays under a concurrency limit) and the services scripts run
#     one at a time;
#   * otherwise its module, as with `--dist loadfile`: a module-scoped fixture (a training run, a server)
#     is built once, not once per worker that happens to get one of its tests.
# Units are handed out longest first (SLURM, then modules with `slow` tests, then the rest, each in
# collection order), so that the last unit to start is a short one. A plain `pytest` run is unaffected.
#
# The groups travel from the workers (which collect the tests) to the controller (which schedules them) in
# a file per worker, not as xdist's "<node id>@<group>" suffix: that suffix is written to `item._nodeid`,
# which pytest >= 9.2 no longer reads, so xdist's own loadgroup silently schedules every test alone.
SLURM_GROUP = "slurm"
_GROUPS_DIR_ENV = "AWM_TEST_XDIST_GROUPS_DIR"


def _xdist_group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def _loadgroup(config: pytest.Config) -> bool:
    """`--dist loadgroup`: the controller's option; xdist passes it to its workers as `loadgroup`."""
    return config.getoption("dist", "no") == "loadgroup" or bool(getattr(config.option, "loadgroup", False))


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        import tempfile

        # the controller: its workers (started after this, with this environment) write their groups here
        os.environ[_GROUPS_DIR_ENV] = tempfile.mkdtemp(prefix="awm-xdist-groups-")


def pytest_unconfigure(config: pytest.Config) -> None:
    groups_dir = os.environ.get(_GROUPS_DIR_ENV)
    if groups_dir and not os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        shutil.rmtree(groups_dir, ignore_errors=True)
        os.environ.pop(_GROUPS_DIR_ENV, None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _loadgroup(config):
        return
    for item in items:
        uses_slurm = "slurm_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slurm")
        if _xdist_group(item) is None and uses_slurm:
            item.add_marker(pytest.mark.xdist_group(SLURM_GROUP))
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if _xdist_group(item) is not None:
            return 0
        return 1 if item.path in slow_modules else 2

    items[:] = sorted(items, key=rank)  # stable: each unit keeps its tests' order
    groups_dir, worker = os.environ.get(_GROUPS_DIR_ENV), os.environ.get("PYTEST_XDIST_WORKER")
    if groups_dir and worker:
        import json

        groups = {item.nodeid: group for item in items if (group := _xdist_group(item)) is not None}
        tmp = Path(groups_dir) / f".{worker}.json"
        tmp.write_text(json.dumps(groups))
        tmp.replace(Path(groups_dir) / f"{worker}.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the groups the workers wrote, and a module as an ungrouped test's unit."""
    if config.getoption("dist", "no") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class GroupOrModuleScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first called once every worker has collected (and written its file)
                self.groups = {}
                for path in sorted(Path(os.environ[_GROUPS_DIR_ENV]).glob("gw*.json")):
                    self.groups.update(json.loads(path.read_text()))
            group = self.groups.get(nodeid)
            return f"group:{group}" if group is not None else nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # hand units out in the order pytest_collection_modifyitems made
    return GroupOrModuleScheduling(config, log)
