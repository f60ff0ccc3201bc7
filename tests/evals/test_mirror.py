"""MLflow mirror of a completed evaluation (platform/evals/mirror.py) against a real platform store
and real MLflow (a local sqlite tracking store, and the real `mlflow server`): mirroring twice, or
again after a crash at each step, leaves exactly one copy of every metric point, child run, table
and image; a down server is one MirrorError with the credentials hidden."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from PIL import Image

from awm_platform.evals.mirror import EVAL_KEY_TAG, PANEL_SIZE, TABLE_FILE, MirrorError, mirror_stored
from awm_platform.runner.proc import FAULT_INJECT_ENV
from awm_platform.store import Store, eval_key
from tests.fixtures.mlflow_server import MlflowServer, free_port

EXPERIMENT = "evals-test"
STEP = 20
TAGS = ("colors", "counting", "position")
N_PROMPTS, N_SAMPLES = 10, 2
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Env:
    """One platform store and one sqlite MLflow store for the module (their set-up, the migrations,
    costs seconds); every test works on its own run, checkpoint sha and so evaluation key."""

    root: Path
    store_url: str
    store: Store
    uri: str  # sqlite tracking URI


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("mirror")
    url = f"sqlite:///{root / 'awm.db'}"
    store = Store(url)
    try:
        yield Env(root=root, store_url=url, store=store, uri=f"sqlite:///{root / 'mlflow.db'}")
    finally:
        store.close()


def _completed_evaluation(env: Env, uri: str, *, with_training_run: bool = True,
                          partial: bool = False) -> tuple[int, str | None]:
    """A training run (its MLflow run created like the trainer's), its checkpoint and a COMPLETED
    GenEval-style evaluation with per-tag scores, sample rows and images, all new."""
    store, client = env.store, MlflowClient(uri)
    name = f"r-{uuid.uuid4().hex[:10]}"
    sha = hashlib.sha256(name.encode()).hexdigest()
    tmp = env.root / name
    training_id = None
    run_name = None
    if with_training_run:
        run_name = name
        store.create_run(name=run_name, config_hash="h", resolved_config={}, output_dir=str(tmp / "run"))
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            EXPERIMENT, artifact_location=(env.root / "mlartifacts").as_uri())
        training_id = client.create_run(exp_id, run_name=run_name).info.run_id
        client.log_metric(training_id, "train/loss", 0.5, step=STEP)
        store.update_run(run_name, mlflow_run_id=training_id)
        store.add_checkpoint(run_name, step=STEP, path=str(tmp / "ckpt"), sha256=sha, formats=["diffusers"])
    spec = {"model": "tiny", "num_steps": 4, "guidance_scale": 1.0, "seed": 0, "weights": "policy",
            "limit": 5 if partial else None}
    images = tmp / "images"
    images.mkdir(parents=True)
    ev, created = store.ensure_evaluation(
        checkpoint_sha256=sha, benchmark="geneval", benchmark_version="1.0+abc", spec_hash="s" * 16, spec=spec,
        target=f"{run_name}@{STEP}" if run_name else "base:tiny", run_name=run_name,
        step=STEP if run_name else None, num_shards=1, partial=partial, images_dir=str(images))
    assert created
    shard = store.claim_shard(ev.id, "worker-1", lease_s=60)
    assert shard is not None
    rows = []
    for p in range(N_PROMPTS):
        for s in range(N_SAMPLES):
            Image.new("RGB", (8, 8), (p * 20, s * 100, 0)).save(images / f"{p:05d}_{s:02d}.png")
            rows.append({"prompt_index": p, "sample_index": s, "seed": 1000 * p + s, "score": float((p + s) % 2),
                         "extra": {"tag": TAGS[p % 3], "prompt": f"a photo of {p}", "correct": bool((p + s) % 2),
                                   "detections": {"dog": [[0, 0, 1, 1]]}}})
    assert store.commit_shard(shard.id, "worker-1", rows, gen_s=1.0, score_s=0.5)
    per_tag = {"colors": 0.5, "counting": 0.25, "position": 0.75}
    assert store.complete_evaluation(ev.id, score=0.5, ci_low=0.3, ci_high=0.7, num_samples=len(rows),
                                     sub_scores={"per_tag": per_tag, "n_prompts": N_PROMPTS}, wall_s=2.0)
    return ev.id, training_id


def _child_runs(client: MlflowClient, key: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`{EVAL_KEY_TAG}` = '{key}'",
                              run_view_type=ViewType.ACTIVE_ONLY)


def _assert_mirrored_once(store: Store, eval_id: int, client: MlflowClient, training_id: str | None,
                          tmp: Path) -> str:
    ev = store.get_evaluation(eval_id)
    key = eval_key(ev.checkpoint_sha256, ev.benchmark, ev.benchmark_version, ev.spec_hash)
    runs = _child_runs(client, key)
    assert len(runs) == 1
    child = runs[0]
    assert ev.mirrored and ev.mlflow_run_id == child.info.run_id
    assert child.info.status == "FINISHED"
    assert child.data.params["benchmark_version"] == "1.0+abc" and child.data.params["target"] == ev.target
    assert child.data.params["num_steps"] == "4" and child.data.params["eval_key"] == key
    assert child.data.tags["awm.partial"] == str(ev.partial).lower()
    for name in ("score", "ci_low", "ci_high", "num_samples", "score/colors"):
        assert len(client.get_metric_history(child.info.run_id, name)) == 1
    assert child.data.metrics["num_samples"] == N_PROMPTS * N_SAMPLES
    # the per-sample table: once, every row once
    top = [f.path for f in client.list_artifacts(child.info.run_id)]
    assert top.count(TABLE_FILE) == 1
    table_path = client.download_artifacts(child.info.run_id, TABLE_FILE, str(tmp / f"dl-{len(os.listdir(tmp))}"))
    table = json.loads(Path(table_path).read_text())
    assert len(table["data"]) == N_PROMPTS * N_SAMPLES
    cols = table["columns"]
    assert {"prompt_index", "sample_index", "seed", "score", "tag", "correct", "detections"} <= set(cols)
    assert sorted((r[cols.index("prompt_index")], r[cols.index("sample_index")]) for r in table["data"]) == [
        (p, s) for p in range(N_PROMPTS) for s in range(N_SAMPLES)]
    # the image panel: sample 0 of the first PANEL_SIZE prompts, each once, and their captions
    panel = sorted(Path(f.path).name for f in client.list_artifacts(child.info.run_id, "panel"))
    assert panel == sorted([f"{p:05d}_00.png" for p in range(PANEL_SIZE)] + ["captions.json"])
    if training_id is None:
        assert "mlflow.parentRunId" not in child.data.tags
    else:
        assert child.data.tags["mlflow.parentRunId"] == training_id
        assert child.info.experiment_id == client.get_run(training_id).info.experiment_id
        prefix = "bench_partial" if ev.partial else "bench"
        expected = {f"{prefix}/geneval": 0.5, f"{prefix}/geneval/colors": 0.5,
                    f"{prefix}/geneval/counting": 0.25, f"{prefix}/geneval/position": 0.75}
        for name, value in expected.items():
            assert [(m.step, m.value) for m in client.get_metric_history(training_id, name)] == [(STEP, value)]
        other = "bench" if ev.partial else "bench_partial"
        assert client.get_metric_history(training_id, f"{other}/geneval") == []
    return child.info.run_id


def test_mirror_twice_duplicates_nothing_sqlite(env: Env, tmp_path: Path) -> None:
    eval_id, training_id = _completed_evaluation(env, env.uri)
    client = MlflowClient(env.uri)
    first = mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT)
    assert _assert_mirrored_once(env.store, eval_id, client, training_id, tmp_path) == first
    assert mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT) == first
    _assert_mirrored_once(env.store, eval_id, client, training_id, tmp_path)


@pytest.mark.mlflow_server
def test_mirror_twice_duplicates_nothing_on_the_real_server(env: Env, tmp_path: Path,
                                                              mlflow_server: MlflowServer) -> None:
    eval_id, training_id = _completed_evaluation(env, mlflow_server.url)
    client = MlflowClient(mlflow_server.url)
    first = mirror_stored(env.store, eval_id, tracking_uri=mlflow_server.url, experiment=EXPERIMENT)
    assert mirror_stored(env.store, eval_id, tracking_uri=mlflow_server.url, experiment=EXPERIMENT) == first
    assert _assert_mirrored_once(env.store, eval_id, client, training_id, tmp_path) == first


_CRASHING_MIRROR = """
import sys
from awm_platform.evals.mirror import mirror_stored
from awm_platform.store import Store
mirror_stored(Store(sys.argv[1]), int(sys.argv[2]), tracking_uri=sys.argv[3], experiment=sys.argv[4])
"""


def test_mirror_after_crashes_at_each_step_completes_without_duplicates(env: Env, tmp_path: Path) -> None:
    """SIGKILL the mirroring process at each step boundary in turn (each restart resumes what the
    previous crash left), then mirror to the end: one copy of everything."""
    eval_id, training_id = _completed_evaluation(env, env.uri)
    client = MlflowClient(env.uri)
    ev = env.store.get_evaluation(eval_id)
    key = eval_key(ev.checkpoint_sha256, ev.benchmark, ev.benchmark_version, ev.spec_hash)
    for point in ("eval_mirror_after_child_run", "eval_mirror_after_table", "eval_mirror_before_finish"):
        proc = subprocess.run([sys.executable, "-c", _CRASHING_MIRROR, env.store_url, str(eval_id), env.uri,
                               EXPERIMENT], check=False, cwd=REPO_ROOT, env={**os.environ, FAULT_INJECT_ENV: point},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert not env.store.get_evaluation(eval_id).mirrored
        runs = _child_runs(client, key)
        assert len(runs) == 1 and runs[0].info.status == "RUNNING"  # left behind by the crash, reused
    mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT)
    _assert_mirrored_once(env.store, eval_id, client, training_id, tmp_path)


def test_racing_mirrors_converge_on_one_child_run(env: Env, tmp_path: Path) -> None:
    """A racing mirror created a second child run with the same key (between our search and its
    create): the next mirror keeps the smallest run id, deletes the other, completes the keeper."""
    eval_id, training_id = _completed_evaluation(env, env.uri)
    client = MlflowClient(env.uri)
    ev = env.store.get_evaluation(eval_id)
    key = eval_key(ev.checkpoint_sha256, ev.benchmark, ev.benchmark_version, ev.spec_hash)
    exp_id = client.get_run(training_id).info.experiment_id
    racers = sorted(client.create_run(exp_id, tags={EVAL_KEY_TAG: key}).info.run_id for _ in range(2))
    assert mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT) == racers[0]
    assert client.get_run(racers[1]).info.lifecycle_stage == "deleted"
    _assert_mirrored_once(env.store, eval_id, client, training_id, tmp_path)


def test_partial_evaluation_is_tagged_and_kept_off_the_bench_curve(env: Env, tmp_path: Path) -> None:
    eval_id, training_id = _completed_evaluation(env, env.uri, partial=True)
    mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT)
    _assert_mirrored_once(env.store, eval_id, MlflowClient(env.uri), training_id, tmp_path)


def test_evaluation_without_training_run_gets_a_child_run_only(env: Env, tmp_path: Path) -> None:
    """base:MODEL (or a checkpoint directory): no training run, the child run goes into `experiment`."""
    eval_id, _ = _completed_evaluation(env, env.uri, with_training_run=False)
    client = MlflowClient(env.uri)
    run_id = mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment="base-evals",
                           artifact_location=(env.root / "mlartifacts").as_uri())
    assert client.get_run(run_id).info.experiment_id == client.get_experiment_by_name("base-evals").experiment_id
    _assert_mirrored_once(env.store, eval_id, client, None, tmp_path)


def test_training_run_deleted_in_mlflow_is_skipped(env: Env) -> None:
    eval_id, training_id = _completed_evaluation(env, env.uri)
    client = MlflowClient(env.uri)
    client.delete_run(training_id)
    run_id = mirror_stored(env.store, eval_id, tracking_uri=env.uri, experiment=EXPERIMENT)
    assert "mlflow.parentRunId" not in client.get_run(run_id).data.tags
    assert client.get_metric_history(training_id, "bench/geneval") == []


def test_unreachable_tracking_server_is_one_mirror_error_without_credentials(env: Env) -> None:
    eval_id, _ = _completed_evaluation(env, env.uri)
    uri = f"http://evaluser:s3cr3t-pw@127.0.0.1:{free_port()}"
    with pytest.raises(MirrorError) as exc:
        mirror_stored(env.store, eval_id, tracking_uri=uri, experiment=EXPERIMENT)
    message = str(exc.value)
    assert "s3cr3t-pw" not in message and "***" in message and "\n" not in message
    assert f"evaluation {eval_id}" in message
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chained traceback with the URI
    ev = env.store.get_evaluation(eval_id)
    assert not ev.mirrored and ev.mlflow_run_id is None


def test_only_completed_evaluations_are_mirrored(env: Env) -> None:
    ev, _ = env.store.ensure_evaluation(checkpoint_sha256=uuid.uuid4().hex * 2, benchmark="ocr",
                                        benchmark_version="1+x", spec_hash="t" * 16, spec={}, target="base:tiny",
                                        num_shards=1)
    with pytest.raises(MirrorError, match=f"evaluation {ev.id} is PENDING"):
        mirror_stored(env.store, ev.id, tracking_uri=env.uri, experiment=EXPERIMENT)
