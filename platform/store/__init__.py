"""The platform store (SQLAlchemy 2.x + Alembic): see store.py."""

from awm_platform.store.models import (
           ACTIVE_STATUSES,
           EVAL_TERMINAL_STATUSES,
           TERMINAL_STATUSES,
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
from awm_platform.store.store import NotFoundError, Store, StoreError, as_utc, shard_claimable, utcnow

__all__ = [
           "ACTIVE_STATUSES",
           "EVAL_TERMINAL_STATUSES",
           "TERMINAL_STATUSES",
           "Checkpoint",
           "EvalShard",
           "EvalStatus",
           "Evaluation",
           "MetricPoint",
           "NotFoundError",
           "Run",
           "RunStatus",
           "SampleScore",
           "ShardStatus",
           "Store",
           "StoreError",
           "Sweep",
           "as_utc",
           "eval_key",
           "shard_claimable",
           "utcnow",
]
