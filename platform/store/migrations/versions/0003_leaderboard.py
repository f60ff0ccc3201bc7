"""leaderboard: evaluations.weights and evaluations.compare_hash (the comparable group, indexed
with the status), run_params (the parameters the leaderboard filters and sorts on); existing
rows are backfilled

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from awm_platform.store.models import compare_hash
from awm_platform.store.store import leaderboard_params

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("weights", sa.String(16), nullable=False, server_default="policy"))
        batch.add_column(sa.Column("compare_hash", sa.String(16), nullable=False, server_default=""))
    # (compare_hash, status) and the rest: a covering index of the leaderboard's reads (models.py)
    op.create_index("ix_evaluations_compare_hash_status", "evaluations", [
        "compare_hash", "status", "partial", "weights", "benchmark", "checkpoint_sha256", "score", "ci_low", "ci_high",
        "num_samples", "id", "run_name", "step"])
    op.create_index("ix_evaluations_run_pivot", "evaluations", ["run_name", "compare_hash", "status", "partial",
                                                               "weights", "checkpoint_sha256", "score"])
    # the leaderboard's change marker: max(updated_at) by index
    op.create_index("ix_runs_updated_at", "runs", ["updated_at"])
    op.create_index("ix_evaluations_updated_at", "evaluations", ["updated_at"])
    op.create_table(
        "run_params",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("num_value", sa.Float()),
        sa.Column("text_value", sa.Text()),
        sa.UniqueConstraint("run_id", "key", "text_value", name="uq_run_param_run_key_text"),
    )
    op.create_index("ix_run_params_run_id", "run_params", ["run_id"])
    op.create_index("ix_run_params_key_num", "run_params", ["key", "num_value"])
    op.create_index("ix_run_params_key_text", "run_params", ["key", "text_value"])
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    """Rows written before this revision: the same values the store writes for new ones (the one
    definition of each: `compare_hash`, `leaderboard_params`), computed here in Python because the
    spec and the config are JSON columns that SQLite and PostgreSQL query differently."""
    meta = sa.MetaData()
    evaluations = sa.Table("evaluations", meta, autoload_with=conn)
    runs = sa.Table("runs", meta, autoload_with=conn)
    sweeps = sa.Table("sweeps", meta, autoload_with=conn)
    run_params = sa.Table("run_params", meta, autoload_with=conn)
    rows = conn.execute(sa.select(evaluations.c.id, evaluations.c.benchmark, evaluations.c.benchmark_version,
                                  evaluations.c.spec, evaluations.c.partial)).all()
    for start in range(0, len(rows), _BATCH):
        for ev_id, benchmark, version, spec, partial in rows[start:start + _BATCH]:
            spec = spec or {}
            conn.execute(sa.update(evaluations).where(evaluations.c.id == ev_id).values(
                weights=str(spec.get("weights", "policy")),
                compare_hash=compare_hash(benchmark, version, spec, bool(partial))))
    spaces = {name: ((conf or {}).get("sweep") or {}).get("params")
              for name, conf in conn.execute(sa.select(sweeps.c.study_name, sweeps.c.resolved_config))}
    for run_id, conf, sweep_name in conn.execute(sa.select(runs.c.id, runs.c.resolved_config,
                                                           runs.c.sweep_name)).all():
        params = leaderboard_params(conf or {}, spaces.get(sweep_name))
        if params:
            conn.execute(sa.insert(run_params), [{"run_id": run_id, **p} for p in params])


def downgrade() -> None:
    op.drop_table("run_params")
    op.drop_index("ix_evaluations_run_pivot", table_name="evaluations")
    op.drop_index("ix_evaluations_compare_hash_status", table_name="evaluations")
    op.drop_index("ix_evaluations_updated_at", table_name="evaluations")
    op.drop_index("ix_runs_updated_at", table_name="runs")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("compare_hash")
        batch.drop_column("weights")
