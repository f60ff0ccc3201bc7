"""leaderboard speed: evaluations.sweep_name (the run's sweep, copied when the evaluation is
written, so a sweep filter is an index range of the evaluations), the indexes that read a
benchmark view in score order, and runs by creation time; existing rows are backfilled

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# a page sorted by a view's score, read in that order: over the view, or within one sweep
_VIEW_SCORE = ["compare_hash", "status", "partial", "score", "checkpoint_sha256", "weights"]


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("sweep_name", sa.String(128), nullable=True))
    op.execute("UPDATE evaluations SET sweep_name = (SELECT runs.sweep_name FROM runs "
               "WHERE runs.name = evaluations.run_name) WHERE run_name IS NOT NULL")
    op.create_index("ix_evaluations_view_score", "evaluations", _VIEW_SCORE)
    op.create_index("ix_evaluations_sweep_view_score", "evaluations", ["sweep_name", *_VIEW_SCORE])
    # the leaderboard's cache key: the newest run by index
    op.create_index("ix_runs_created_at", "runs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_created_at", table_name="runs")
    op.drop_index("ix_evaluations_sweep_view_score", table_name="evaluations")
    op.drop_index("ix_evaluations_view_score", table_name="evaluations")
    # ALTER TABLE ... DROP COLUMN (PostgreSQL; SQLite >= 3.35), not batch mode: on SQLite that rebuilds
    # the table, and dropping the old one with foreign keys on deletes its shards and sample rows
    op.execute("ALTER TABLE evaluations DROP COLUMN sweep_name")
