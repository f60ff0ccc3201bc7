"""One contract suite for the platform store, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from awm_platform.store import (
    Checkpoint,
    EvalShard,
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


def _store_at(tmp_path, revision: str) -> tuple[Store, str]:
    """A SQLite store at an older schema revision (a migration test writes rows as they were then)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Store(url, upgrade=False)
    old.upgrade(revision)
    return old, url


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


def _eval(store: Store, *, sha: str = "a" * 64, benchmark: str = "ocr", version: str = "ocr-1", spec: str = "s1",
          shards: int = 2, **kw) -> tuple[Evaluation, bool]:
    return store.ensure_evaluation(checkpoint_sha256=sha, benchmark=benchmark, benchmark_version=version,
                                   spec_hash=spec, spec={"num_steps": 40}, target=kw.pop("target", "base:m"),
                                   num_shards=shards, **kw)


def test_evaluation_key_is_unique_and_created_with_its_shards(store: Store) -> None:
    _run(store)
    ckpt = store.add_checkpoint("run-a", step=10, path="/c/10", sha256="a" * 64, formats=["diffusers"])
    e1, created1 = _eval(store, checkpoint_id=ckpt.id, run_name="run-a", step=10, target="run-a@10")
    e2, created2 = _eval(store, checkpoint_id=ckpt.id, run_name="run-a", step=10, target="run-a@10")
    e3, created3 = _eval(store, spec="s2", checkpoint_id=ckpt.id, run_name="run-a", step=10, target="run-a@10")
    e4, _ = _eval(store, version="ocr-2", checkpoint_id=ckpt.id, run_name="run-a", step=10, target="run-a@10")
    assert (created1, created2, created3) == (True, False, True)
    assert e1.id == e2.id and len({e1.id, e3.id, e4.id}) == 3
    assert [s.shard_index for s in store.list_shards(e1.id)] == [0, 1]
    assert {s.status for s in store.list_shards(e1.id)} == {"PENDING"}
    assert [e.id for e in store.list_evaluations(run_name="run-a", benchmark="ocr")] == [e1.id, e3.id, e4.id]
    assert store.find_evaluation("a" * 64, "ocr", "ocr-1", "s2").id == e3.id
    assert store.get_evaluation(e1.id).key == e1.key != e3.key
    with pytest.raises(NotFoundError, match="no run named 'ghost'"):
        store.list_evaluations(run_name="ghost")
    with pytest.raises(NotFoundError, match="no evaluation with id 999"):
        store.get_evaluation(999)


def test_racing_ensure_creates_one_evaluation(store: Store) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _eval(store, shards=3), range(16)))
    assert sum(created for _, created in results) == 1
    assert len({ev.id for ev, _ in results}) == 1
    assert store.count(Evaluation) == 1 and len(store.list_shards(results[0][0].id)) == 3


def test_shard_leases_commit_exactly_once(store: Store) -> None:
    ev, _ = _eval(store, shards=2)
    s1 = store.claim_shard(ev.id, "w1", lease_s=60, prefer_index=1)
    assert s1 is not None and (s1.shard_index, s1.attempts, s1.lease_holder) == (1, 1, "w1")
    assert store.get_evaluation(ev.id).status == "RUNNING" and store.get_evaluation(ev.id).started_at is not None
    s0 = store.claim_shard(ev.id, "w2", lease_s=60)
    assert s0 is not None and s0.shard_index == 0
    assert store.claim_shard(ev.id, "w3", lease_s=60) is None  # both leased
    rows = [{"prompt_index": 1, "sample_index": 0, "score": 0.5, "seed": 2**62 + 1, "extra": {"tag": "x"}}]
    assert not store.commit_shard(s1.id, "w2", rows)  # not the holder: nothing written
    assert store.get_sample_scores(ev.id) == []
    assert store.commit_shard(s1.id, "w1", rows, gen_s=1.0, score_s=0.5)
    assert not store.commit_shard(s1.id, "w1", rows)  # DONE: never again
    assert not store.complete_evaluation(ev.id, score=0.5, ci_low=0.5, ci_high=0.5, sub_scores={}, num_samples=1)
    # w2 dies: its lease expires and w3 re-claims shard 0; w2's late commit is refused
    assert store.renew_lease(s0.id, "w2", lease_s=-1)
    s0b = store.claim_shard(ev.id, "w3", lease_s=60)
    assert s0b is not None and (s0b.id, s0b.attempts, s0b.lease_holder) == (s0.id, 2, "w3")
    assert not store.renew_lease(s0.id, "w2", lease_s=60)
    assert not store.commit_shard(s0.id, "w2", [{"prompt_index": 0, "sample_index": 0, "score": 9.0}])
    assert store.commit_shard(s0.id, "w3", [{"prompt_index": 0, "sample_index": 0, "score": 0.25}])
    got = store.get_sample_scores(ev.id)
    assert [(r.prompt_index, r.score, r.seed, r.extra) for r in got] == [(0, 0.25, None, {}),
                                                                        (1, 0.5, 2**62 + 1, {"tag": "x"})]
    done = [store.complete_evaluation(ev.id, score=0.375, ci_low=0.25, ci_high=0.5, sub_scores={"n_prompts": 2},
                                      num_samples=2, wall_s=3.0, gpu_hours=0.001) for _ in range(2)]
    assert done == [True, False]
    final = store.get_evaluation(ev.id)
    assert (final.status, final.score, final.ci_low, final.ci_high, final.num_samples, final.sub_scores) == \
        ("COMPLETED", 0.375, 0.25, 0.5, 2, {"n_prompts": 2})
    assert final.ended_at is not None and final.gpu_hours == pytest.approx(0.001)
    assert store.claim_shard(ev.id, "w4", lease_s=60) is None
    assert not store.fail_evaluation(ev.id, "late") and not store.cancel_evaluation(ev.id)


