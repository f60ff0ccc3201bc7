"""Shared runner-test helpers: tiny configs on tests/conftest.py's tiny SD3 pipeline (`tiny_model`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # jobs start child processes: keep them at 1 thread


def tiny_config_dict(model: Path, name: str, **over: Any) -> dict[str, Any]:
    from trainers.awm.tiny import tiny_experiment_dict

    base = {"launcher": {"cluster": "local", "cpus_per_task": 1, "time_min": 10},
            "tracking": {"experiment": "runner-tests"}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return tiny_experiment_dict(model, name, **base)


def tiny_config(model: Path, name: str, **over: Any) -> Any:
    from awm_platform.config import config_from_dict

    return config_from_dict(tiny_config_dict(model, name, **over))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def jsonl_steps(run_dir: Path, key: str) -> list[int]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "metrics" and key in rec["metrics"]:
            out.append(rec["step"])
    return out


def wait_terminal(store: Any, name: str, timeout: float, on_tick: Any = None, poll: float = 0.5) -> str:
    """Refresh `name`'s state until it is COMPLETED, FAILED or CANCELLED (returned); `on_tick` runs
    between polls (e.g. to release a held job)."""
    from awm_platform.runner.state import refresh_states

    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = refresh_states(store, [name], force=True)[name]
        if status in ("COMPLETED", "FAILED", "CANCELLED"):
            return status
        if on_tick is not None:
            on_tick()
        time.sleep(poll)
    raise AssertionError(f"run {name} still {status} after {timeout} s")


def segment_seconds(run_dir: Path) -> list[float]:
    """Elapsed time of each job segment of a run: controller start -> trainer exit (events.jsonl)."""
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    out, start = [], None
    for e in events:
        if e["event"] == "controller_start":
            start = e["t"]
        elif e["event"] == "child_exit" and start is not None:
            out.append(e["t"] - start)
            start = None
    return out


@pytest.fixture(autouse=True)
def _no_leftover_jobs(isolated_awm_home: Path) -> Any:
    """Local/SLURM jobs outlive the test process: cancel whatever a test left running."""
    yield
    db = isolated_awm_home / "awm.db"
    if not db.exists():
        return
    from awm_platform.runner.state import cancel_run
    from awm_platform.store import Store

    with Store(f"sqlite:///{db}") as store:
        for run in store.list_runs(active_only=True):
            if run.cluster in ("local", "slurm") and run.job_ids:
                cancel_run(run.name, store, timeout_s=60)
