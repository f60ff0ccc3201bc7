"""One contract suite for the platform store, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from awm_platform.store import (
    Checkpoint,
    Evaluation,
    MetricPoint,
    NotFoundError,
    SampleScore,
    Store,
    StoreError,
    as_utc,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_db")
    s = Store(url)
    yield s
    s.close()


def _run(store: Store, name: str = "run-a", **kw) -> None:
    store.create_run(name=name, config_hash="abc123", resolved_config={"name": name, "train": {"beta": 0.001}},
                     output_dir=f"/runs/{name}", cluster="local", **kw)


def test_schema_is_at_head_and_upgrade_is_idempotent(store: Store) -> None:
    assert store.current_revision() == store.head_revision()
    assert store.upgrade() == "head"
    assert store.current_revision() == store.head_revision()


def test_migrations_match_the_orm_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from awm_platform.store.models import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    assert diff == []


def test_run_roundtrip_and_defaults(store: Store) -> None:
    _run(store)
    run = store.get_run("run-a")
    assert run.status == "PENDING"
    assert run.resolved_config == {"name": "run-a", "train": {"beta": 0.001}}
    assert run.job_ids == [] and run.hosts == [] and run.gpu_hours == 0.0
    assert as_utc(run.created_at).tzinfo is not None
    assert [r.name for r in store.list_runs()] == ["run-a"]


def test_duplicate_run_name_is_a_clear_error(store: Store) -> None:
    _run(store)
    with pytest.raises(StoreError, match="already exists"):
        _run(store)


def test_unknown_run_names_the_run(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no run named 'ghost'"):
        store.get_run("ghost")
    assert store.find_run("ghost") is None
    with pytest.raises(NotFoundError):
        store.update_run("ghost", status="RUNNING")


def test_update_run_fields_and_validation(store: Store) -> None:
    _run(store)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.update_run("run-a", status="RUNNING", started_at=start, mlflow_run_id="m1", gpu_hours=1.5)
    run = store.get_run("run-a")
    assert (run.status, run.mlflow_run_id, run.gpu_hours) == ("RUNNING", "m1", 1.5)
    assert as_utc(run.started_at) == start
    with pytest.raises(StoreError, match="unknown run status 'DONE'"):
        store.update_run("run-a", status="DONE")
    with pytest.raises(StoreError, match="cannot update run fields \\['name'\\]"):
        store.update_run("run-a", name="other")


def test_compare_and_set_changes_the_status_only_from_the_expected_one(store: Store) -> None:
    _run(store)
    assert store.compare_and_set_run("run-a", "PENDING", status="RUNNING", hosts=["n1"]) is True
    assert store.compare_and_set_run("run-a", "PENDING", status="FAILED", error="stale") is False  # lost
    run = store.get_run("run-a")
    assert (run.status, run.hosts, run.error) == ("RUNNING", ["n1"], None)
    assert store.compare_and_set_run("run-a", "RUNNING", log_dir="/logs") is True  # fields only, status kept
    assert store.get_run("run-a").log_dir == "/logs" and store.get_run("run-a").status == "RUNNING"
    assert store.compare_and_set_run("ghost", "PENDING", status="RUNNING") is False
    with pytest.raises(StoreError, match="unknown run status 'DONE'"):
        store.compare_and_set_run("run-a", "RUNNING", status="DONE")
    with pytest.raises(StoreError, match="cannot update run fields \\['name'\\]"):
        store.compare_and_set_run("run-a", "RUNNING", name="other")


def test_gpu_hours_never_decrease(store: Store) -> None:
    _run(store)
    assert store.compare_and_set_run("run-a", "PENDING", gpu_hours=2.0)
    assert store.compare_and_set_run("run-a", "PENDING", gpu_hours=1.0)  # a lagging total: kept at 2
    assert store.get_run("run-a").gpu_hours == pytest.approx(2.0)
    assert store.compare_and_set_run("run-a", "PENDING", status="RUNNING", add_gpu_hours=0.5)
    assert store.get_run("run-a").gpu_hours == pytest.approx(2.5)
    assert not store.compare_and_set_run("run-a", "PENDING", add_gpu_hours=9.0)  # lost: nothing added
    store.add_gpu_hours("run-a", gpu_hours=2.0, add_gpu_hours=0.25)  # max(2.5, 2.0) + 0.25
    assert store.get_run("run-a").gpu_hours == pytest.approx(2.75)
    store.add_gpu_hours("run-a", gpu_hours=4.0)
    assert store.get_run("run-a").gpu_hours == pytest.approx(4.0)


def test_compare_and_set_has_one_winner_among_concurrent_writers(store: Store) -> None:
    """Eight threads (each its own connection) move the same PENDING run to different states:
    exactly one wins, and the row holds the winner's state and fields."""
    _run(store)
    targets = ["RUNNING", "FAILED", "CANCELLED", "PREEMPTED", "COMPLETED", "PRUNED", "RUNNING", "FAILED"]
    barrier = threading.Barrier(len(targets))

    def attempt(i: int) -> bool:
        barrier.wait()
        return store.compare_and_set_run("run-a", "PENDING", status=targets[i], error=f"writer {i}")

    with ThreadPoolExecutor(len(targets)) as pool:
        won = list(pool.map(attempt, range(len(targets))))
    assert won.count(True) == 1
    winner = won.index(True)
    run = store.get_run("run-a")
    assert (run.status, run.error) == (targets[winner], f"writer {winner}")