def test_a_large_shard_commits_in_one_transaction(store: Store) -> None:
    """GenEval's 2212 prompts x 4 samples in one shard: more rows than one INSERT may bind."""
    ev, _ = _eval(store, shards=1)
    shard = store.claim_shard(ev.id, "w", lease_s=60)
    rows = [{"prompt_index": p, "sample_index": k, "score": (p + k) / 10, "seed": p * 4 + k, "extra": {"tag": "t"}}
            for p in range(2212) for k in range(4)]
    assert store.commit_shard(shard.id, "w", rows)
    got = store.get_sample_scores(ev.id)
    assert len(got) == 8848 and got[-1].prompt_index == 2211 and got[-1].seed == 2211 * 4 + 3


def test_release_fail_cancel_retry(store: Store) -> None:
    ev, _ = _eval(store, shards=2)
    s0 = store.claim_shard(ev.id, "w1", lease_s=60)
    assert store.release_shard(s0.id, "w1", "boom")
    again = store.claim_shard(ev.id, "w1", lease_s=60, prefer_index=0)
    assert again is not None and again.attempts == 2 and again.shard_index == 0
    assert store.commit_shard(again.id, "w1", [{"prompt_index": 0, "sample_index": 0, "score": 1.0}])
    s1 = store.claim_shard(ev.id, "w1", lease_s=60)
    assert store.cancel_evaluation(ev.id) and not store.cancel_evaluation(ev.id)
    assert store.get_evaluation(ev.id).status == "CANCELLED"
    assert not store.renew_lease(s1.id, "w1", lease_s=60)  # a cancelled evaluation's worker stops
    assert not store.commit_shard(s1.id, "w1", [{"prompt_index": 1, "sample_index": 0, "score": 1.0}])
    assert store.claim_shard(ev.id, "w2", lease_s=60) is None
    assert store.retry_evaluation(ev.id) and not store.retry_evaluation(ev.id)
    shards = store.list_shards(ev.id)
    assert [(s.status, s.attempts) for s in shards] == [("DONE", 2), ("PENDING", 0)]  # a DONE shard is kept
    assert store.get_evaluation(ev.id).status == "PENDING"
    assert store.fail_evaluation(ev.id, "weights missing")
    assert (store.get_evaluation(ev.id).status, store.get_evaluation(ev.id).error) == ("FAILED", "weights missing")


def test_one_scheduler_claims_a_submission(store: Store) -> None:
    ev, _ = _eval(store)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.claim_submission(ev.id, f"t{i}", stale_after_s=600), range(8)))
    assert won.count(True) == 1
    assert store.claim_submission(ev.id, "late", stale_after_s=0)  # stale: the job is presumed gone
    assert not store.release_submission(ev.id, "t0") and not store.claim_submission(ev.id, "x", stale_after_s=600)
    assert store.release_submission(ev.id, "late")  # its submission failed: claimable at once
    assert store.claim_submission(ev.id, "late", stale_after_s=600)
    store.record_eval_job([ev.id], cluster="local", job_dir="/jobs/j1", job_id="123")
    store.record_eval_job([ev.id], cluster="local", job_dir="/jobs/j2", job_id="456")
    got = store.get_evaluation(ev.id)
    assert (got.job_ids, got.job_dir, got.cluster, got.submit_token) == (["123", "456"], "/jobs/j2", "local", "late")
    store.mark_mirrored(ev.id, "mlflow-run")
    assert (store.get_evaluation(ev.id).mirrored, store.get_evaluation(ev.id).mlflow_run_id) == (True, "mlflow-run")


