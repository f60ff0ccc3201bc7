"""Executor backends (local, debug, slurm) behind one interface: `backend_for(cluster)`.

See `base` for the contract; the implementations live in `local`, `debug` and `slurm`.
"""

from __future__ import annotations

from awm_platform.runner.backends.base import CLUSTERS, ExecutorBackend, JobObservation
from awm_platform.runner.backends.debug import DebugBackend
from awm_platform.runner.backends.local import LocalBackend
from awm_platform.runner.backends.slurm import SlurmBackend

_BACKENDS: dict[str, ExecutorBackend] = {b.name: b() for b in (LocalBackend, DebugBackend, SlurmBackend)}


def backend_for(cluster: str) -> ExecutorBackend:
    """The backend for a cluster name (`launcher.cluster`, `--cluster`, a run's `cluster` column)."""
    try:
        return _BACKENDS[cluster]
    except KeyError:
        raise ValueError(f"unknown cluster {cluster!r}: expected one of {', '.join(CLUSTERS)}") from None


__all__ = ["CLUSTERS", "ExecutorBackend", "JobObservation", "backend_for"]
