"""initial schema: runs, checkpoints, evaluations, sample_scores, sweeps, metrics

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("resolved_config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cluster", sa.String(16)),
        sa.Column("job_ids", sa.JSON(), nullable=False),
        sa.Column("hosts", sa.JSON(), nullable=False),
        sa.Column("num_gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_hours", sa.Float(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("output_dir", sa.Text(), nullable=False),
        sa.Column("log_dir", sa.Text()),
        sa.Column("sweep_name", sa.String(128)),
        sa.Column("trial_number", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("ended_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_runs_sweep_name", "runs", ["sweep_name"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("formats", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("run_id", "step", name="uq_checkpoint_run_step"),
    )
    op.create_index("ix_checkpoints_run_id", "checkpoints", ["run_id"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("checkpoint_id", sa.Integer(), sa.ForeignKey("checkpoints.id", ondelete="CASCADE"), nullable=False),
        sa.Column("benchmark", sa.String(64), nullable=False),
        sa.Column("benchmark_version", sa.String(64), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("sub_scores", sa.JSON(), nullable=False),
        sa.Column("ci_low", sa.Float()),
        sa.Column("ci_high", sa.Float()),
        sa.Column("num_samples", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("checkpoint_id", "benchmark", "spec_hash", name="uq_evaluation_ckpt_bench_spec"),
    )
    op.create_index("ix_evaluations_checkpoint_id", "evaluations", ["checkpoint_id"])
    op.create_table(
        "sample_scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.UniqueConstraint("evaluation_id", "prompt_index", "sample_index", name="uq_sample_eval_prompt_sample"),
    )
    op.create_index("ix_sample_scores_evaluation_id", "sample_scores", ["evaluation_id"])
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_name", sa.String(128), nullable=False, unique=True),
        sa.Column("optuna_storage", sa.Text(), nullable=False),
        sa.Column("mlflow_parent_run_id", sa.String(64)),
        sa.Column("config_hash", sa.String(64)),
        sa.Column("resolved_config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("logged_at", TZ, nullable=False),
        sa.UniqueConstraint("run_id", "key", "step", name="uq_metric_run_key_step"),
    )
    op.create_index("ix_metric_run_key", "metrics", ["run_id", "key"])


def downgrade() -> None:
    for table in ("metrics", "sweeps", "sample_scores", "evaluations", "checkpoints", "runs"):
        op.drop_table(table)