def test_migration_0002_keeps_evaluations_written_before_it(tmp_path) -> None:
    import sqlalchemy as sa

    old, url = _store_at(tmp_path, "0001")
    now = datetime.now(UTC)
    with old.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO runs (id, name, config_hash, resolved_config, status, job_ids, hosts, "
                             "num_gpus, gpu_hours, output_dir, created_at, updated_at) VALUES (1, 'r', 'h', '{}', "
                             "'COMPLETED', '[]', '[]', 1, 0, '/r', :t, :t)"), {"t": now})
        conn.execute(sa.text("INSERT INTO checkpoints (id, run_id, step, path, sha256, formats, created_at) "
                             "VALUES (1, 1, 20, '/r/c', :sha, '[]', :t)"), {"sha": "d" * 64, "t": now})
        conn.execute(sa.text("INSERT INTO evaluations (id, checkpoint_id, benchmark, benchmark_version, spec_hash, "
                             "status, score, sub_scores, num_samples, created_at, updated_at) VALUES (1, 1, 'ocr', "
                             "'ocr-1', 's', 'COMPLETED', 0.8, '{}', 10, :t, :t)"), {"t": now})
    old.close()
    store = Store(url)
    ev = store.get_evaluation(1)
    assert (ev.checkpoint_sha256, ev.run_name, ev.step, ev.target, ev.score) == ("d" * 64, "r", 20, "r@20", 0.8)
    assert store.find_evaluation("d" * 64, "ocr", "ocr-1", "s").id == 1
    store.close()


def test_deleting_a_run_cascades_to_its_evaluations(store: Store) -> None:
    _run(store)
    ckpt = store.add_checkpoint("run-a", step=1, path="/c/1", sha256="a" * 64, formats=[])
    ev, _ = _eval(store, checkpoint_id=ckpt.id, run_name="run-a", step=1, shards=1)
    shard = store.claim_shard(ev.id, "w", lease_s=60)
    store.commit_shard(shard.id, "w", [{"prompt_index": 0, "sample_index": 0, "score": 1.0}])
    store.log_metrics("run-a", {"eval/r": 1.0}, step=1)
    store.delete_run("run-a")
    for table in (Checkpoint, Evaluation, EvalShard, SampleScore, MetricPoint):
        assert store.count(table) == 0, table.__tablename__


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


def test_timestamps_are_utc(store: Store) -> None:
    _run(store)
    before = datetime.now(UTC) - timedelta(seconds=5)
    run = store.get_run("run-a")
    assert as_utc(run.created_at) >= before
    assert as_utc(run.updated_at) >= as_utc(run.created_at)


def test_redacted_url_hides_password() -> None:
    s = Store("postgresql+psycopg://user:hunter2@127.0.0.1:1/db", upgrade=False)
    assert "hunter2" not in s.redacted_url and "user" in s.redacted_url


def _params(store: Store, run_name: str) -> dict[str, list]:
    import sqlalchemy as sa

    from awm_platform.store import Run, RunParam

    out: dict[str, list] = {}
    with store.session() as s:
        for key, num, text in s.execute(sa.select(RunParam.key, RunParam.num_value, RunParam.text_value)
                                        .join(Run, Run.id == RunParam.run_id).where(Run.name == run_name)):
            out.setdefault(key, []).append(num if text is None else text)
    return {k: sorted(v) for k, v in out.items()}


