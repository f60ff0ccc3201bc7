"""ORM tables of the platform store. Schema changes go through an Alembic migration
(platform/store/migrations/versions); tests/store checks the two agree."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class RunStatus(StrEnum):
    """The vocabulary of `runs.status`. Which status may follow which, and who writes it, is
    the run lifecycle's (awm_platform.runner.lifecycle: the only writer of a run's status)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"
    CANCELLED = "CANCELLED"
    PRUNED = "PRUNED"


# final: the run's job is over and nothing changes the status again (except `awm rerun --resume`)
TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED})
# a job exists or will: the scheduler is polled for these
ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PREEMPTED)


class EvalStatus(StrEnum):
    """The vocabulary of `evaluations.status` (docs/evals.md has the transitions; the Store's
    compare-and-set methods are the only writers)."""

    PENDING = "PENDING"  # created; no shard claimed yet (or retried)
    RUNNING = "RUNNING"  # a shard was claimed
    COMPLETED = "COMPLETED"  # every shard done and the aggregate committed, in one transaction
    FAILED = "FAILED"  # integrity / missing weights / a shard failed max_attempts times
    CANCELLED = "CANCELLED"  # `awm eval cancel`


EVAL_STATUSES = tuple(EvalStatus)
EVAL_TERMINAL_STATUSES = frozenset({EvalStatus.COMPLETED, EvalStatus.FAILED, EvalStatus.CANCELLED})


class ShardStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"  # claimed: `lease_holder` owns it until `lease_expires_at` (renewed while it works)
    DONE = "DONE"  # its sample rows are committed (same transaction): never redone


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    config_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    resolved_config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    cluster: Mapped[str | None] = mapped_column(String(16))
    job_ids: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    hosts: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    num_gpus: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    gpu_hours: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    output_dir: Mapped[str] = mapped_column(Text, nullable=False)
    log_dir: Mapped[str | None] = mapped_column(Text)
    sweep_name: Mapped[str | None] = mapped_column(String(128), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)

    checkpoints: Mapped[list[Checkpoint]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_checkpoint_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    formats: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    run: Mapped[Run] = relationship(back_populates="checkpoints")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="checkpoint", cascade="all, delete-orphan")