def test_job_ids_accumulate_across_requeues_without_duplicates(store: Store) -> None:
    _run(store)
    store.append_job_id("run-a", "101", host="node1")
    store.append_job_id("run-a", "101", host="node1")  # a requeue keeps its SLURM id
    store.append_job_id("run-a", "102", host="node2")
    run = store.get_run("run-a")
    assert run.job_ids == ["101", "102"] and run.hosts == ["node1", "node2"]


def test_list_runs_filters(store: Store) -> None:
    _run(store, "a")
    _run(store, "b", sweep_name="study", trial_number=0)
    _run(store, "c", sweep_name="study", trial_number=1)
    store.update_run("c", status="COMPLETED")
    assert [r.name for r in store.list_runs(sweep_name="study")] == ["b", "c"]
    assert [r.name for r in store.list_runs(status="COMPLETED")] == ["c"]
    assert [r.name for r in store.list_runs(active_only=True)] == ["a", "b"]


def test_checkpoints_are_unique_per_step_and_ordered(store: Store) -> None:
    _run(store)
    store.add_checkpoint("run-a", step=20, path="/c/20", sha256="b" * 64, formats=["diffusers", "peft"])
    store.add_checkpoint("run-a", step=10, path="/c/10", sha256="a" * 64, formats=["diffusers"])
    again = store.add_checkpoint("run-a", step=20, path="/c/20b", sha256="c" * 64, formats=["diffusers"])
    ckpts = store.list_checkpoints("run-a")
    assert [c.step for c in ckpts] == [10, 20]
    assert ckpts[1].id == again.id and ckpts[1].path == "/c/20b" and ckpts[1].sha256 == "c" * 64
    assert store.get_checkpoint("run-a", 10).formats == ["diffusers"]
    with pytest.raises(NotFoundError, match="no checkpoint at step 30"):
        store.get_checkpoint("run-a", 30)


def test_evaluations_unique_on_checkpoint_benchmark_spec(store: Store) -> None:
    _run(store)
    ckpt = store.add_checkpoint("run-a", step=10, path="/c/10", sha256="a" * 64, formats=["diffusers"])
    e1 = store.upsert_evaluation(ckpt.id, benchmark="ocr", benchmark_version="ocr-1", spec_hash="s1")
    e2 = store.upsert_evaluation(ckpt.id, benchmark="ocr", benchmark_version="ocr-1", spec_hash="s1",
                                 status="COMPLETED", score=0.75, ci_low=0.7, ci_high=0.8, num_samples=1018,
                                 sub_scores={"exact": 0.5})
    e3 = store.upsert_evaluation(ckpt.id, benchmark="ocr", benchmark_version="ocr-1", spec_hash="s2")
    assert e1.id == e2.id != e3.id
    evs = store.list_evaluations(run_name="run-a", benchmark="ocr")
    done = next(e for e in evs if e.spec_hash == "s1")
    assert (done.status, done.score, done.ci_low, done.ci_high, done.num_samples) == ("COMPLETED", 0.75, 0.7, 0.8, 1018)
    assert done.sub_scores == {"exact": 0.5}
    with pytest.raises(StoreError, match="unknown evaluation status"):
        store.upsert_evaluation(ckpt.id, benchmark="ocr", benchmark_version="1", spec_hash="s1", status="OK")