def test_a_run_is_created_with_its_leaderboard_params(store: Store) -> None:
    store.create_sweep(study_name="sw", optuna_storage="sqlite:///o.db",
                       resolved_config={"sweep": {"params": {"train.beta": {"type": "float"},
                                                             "lora.rank": {"type": "int"},
                                                             "sample.noise_level": {"type": "float"}}}})
    conf = {"pretrained": {"model": "m/sd", "family": "sd3"}, "seed": 7, "lora": {"rank": 8},
            "train": {"beta": 0.5, "ema": True, "weighting": "ghuber", "learning_rate": 3e-4},
            "tags": ["baseline", "v2", "baseline"]}
    store.create_run(name="t1", config_hash="h", resolved_config=conf, output_dir="/t1", sweep_name="sw",
                     trial_number=0)
    assert _params(store, "t1") == {
        "method": ["awm"], "pretrained.model": ["m/sd"], "pretrained.family": ["sd3"], "seed": [7.0],
        "train.beta": [0.5], "train.ema": ["true"], "train.weighting": ["ghuber"], "train.learning_rate": [3e-4],
        "lora.rank": [8.0],  # a search-space key: present; sample.noise_level: absent from the config, skipped
        "tag": ["baseline", "v2"]}
    _run(store, "plain")  # no sweep, no tags: the listed keys only
    assert _params(store, "plain") == {"method": ["awm"], "train.beta": [0.001]}
    from awm_platform.store import RunParam

    store.delete_run("t1")  # its parameter rows go with it
    assert store.count(RunParam) == 2


def test_a_runs_auto_family_is_recorded_as_the_family_it_detects(store: Store, tmp_path) -> None:
    """pretrained.family `auto` is filtered on as what it resolves to (the family evaluations record):
    a local pipeline folder's model_index.json; a model this host cannot read stays `auto`."""
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    for name, model in (("local", str(pipe)), ("hub", "org/not-here")):
        store.create_run(name=name, config_hash="h", output_dir=f"/{name}",
                         resolved_config={"pretrained": {"model": model, "family": "auto"}})
    assert _params(store, "local")["pretrained.family"] == ["flux"]
    assert _params(store, "hub")["pretrained.family"] == ["auto"]


def test_an_evaluation_records_its_weights_and_comparable_group(store: Store) -> None:
    from awm_platform.store import compare_hash

    def ev(sha: str, spec: dict, **kw) -> Evaluation:
        return store.ensure_evaluation(checkpoint_sha256=sha, benchmark="ocr", benchmark_version="v1",
                                       spec_hash=str(sorted(spec.items())), spec=spec, target="t", num_shards=1,
                                       **kw)[0]

    policy = ev("a" * 64, {"num_steps": 40, "weights": "policy"})
    ema = ev("a" * 64, {"num_steps": 40, "weights": "ema"})
    base = ev("b" * 64, {"num_steps": 40, "weights": "base"})
    other = ev("a" * 64, {"num_steps": 10, "weights": "policy"})
    partial = ev("c" * 64, {"num_steps": 40, "weights": "policy"}, partial=True)
    assert (policy.weights, ema.weights, base.weights) == ("policy", "ema", "base")
    assert policy.compare_hash == ema.compare_hash == base.compare_hash  # paired: they differ in weights only
    assert len({policy.compare_hash, other.compare_hash, partial.compare_hash}) == 3
    assert policy.compare_hash == compare_hash("ocr", "v1", {"weights": "x", "num_steps": 40}, False)
    assert store.get_evaluation(policy.id).compare_hash == policy.compare_hash


def test_migration_0003_backfills_weights_groups_and_params(tmp_path) -> None:
    import sqlalchemy as sa

    from awm_platform.store import compare_hash

    old, url = _store_at(tmp_path, "0002")
    now = datetime.now(UTC)
    with old.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO sweeps (id, study_name, optuna_storage, resolved_config, status, "
                             "created_at, updated_at) VALUES (1, 'sw', 'x', :c, 'RUNNING', :t, :t)"),
                     {"c": '{"sweep": {"params": {"lora.rank": {}}}}', "t": now})
        conn.execute(sa.text("INSERT INTO runs (id, name, config_hash, resolved_config, status, job_ids, hosts, "
                             "num_gpus, gpu_hours, output_dir, sweep_name, created_at, updated_at) VALUES (1, 'r', "
                             "'h', :c, 'COMPLETED', '[]', '[]', 1, 0, '/r', 'sw', :t, :t)"),
                     {"c": '{"train": {"beta": 0.2}, "lora": {"rank": 4}, "tags": ["x"]}', "t": now})
        for i, weights in ((1, "ema"), (2, None)):
            spec = '{"num_steps": 40' + (f', "weights": "{weights}"' if weights else "") + "}"
            conn.execute(sa.text("INSERT INTO evaluations (id, checkpoint_sha256, target, benchmark, "
                                 "benchmark_version, spec_hash, spec, status, sub_scores, num_samples, created_at, "
                                 "updated_at) VALUES (:i, :sha, 't', 'ocr', 'v1', :i, :spec, 'COMPLETED', '{}', 1, "
                                 ":t, :t)"), {"i": i, "sha": str(i) * 64, "spec": spec, "t": now})
    old.close()
    store = Store(url)
    ema, legacy = store.get_evaluation(1), store.get_evaluation(2)
    assert (ema.weights, legacy.weights) == ("ema", "policy")
    assert ema.compare_hash == legacy.compare_hash == compare_hash("ocr", "v1", {"num_steps": 40}, False)
    assert _params(store, "r") == {"method": ["awm"], "train.beta": [0.2], "lora.rank": [4.0], "tag": ["x"]}
    store.close()


