"""The platform store (SQLAlchemy 2.x + Alembic): see store.py."""

from awm_platform.store.models import (
           RUN_STATUSES,
           TERMINAL_STATUSES,
           Checkpoint,
           Evaluation,
           MetricPoint,
           Run,
           SampleScore,
           Sweep,
)
from awm_platform.store.store import NotFoundError, Store, StoreError, as_utc, utcnow

__all__ = ["RUN_STATUSES", "TERMINAL_STATUSES", "Checkpoint", "Evaluation", "MetricPoint", "NotFoundError", "Run",
           "SampleScore", "Store", "StoreError", "Sweep", "as_utc", "utcnow"]