def test_sample_scores_replace_on_rescore(store: Store) -> None:
    _run(store)
    ckpt = store.add_checkpoint("run-a", step=1, path="/c/1", sha256="a" * 64, formats=[])
    ev = store.upsert_evaluation(ckpt.id, benchmark="pickscore", benchmark_version="1", spec_hash="s")
    rows = [{"prompt_index": p, "sample_index": s, "score": p + s / 10, "seed": 7, "extra": {"raw": p}}
            for p in range(3) for s in range(2)]
    assert store.add_sample_scores(ev.id, rows) == 6
    store.add_sample_scores(ev.id, [{"prompt_index": 1, "sample_index": 1, "score": -1.0}])
    got = store.get_sample_scores(ev.id)
    assert len(got) == 6
    assert {(r.prompt_index, r.sample_index): r.score for r in got}[(1, 1)] == -1.0
    assert got[0].extra == {"raw": 0} and got[0].seed == 7
    assert store.add_sample_scores(ev.id, []) == 0


def test_metrics_history_without_duplicate_steps(store: Store) -> None:
    _run(store)
    store.log_metrics("run-a", {"eval/r": 0.1, "train/loss": 2.0}, step=0)
    store.log_metrics("run-a", {"eval/r": 0.3}, step=2)
    store.log_metrics("run-a", {"eval/r": 0.2}, step=1)
    store.log_metrics("run-a", {"eval/r": 0.25}, step=1)  # re-logged after a resume: overwrite
    assert store.get_metric_history("run-a", "eval/r") == [(0, 0.1), (1, 0.25), (2, 0.3)]
    assert store.metric_keys("run-a") == ["eval/r", "train/loss"]


def test_sweeps_roundtrip(store: Store) -> None:
    store.create_sweep(study_name="s1", optuna_storage="sqlite:///x.db", resolved_config={"a": 1})
    with pytest.raises(StoreError, match="already exists"):
        store.create_sweep(study_name="s1", optuna_storage="sqlite:///x.db")
    store.update_sweep("s1", mlflow_parent_run_id="p1", status="COMPLETED")
    sw = store.get_sweep("s1")
    assert (sw.mlflow_parent_run_id, sw.status, sw.resolved_config) == ("p1", "COMPLETED", {"a": 1})
    assert [s.study_name for s in store.list_sweeps()] == ["s1"]
    with pytest.raises(NotFoundError):
        store.get_sweep("nope")


def test_deleting_a_run_cascades(store: Store) -> None:
    _run(store)
    ckpt = store.add_checkpoint("run-a", step=1, path="/c/1", sha256="a" * 64, formats=[])
    ev = store.upsert_evaluation(ckpt.id, benchmark="ocr", benchmark_version="1", spec_hash="s")
    store.add_sample_scores(ev.id, [{"prompt_index": 0, "sample_index": 0, "score": 1.0}])
    store.log_metrics("run-a", {"eval/r": 1.0}, step=1)
    store.delete_run("run-a")
    for table in (Checkpoint, Evaluation, SampleScore, MetricPoint):
        assert store.count(table) == 0, table.__tablename__


def test_timestamps_are_utc(store: Store) -> None:
    _run(store)
    before = datetime.now(UTC) - timedelta(seconds=5)
    run = store.get_run("run-a")
    assert as_utc(run.created_at) >= before
    assert as_utc(run.updated_at) >= as_utc(run.created_at)


def test_redacted_url_hides_password() -> None:
    s = Store("postgresql+psycopg://user:hunter2@127.0.0.1:1/db", upgrade=False)
    assert "hunter2" not in s.redacted_url and "user" in s.redacted_url