def test_an_evaluation_carries_its_runs_sweep(store: Store) -> None:
    """evaluations.sweep_name: the run's sweep, copied when the evaluation is written (ensure and
    import alike), so the leaderboard's sweep filter is an index range; a run's sweep is fixed."""
    store.create_sweep(study_name="sw", optuna_storage="sqlite:///o.db", resolved_config={})
    store.create_run(name="in-sweep", config_hash="h", resolved_config={}, output_dir="/a", sweep_name="sw",
                     trial_number=0)
    _run(store, "alone")
    common = {"benchmark": "ocr", "benchmark_version": "v1", "spec_hash": "s", "spec": {}, "target": "t"}
    in_sweep, _ = store.ensure_evaluation(checkpoint_sha256="1" * 64, num_shards=1, run_name="in-sweep", step=1,
                                          **common)
    alone, _ = store.ensure_evaluation(checkpoint_sha256="2" * 64, num_shards=1, run_name="alone", step=1, **common)
    base, _ = store.ensure_evaluation(checkpoint_sha256="3" * 64, num_shards=1, **common)
    store.import_evaluations([{"checkpoint_sha256": sha, "run_name": run, "step": 2, "score": 0.5, "ci_low": 0.4,
                               "ci_high": 0.6, "num_samples": 1, **common}
                              for sha, run in (("4" * 64, "in-sweep"), ("5" * 64, "alone"))])
    swept = {e.checkpoint_sha256[0]: e.sweep_name for e in store.list_evaluations()}
    assert swept == {"1": "sw", "2": None, "3": None, "4": "sw", "5": None}
    assert (in_sweep.sweep_name, alone.sweep_name, base.sweep_name) == ("sw", None, None)
    with pytest.raises(StoreError, match="cannot update run fields \\['sweep_name'\\]"):
        store.update_run("alone", sweep_name="sw")


def test_migration_0003s_frozen_derivations_match_the_store() -> None:
    """Migration 0003 backfills with its own frozen copies of `compare_hash` and `leaderboard_params`
    (a migration must not change with the live code). While the live ones agree, rows the store
    writes and rows 0003 backfilled pair up; if this fails, the live derivation changed: existing
    rows need a new migration that recomputes them."""
    import importlib.util

    from awm_platform.store import compare_hash
    from awm_platform.store.store import leaderboard_params

    path = Path(__file__).resolve().parents[2] / "platform/store/migrations/versions/0003_leaderboard.py"
    spec = importlib.util.spec_from_file_location("migration_0003", path)
    assert spec is not None and spec.loader is not None
    frozen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frozen)
    specs = [{}, {"num_steps": 40, "weights": "ema"}, {"guidance": None, "num_steps": 10},
             {"guidance": 3.5, "weights": "base", "limit": None}]
    for sp, partial in itertools.product(specs, (False, True)):
        assert frozen.compare_hash("ocr", "v1", sp, partial) == compare_hash("ocr", "v1", sp, partial)
    confs = [({}, None), ({"method": "flow_grpo", "train": {"beta": 0.1, "ema": True}, "tags": ["b", "a", "b"]},
                         {"lora.rank": {}, "train.beta": {}}),
             ({"pretrained": {"model": "m", "family": "flux"}, "seed": 3, "lora": {"rank": 8}, "tags": "x"},
              {"lora.rank": {}}),
             ({"pretrained": {"model": "m", "family": "auto"}}, None)]  # resolved by create_run, not here
    for conf, space in confs:
        assert frozen.leaderboard_params(conf, space) == leaderboard_params(conf, space)


