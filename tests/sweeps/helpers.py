"""Shared builders for the sweep tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from awm_platform.config import config_from_dict
from awm_platform.sweeps.optuna_bridge import storage_url
from awm_platform.sweeps.orchestrator import SweepContext


def sweep_section(**over: Any) -> dict[str, Any]:
    sec: dict[str, Any] = {
        "params": {"train.beta": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"metric": "eval/jpeg_compressibility", "direction": "maximize"},
        "n_trials": 4, "parallelism": 2, "pruner": {"name": "none"},
        "sampler": {"name": "random", "seed": 7}, "poll_interval_s": 0.05,
    }
    sec.update(over)
    return sec


def make_ctx(name: str = "study", cluster: str = "local", base: dict[str, Any] | None = None,
             **sweep: Any) -> SweepContext:
    data = dict(base or {})
    data["name"] = name
    data["sweep"] = sweep_section(**sweep)
    cfg = config_from_dict(data)
    assert cfg.sweep is not None
    return SweepContext(study_name=name, cfg=cfg, cluster=cluster, storage_url=storage_url(cfg.sweep))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def max_concurrent(runs: list[Any]) -> int:
    """The most runs that were in flight at one instant, from the start/end times the store
    recorded (started_at: the job's controller started; ended_at: it ended, or was found dead)."""
    edges = []
    for r in runs:
        assert r.started_at is not None and r.ended_at is not None, (r.name, r.status)
        edges += [(r.started_at, 1), (r.ended_at, -1)]
    in_flight = most = 0
    for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):  # at a tie, an end before a start
        in_flight += delta
        most = max(most, in_flight)
    return most


def wait_for(pred: Any, timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll `pred` until it returns something truthy (returned); TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout} s for {what}")
