"""Launching, preemption/requeue, job state and MLflow tracking of training runs.

Public API (docs/contracts.md, Runner): `submit_run`, `submit_runs`, `refresh_states`,
`cancel_run`, `rerun`, `SubmittedRun`. Imports are lazy: `import awm_platform.runner` costs
nothing (the CLI imports it at start-up).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SubmitError",
    "SubmittedRun",
    "cancel_run",
    "refresh_states",
    "rerun",
    "submit_run",
    "submit_runs",
]

_WHERE = {
    "SubmittedRun": "api",
    "SubmitError": "api",
    "submit_run": "api",
    "submit_runs": "api",
    "rerun": "api",
    "refresh_states": "state",
    "cancel_run": "state",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f"awm_platform.runner.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'awm_platform.runner' has no attribute {name!r}")