def test_migration_0004_backfills_the_evaluations_sweep(tmp_path) -> None:
    import sqlalchemy as sa

    old, url = _store_at(tmp_path, "0003")
    now = datetime.now(UTC)
    with old.engine.begin() as conn:
        for i, (run, sweep) in enumerate((("a", "sw"), ("b", None)), start=1):
            conn.execute(sa.text("INSERT INTO runs (id, name, config_hash, resolved_config, status, job_ids, hosts, "
                                 "num_gpus, gpu_hours, output_dir, sweep_name, created_at, updated_at) VALUES (:i, "
                                 ":n, 'h', '{}', 'COMPLETED', '[]', '[]', 1, 0, '/r', :s, :t, :t)"),
                         {"i": i, "n": run, "s": sweep, "t": now})
        for i, run in ((1, "a"), (2, "b"), (3, None)):
            conn.execute(sa.text("INSERT INTO evaluations (id, checkpoint_sha256, target, run_name, benchmark, "
                                 "benchmark_version, spec_hash, spec, weights, compare_hash, status, sub_scores, "
                                 "num_samples, created_at, updated_at) VALUES (:i, :sha, 't', :r, 'ocr', 'v1', :i, "
                                 "'{}', 'policy', 'c', 'COMPLETED', '{}', 1, :t, :t)"),
                         {"i": i, "sha": str(i) * 64, "r": run, "t": now})
    old.close()
    with Store(url) as store:
        assert [store.get_evaluation(i).sweep_name for i in (1, 2, 3)] == ["sw", None, None]


def test_downgrading_the_leaderboard_revisions_keeps_every_evaluation_and_its_rows(store: Store) -> None:
    """0004 -> 0002 and back: the added columns go, nothing else does (a batch-mode column drop on
    SQLite rebuilds the table, and dropping the old one with foreign keys on deletes every shard and
    sample row of every evaluation)."""
    from alembic import command

    ev, _ = store.ensure_evaluation(checkpoint_sha256="a" * 64, benchmark="ocr", benchmark_version="v1",
                                    spec_hash="s", spec={"weights": "ema"}, target="t", num_shards=2)
    shard = store.claim_shard(ev.id, "w", lease_s=60)
    assert shard is not None and store.commit_shard(shard.id, "w", [
        {"prompt_index": i, "sample_index": 0, "score": 0.5} for i in range(3)])
    counts = (store.count(Evaluation), store.count(EvalShard), store.count(SampleScore))
    assert counts == (1, 2, 3)
    command.downgrade(store._alembic_config(), "0002")
    assert store.current_revision() == "0002"
    assert (store.count(Evaluation), store.count(EvalShard), store.count(SampleScore)) == counts
    store.upgrade()  # and back: the rows are backfilled again
    assert store.get_evaluation(ev.id).weights == "ema"
    assert (store.count(Evaluation), store.count(EvalShard), store.count(SampleScore)) == counts


def test_import_evaluations_records_completed_rows_as_ensure_does(store: Store) -> None:
    from awm_platform.store import EvalStatus, compare_hash

    records = [{"checkpoint_sha256": f"{i}" * 64, "benchmark": "ocr", "benchmark_version": "v1", "spec_hash": "s",
                "spec": {"num_steps": 40, "weights": "ema" if i == 2 else "policy"}, "target": f"r@{i}",
                "run_name": "r", "step": i, "num_shards": 2, "score": 0.1 * i, "ci_low": 0.0, "ci_high": 1.0,
                "sub_scores": {"per_tag": {"a": 0.5}}, "num_samples": 10} for i in range(1, 4)]
    assert store.import_evaluations(records) == 3
    evs = store.list_evaluations(status=EvalStatus.COMPLETED)
    assert [(e.step, e.score, e.weights, e.sub_scores) for e in evs] == [
        (i, pytest.approx(0.1 * i), "ema" if i == 2 else "policy", {"per_tag": {"a": 0.5}}) for i in range(1, 4)]
    assert {e.compare_hash for e in evs} == {compare_hash("ocr", "v1", {"num_steps": 40}, False)}
    assert [s.status for e in evs for s in store.list_shards(e.id)] == ["DONE"] * 6
    ev, created = store.ensure_evaluation(checkpoint_sha256="1" * 64, benchmark="ocr", benchmark_version="v1",
                                          spec_hash="s", spec={}, target="x", num_shards=1)
    assert not created and ev.id == evs[0].id  # the scheduler sees it as done: nothing to evaluate again
    with pytest.raises(StoreError, match="already in the store"):
        store.import_evaluations(records[:1] + [dict(records[0], checkpoint_sha256="9" * 64)])
    assert store.find_evaluation("9" * 64, "ocr", "v1", "s") is None  # one transaction: nothing written


