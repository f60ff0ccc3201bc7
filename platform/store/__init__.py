"""The platform store (SQLAlchemy 2.x + Alembic): see store.py."""

from awm_platform.store.models import (
           ACTIVE_STATUSES,
           TERMINAL_STATUSES,
           Checkpoint,
           Evaluation,
           MetricPoint,
           Run,
           RunStatus,
           SampleScore,
           Sweep,
)
from awm_platform.store.store import NotFoundError, Store, StoreError, as_utc, utcnow

__all__ = ["ACTIVE_STATUSES", "TERMINAL_STATUSES", "Checkpoint", "Evaluation", "MetricPoint", "NotFoundError", "Run",
           "RunStatus", "SampleScore", "Store", "StoreError", "Sweep", "as_utc", "utcnow"]
