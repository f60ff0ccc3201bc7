"""evaluation service: the evaluation key (checkpoint sha256, benchmark, version, spec hash),
targets outside the store, jobs, leases (eval_shards), MLflow mirroring state

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_constraint("uq_evaluation_ckpt_bench_spec", type_="unique")
        batch.alter_column("checkpoint_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("checkpoint_sha256", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("target", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("run_name", sa.String(128)))
        batch.add_column(sa.Column("step", sa.Integer()))
        batch.add_column(sa.Column("checkpoint_path", sa.Text()))
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("partial", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("num_shards", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("images_dir", sa.Text()))
        batch.add_column(sa.Column("cluster", sa.String(16)))
        batch.add_column(sa.Column("job_dir", sa.Text()))
        batch.add_column(sa.Column("job_ids", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("submit_token", sa.String(64)))
        batch.add_column(sa.Column("submitted_at", TZ))
        batch.add_column(sa.Column("wall_s", sa.Float()))
        batch.add_column(sa.Column("gpu_hours", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("mlflow_run_id", sa.String(64)))
        batch.add_column(sa.Column("mirrored", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("started_at", TZ))
        batch.add_column(sa.Column("ended_at", TZ))
    # rows written before the service existed: their checkpoint gives the key and the label
    op.execute("""
        UPDATE evaluations SET
          checkpoint_sha256 = (SELECT c.sha256 FROM checkpoints c WHERE c.id = evaluations.checkpoint_id),
          step = (SELECT c.step FROM checkpoints c WHERE c.id = evaluations.checkpoint_id),
          checkpoint_path = (SELECT c.path FROM checkpoints c WHERE c.id = evaluations.checkpoint_id),
          run_name = (SELECT r.name FROM checkpoints c JOIN runs r ON r.id = c.run_id
                      WHERE c.id = evaluations.checkpoint_id)
        WHERE checkpoint_id IS NOT NULL
    """)
    op.execute("UPDATE evaluations SET target = run_name || '@' || CAST(step AS VARCHAR) WHERE run_name IS NOT NULL")
    with op.batch_alter_table("evaluations") as batch:
        batch.create_unique_constraint("uq_evaluation_key",
                                       ["checkpoint_sha256", "benchmark", "benchmark_version", "spec_hash"])
        batch.create_index("ix_evaluations_status", ["status"])
        batch.create_index("ix_evaluations_run_name", ["run_name"])
    op.create_table(
        "eval_shards",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("shard_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("lease_holder", sa.String(128)),
        sa.Column("lease_expires_at", TZ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("gen_s", sa.Float()),
        sa.Column("score_s", sa.Float()),
        sa.Column("error", sa.Text()),
        sa.Column("finished_at", TZ),
        sa.UniqueConstraint("evaluation_id", "shard_index", name="uq_shard_eval_index"),
    )
    op.create_index("ix_eval_shards_evaluation_id", "eval_shards", ["evaluation_id"])
    with op.batch_alter_table("sample_scores") as batch:  # per-image seeds are 63-bit
        batch.alter_column("seed", existing_type=sa.Integer(), type_=sa.BigInteger())


def downgrade() -> None:
    with op.batch_alter_table("sample_scores") as batch:
        batch.alter_column("seed", existing_type=sa.BigInteger(), type_=sa.Integer())
    op.drop_table("eval_shards")
    op.execute("DELETE FROM evaluations WHERE checkpoint_id IS NULL")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_index("ix_evaluations_run_name")
        batch.drop_index("ix_evaluations_status")
        batch.drop_constraint("uq_evaluation_key", type_="unique")
        for col in ("ended_at", "started_at", "mirrored", "mlflow_run_id", "gpu_hours", "wall_s", "submitted_at",
                    "submit_token", "job_ids", "job_dir", "cluster", "images_dir", "num_shards", "partial", "spec",
                    "checkpoint_path", "step", "run_name", "target", "checkpoint_sha256"):
            batch.drop_column(col)
        batch.alter_column("checkpoint_id", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_evaluation_ckpt_bench_spec", ["checkpoint_id", "benchmark", "spec_hash"])