def test_sqlite_planner_statistics_follow_the_store_size(store: Store) -> None:
    import sqlalchemy as sa

    if store.dialect != "sqlite":
        assert not store.refresh_statistics(force=True)  # PostgreSQL analyzes by itself
        return
    assert not store.refresh_statistics()  # empty: nothing to learn
    _eval(store, sha="e" * 64)
    _eval(store, sha="f" * 64)
    assert store.refresh_statistics()  # 0 -> 2 evaluations: no statistics yet
    assert not store.refresh_statistics()  # nothing changed
    for i in range(3):
        _eval(store, sha=f"{i}" * 64)
    assert store.refresh_statistics()  # 2 -> 5: more than doubled
    with store.engine.connect() as conn:
        stat = conn.execute(sa.text("SELECT stat FROM sqlite_stat1 WHERE tbl = 'evaluations'")).scalars().first()
    assert stat is not None and stat.split()[0] == "5"
    ro = Store(store.url, read_only=True)
    assert not ro.refresh_statistics(force=True)  # a read-only store writes nothing
    ro.close()


def test_reads_see_one_snapshot_write_nothing_and_leave_the_connection_writable(store: Store) -> None:
    import sqlalchemy as sa

    _run(store, "run-a")
    with store.reading() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        _run(store, "run-b")  # committed by another connection meanwhile: not in this read's snapshot
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        if store.dialect == "postgresql":
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                conn.execute(sa.text("UPDATE runs SET status = 'FAILED'"))
    _run(store, "run-c")  # the pooled connection the read used writes again
    assert [r.name for r in store.list_runs()] == ["run-a", "run-b", "run-c"]
    assert {r.status for r in store.list_runs()} == {"PENDING"}


@pytest.mark.postgres
def test_postgres_reads_keep_their_prepared_statements(fresh_postgres_db: str) -> None:
    """psycopg drops a connection's prepared statements on ROLLBACK: reads that rolled back were
    parsed and planned afresh every time. Reads end with COMMIT, so a read repeated on a pooled
    connection is prepared once (psycopg: from its 5th execution) and stays prepared."""
    import sqlalchemy as sa

    store = Store(fresh_postgres_db)
    _run(store, "run-a")
    statement = sa.select(sa.func.count()).select_from(sa.table("runs"))
    for _ in range(12):  # on any pooled connection (the pool reuses the last one returned)
        with store.reading() as conn:
            assert conn.execute(statement).scalar() == 1
    with store.reading() as conn:
        prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
    store.close()
    assert any("count(*)" in p and "runs" in p for p in prepared), prepared


def test_read_once_returns_one_statements_rows_at_each_calls_state(store: Store) -> None:
    import sqlalchemy as sa

    from awm_platform.store import Run

    _run(store, "run-a")
    names = sa.select(Run.name).order_by(Run.name)
    assert [r.name for r in store.read_once(names)] == ["run-a"]
    _run(store, "run-b")
    assert [r.name for r in store.read_once(names)] == ["run-a", "run-b"]
    if store.dialect == "postgresql":  # outside a transaction block: each statement is its own transaction
        began = [store.read_once(sa.select(sa.func.now()), reused=reused)[0][0] for reused in (False, False, True, True)]
        assert began == sorted(set(began))


def test_a_reused_read_returns_what_sqlalchemy_returns(store: Store) -> None:
    """`read_once(..., reused=True)` (on PostgreSQL: compiled once, run on the driver) gives the rows
    SQLAlchemy gives, value for value and type for type, and `read_once`'s binary results are the text
    results of a `reading()` connection: ints, floats, text, booleans, JSON, timestamps, NULLs, an
    expanded IN list, a LIKE with its escape, and a column SQLAlchemy converts (numeric read as float:
    a result processor); and the values the store changes in between."""
    import sqlalchemy as sa

    from awm_platform.store import Run

    for name in ("run-a", "run-b", "run_c"):
        _run(store, name)
    store.update_run("run-b", gpu_hours=1.5)
    statement = (sa.select(Run.id, Run.name, Run.gpu_hours, Run.resolved_config, Run.created_at, Run.trial_number,
                           (Run.gpu_hours > 1).label("busy"),
                           sa.cast(Run.gpu_hours * 2, sa.Numeric(10, 2, asdecimal=False)).label("doubled"))
                 .where(Run.name.in_(["run-a", "run-b", "run_c", "nope"]), Run.name.like("run\\_%", escape="\\")
                        | Run.name.like("run-%"))
                 .order_by(Run.name))
    expected = store.read_once(statement)
    got = store.read_once(statement, reused=True)
    with store.reading() as conn:  # the store's main pool: text results on PostgreSQL
        assert conn.execute(statement).all() == expected
    assert [r.name for r in expected] == ["run-a", "run-b", "run_c"]
    assert got == expected and got[0]._fields == expected[0]._fields
    assert [[type(v) for v in r] for r in got] == [[type(v) for v in r] for r in expected]
    assert got[1].doubled == 3.0 and isinstance(got[1].doubled, float) and got[0].trial_number is None
    store.update_run("run-a", gpu_hours=4.0)
    assert store.read_once(statement, reused=True)[0].gpu_hours == 4.0  # compiled once, read afresh each time


