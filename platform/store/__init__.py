"""The platform store (SQLAlchemy 2.x + Alembic): see store.py."""

from awm_platform.store.models import (
           ACTIVE_STATUSES,
           TERMINAL_STATUSES,
           EVAL_TERMINAL_STATUSES,
           Checkpoint,
           EvalShard,
           EvalStatus,
           Evaluation,
           MetricPoint,
           Run,
           RunStatus,
           SampleScore,
           ShardStatus,
           Sweep,
           eval_key,
)
from awm_platform.store.store import NotFoundError, Store, StoreError, as_utc, utcnow

__all__ = ["ACTIVE_STATUSES", "EVAL_TERMINAL_STATUSES", "TERMINAL_STATUSES", "Checkpoint", "EvalShard", "EvalStatus",
           "Evaluation", "ShardStatus", "eval_key", "MetricPoint", "NotFoundError", "Run",
           "RunStatus", "SampleScore", "Store", "StoreError", "Sweep", "as_utc", "utcnow"]
