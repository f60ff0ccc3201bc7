"""leaderboard: evaluations.weights and evaluations.compare_hash (the comparable group, indexed
with the status), run_params (the parameters the leaderboard filters and sorts on); existing
rows are backfilled

Revision ID: 0003
Revises: 0002
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from alembic import op

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
    """Rows written before this revision: the values the store wrote for new ones at this revision
    (`compare_hash`, `leaderboard_params` of awm_platform.store, frozen below: a migration must not
    change when the live code does), computed here in Python because the spec and the config are JSON
    columns that SQLite and PostgreSQL query differently."""
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


# ---- frozen copies (awm_platform.store at revision 0003), tested equal to the live ones while they agree
_COMPARABLE_ACROSS = ("weights",)
_OPTIONAL_SPEC_KEYS = ("guidance",)
_LEADERBOARD_PARAMS = ("method", "pretrained.model", "pretrained.family", "seed", "train.beta", "train.ghuber_power",
                       "train.kl_ema_decay", "train.kl_ema_decay_type", "train.ema_beta", "train.ema",
                       "train.ema_decay", "train.learning_rate", "train.weighting")


def compare_hash(benchmark: str, benchmark_version: str, spec: Mapping[str, Any], partial: bool) -> str:
    kept = {k: v for k, v in spec.items()
            if k not in _COMPARABLE_ACROSS and not (k in _OPTIONAL_SPEC_KEYS and v is None)}
    text = json.dumps([benchmark, benchmark_version, kept, bool(partial)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def leaderboard_params(resolved_config: Mapping[str, Any], search_space: Mapping[str, Any] | None = None,
                       ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    keys = list(_LEADERBOARD_PARAMS) + sorted(k for k in (search_space or {}) if k not in _LEADERBOARD_PARAMS)
    for key in keys:
        node: Any = resolved_config
        found = True
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                found, node = False, None
                break
            node = node[part]
        if not found and key == "method":
            found, node = True, "awm"
        if not found or node is None:
            continue
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append({"key": key, "num_value": float(node), "text_value": None})
        else:
            text = node if isinstance(node, str) else json.dumps(node, sort_keys=True)
            rows.append({"key": key, "num_value": None, "text_value": text})
    tags = resolved_config.get("tags") or []
    for tag in sorted({str(t) for t in tags} if isinstance(tags, (list, tuple)) else set()):
        rows.append({"key": "tag", "num_value": None, "text_value": tag})
    return rows


def downgrade() -> None:
    op.drop_table("run_params")
    op.drop_index("ix_evaluations_run_pivot", table_name="evaluations")
    op.drop_index("ix_evaluations_compare_hash_status", table_name="evaluations")
    op.drop_index("ix_evaluations_updated_at", table_name="evaluations")
    op.drop_index("ix_runs_updated_at", table_name="runs")
    # ALTER TABLE ... DROP COLUMN (PostgreSQL; SQLite >= 3.35), not batch mode: on SQLite that rebuilds
    # the table, and dropping the old one with foreign keys on deletes its shards and sample rows
    op.execute("ALTER TABLE evaluations DROP COLUMN compare_hash")
    op.execute("ALTER TABLE evaluations DROP COLUMN weights")