@pytest.mark.postgres
def test_postgres_read_once_cannot_write(fresh_postgres_db: str) -> None:
    """On PostgreSQL `read_once`'s own pool opens read-only sessions (on SQLite it is a `reading()`
    transaction, which nothing but its callers keeps from writing); a reused statement's driver error is
    SQLAlchemy's, as from a `Connection`."""
    import sqlalchemy as sa

    from awm_platform.store import Run

    with Store(fresh_postgres_db) as store:
        _run(store, "run-a")
        write = sa.update(Run).values(status="FAILED").returning(Run.id)
        for reused in (False, True):
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                store.read_once(write, reused=reused)
        with pytest.raises(sa.exc.DataError, match="division by zero"):
            store.read_once(sa.select((sa.func.count() / 0).label("x")).select_from(Run), reused=True)
        assert {r.status for r in store.list_runs()} == {"PENDING"}
        assert [r.name for r in store.read_once(sa.select(Run.name), reused=True)] == ["run-a"]  # the pool is fine


@pytest.mark.postgres
def test_a_statement_sqlalchemy_must_convert_a_value_of_is_not_run_on_the_driver(fresh_postgres_db: str) -> None:
    """A bound value with a bind processor (JSON here) is compiled for SQLAlchemy only: the store
    reads it the usual way and gets the same rows."""
    import sqlalchemy as sa

    from awm_platform.store import Run
    from awm_platform.store.driver_read import compile_driver_read

    with Store(fresh_postgres_db) as store:
        _run(store, "run-a")
        plain = sa.select(Run.name).where(Run.name == "run-a")
        converted = sa.select(Run.name, sa.bindparam("j", {"a": 1}, type_=sa.JSON).label("j"))
        engine = store.engine
        assert compile_driver_read(plain, engine) is not None
        assert compile_driver_read(converted, engine) is None
        assert store.read_once(converted, reused=True) == store.read_once(converted) == [("run-a", {"a": 1})]


@pytest.mark.postgres
@pytest.mark.parametrize("reused", [False, True])
def test_read_once_reads_again_on_a_new_connection_when_the_server_dropped_its_own(fresh_postgres_db: str,
                                                                                   reused: bool) -> None:
    """`read_once`'s pool skips the pre-ping round trip: a pooled connection the server closed
    (a restart, an idle timeout, an administrator) fails its statement, and the read is made again,
    once, on a new connection, through SQLAlchemy and on the driver (`reused`). Here the server ends
    every session of the store's database."""
    import sqlalchemy as sa

    from awm_platform.store import Run

    store = Store(fresh_postgres_db)
    _run(store, "run-a")
    names = sa.select(Run.name)
    pid_statement = sa.select(sa.func.pg_backend_pid())
    assert [r.name for r in store.read_once(names, reused=reused)] == ["run-a"]
    pid = store.read_once(pid_statement, reused=reused)[0][0]
    with store.session() as s:  # the store's other pool: a different session, which ends the others
        ended = s.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalars().all()
    assert ended and all(ended)
    assert [r.name for r in store.read_once(names, reused=reused)] == ["run-a"]  # no error: read again
    assert store.read_once(pid_statement, reused=reused)[0][0] != pid
    store.close()


def test_deleting_a_run_logs_its_name_and_time(store: Store) -> None:
    from awm_platform.store import DeletedRun

    _run(store, "run-a")
    _run(store, "run-b")
    t0 = datetime.now(UTC)
    store.delete_run("run-b")
    with pytest.raises(NotFoundError):
        store.delete_run("run-b")  # nothing logged for a run that is not there
    with store.session() as s:
        log = [(d.name, as_utc(d.deleted_at)) for d in s.query(DeletedRun).order_by(DeletedRun.id)]
    assert [name for name, _ in log] == ["run-b"] and t0 - timedelta(seconds=1) <= log[0][1] <= datetime.now(UTC)
    assert [r.name for r in store.list_runs()] == ["run-a"]