class Evaluation(Base):
    """One evaluation: a checkpoint (or the base model) x benchmark x benchmark version x spec.

    The key (`checkpoint_sha256`, `benchmark`, `benchmark_version`, `spec_hash`) is unique: racing
    schedulers get one row. `checkpoint_id` is null for targets outside the store (`base:MODEL`,
    a checkpoint directory); `target` is the label users see (`run@step`, `base:MODEL`, `dir:PATH`)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("checkpoint_sha256", "benchmark", "benchmark_version", "spec_hash", name="uq_evaluation_key"),
        Index("ix_evaluations_status", "status"),
        # the comparable groups, and a covering index of the leaderboard's reads (awm_platform.ui.data):
        # its views (GROUP BY compare_hash) and its pivot (one row per checkpoint and weights) never
        # read the wide table rows (spec, sub_scores JSON)
        Index("ix_evaluations_compare_hash_status", "compare_hash", "status", "partial", "weights", "benchmark",
              "checkpoint_sha256", "score", "ci_low", "ci_high", "num_samples", "id", "run_name", "step"),
        # the same pivot for the leaderboard's run filters (sweep, tag, parameter: run_name IN ...)
        Index("ix_evaluations_run_pivot", "run_name", "compare_hash", "status", "partial", "weights",
              "checkpoint_sha256", "score"),
        # a leaderboard page sorted by a view's score, read in that order (over the view; in a sweep)
        Index("ix_evaluations_view_score", "compare_hash", "status", "partial", "score", "checkpoint_sha256",
              "weights"),
        Index("ix_evaluations_sweep_view_score", "sweep_name", "compare_hash", "status", "partial", "score",
              "checkpoint_sha256", "weights"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(Text, nullable=False)
    run_name: Mapped[str | None] = mapped_column(String(128), index=True)
    sweep_name: Mapped[str | None] = mapped_column(String(128))  # the run's (immutable), copied on insert
    step: Mapped[int | None] = mapped_column(Integer)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    benchmark: Mapped[str] = mapped_column(String(64), nullable=False)
    benchmark_version: Mapped[str] = mapped_column(String(64), nullable=False)
    spec_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    weights: Mapped[str] = mapped_column(String(16), nullable=False, default="policy")  # spec["weights"]
    compare_hash: Mapped[str] = mapped_column(String(16), nullable=False)  # `compare_hash` of this row
    partial: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    score: Mapped[float | None] = mapped_column(Float)
    sub_scores: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    num_samples: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    num_shards: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    images_dir: Mapped[str | None] = mapped_column(Text)
    cluster: Mapped[str | None] = mapped_column(String(16))
    job_dir: Mapped[str | None] = mapped_column(Text)
    job_ids: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    submit_token: Mapped[str | None] = mapped_column(String(64))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    wall_s: Mapped[float | None] = mapped_column(Float)
    gpu_hours: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    mirrored: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)

    checkpoint: Mapped[Checkpoint | None] = relationship(back_populates="evaluations")

    @property
    def key(self) -> str:
        """Short name of the evaluation key (names `$AWM_HOME/evals/<key>/`)."""
        return eval_key(self.checkpoint_sha256, self.benchmark, self.benchmark_version, self.spec_hash)


def eval_key(checkpoint_sha256: str, benchmark: str, benchmark_version: str, spec_hash: str) -> str:
    """16 hex characters naming an evaluation key (its directory, its MLflow child run tag)."""
    text = "\x1f".join((checkpoint_sha256, benchmark, benchmark_version, spec_hash))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: spec keys two compared evaluations may differ in (everything else changes what a sample means)
COMPARABLE_ACROSS = ("weights",)
#: spec keys added after evaluations existed, whose None is the old behaviour (left out of every hash)
OPTIONAL_SPEC_KEYS = ("guidance",)


def compare_hash(benchmark: str, benchmark_version: str, spec: Mapping[str, Any], partial: bool) -> str:
    """16 hex characters naming a comparable group: two evaluations are paired (same prompts, seeds
    and sampler) iff their compare hashes are equal: same benchmark, benchmark version, spec but
    its weights (`COMPARABLE_ACROSS`), both partial or both full. Stored in
    `evaluations.compare_hash` (`awm eval compare` and the leaderboard pair on it). Here, not in
    awm_platform.evals.stats: the store computes it on insert, and evals.stats imports the store."""
    # a key whose None means "the default" (EvalSpec leaves it out of its hashes when None) is left out
    # here too, so specs dumped before the key existed and specs that dump it as null stay comparable
    kept = {k: v for k, v in spec.items()
            if k not in COMPARABLE_ACROSS and not (k in OPTIONAL_SPEC_KEYS and v is None)}
    text = json.dumps([benchmark, benchmark_version, kept, bool(partial)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EvalShard(Base):
    """A prompt shard of an evaluation, claimed with a lease (holder, expiry): a dead worker's shard
    is re-claimed once its lease expires; a DONE shard is never redone."""

    __tablename__ = "eval_shards"
    __table_args__ = (UniqueConstraint("evaluation_id", "shard_index", name="uq_shard_eval_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False,
                                               index=True)
    shard_index: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    lease_holder: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    num_images: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    gen_s: Mapped[float | None] = mapped_column(Float)
    score_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SampleScore(Base):
    __tablename__ = "sample_scores"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "prompt_index", "sample_index", name="uq_sample_eval_prompt_sample"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False, index=True)
    prompt_index: Mapped[int] = mapped_column(Integer, nullable=False)
    sample_index: Mapped[int] = mapped_column(Integer, nullable=False)
    seed: Mapped[int | None] = mapped_column(BigInteger)  # 63-bit per-image seeds
    score: Mapped[float] = mapped_column(Float, nullable=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    optuna_storage: Mapped[str] = mapped_column(Text, nullable=False)
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    config_hash: Mapped[str | None] = mapped_column(String(64))
    resolved_config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="RUNNING")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class DeletedRun(Base):
    """The log of deleted runs (`Store.delete_run`; their checkpoints, evaluations and metrics went
    with them), appended to, never changed: what was deleted and when, and the readers' sign of a
    deletion (`max(id)`: one index lookup), which counting the runs made an O(runs) pass."""

    __tablename__ = "deleted_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class RunParam(Base):
    """A run's leaderboard parameters (`store.leaderboard_params`), one row per (key, value), so
    the leaderboard filters and sorts on them in SQL: numbers in `num_value`, everything else
    (and each `tags` entry, key `tag`) in `text_value`. Written with the run, never changed."""

    __tablename__ = "run_params"
    __table_args__ = (
        UniqueConstraint("run_id", "key", "text_value", name="uq_run_param_run_key_text"),
        Index("ix_run_params_key_num", "key", "num_value"),
        Index("ix_run_params_key_text", "key", "text_value"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    key: Mapped[str] = mapped_column(String(250), nullable=False)
    num_value: Mapped[float | None] = mapped_column(Float)
    text_value: Mapped[str | None] = mapped_column(Text)


class MetricPoint(Base):
    """Metrics the trainer reports (eval metrics at least): what sweeps prune on.

    Unique on (run, key, step) so a step re-logged after a resume overwrites instead of
    duplicating."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("run_id", "key", "step", name="uq_metric_run_key_step"),
        Index("ix_metric_run_key", "run_id", "key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    key: Mapped[str] = mapped_column(String(250), nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    logged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
