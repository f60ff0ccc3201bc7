"""MLflow tracking: batching, the disk spool across a real server outage, run metadata."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.mlflow_server import MlflowServer, free_port


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _logger(run_dir: Path, uri: str, **kw):
    from awm_platform.runner.tracking import MlflowLogger

    return MlflowLogger(
        run_dir,
        tracking_uri=uri,
        experiment="spool-test",
        run_name=run_dir.name,
        tags={"awm.config_hash": "abc"},
        params={"train.beta": "0.001"},
        **kw,
    )


def test_embedded_default_batches_and_dedups(tmp_path: Path, isolated_awm_home: Path) -> None:
    from mlflow.tracking import MlflowClient

    from awm_platform.paths import default_mlflow_tracking_uri

    uri = default_mlflow_tracking_uri()
    assert uri == f"sqlite:///{isolated_awm_home / 'mlflow.db'}"
    run_dir = tmp_path / "r-embedded"
    lg = _logger(run_dir, uri, flush_interval_s=60, background=True)
    for step in range(1, 301):
        lg.log_metrics({"train/loss": step * 0.5, "train/lr": 1e-3}, step)
    lg.log_metrics({"train/loss": 999.0}, 300)  # a re-logged step (resume): dropped
    lg.close()
    # 600 values went out in a single flush (the interval is 60 s): batched, not per value
    assert lg.stats["sent"] == 600 and lg.stats["flushes"] <= 2
    client = MlflowClient(uri)
    hist = _history(client, lg.run_id, "train/loss")
    assert hist == [(s, s * 0.5) for s in range(1, 301)]
    # a "requeued job": a new logger on the same run dir reuses the MLflow run and its marks
    lg2 = _logger(run_dir, uri, background=False)
    assert lg2.run_id == lg.run_id
    lg2.log_metrics({"train/loss": 1.0}, 300)  # already logged -> dropped
    lg2.log_metrics({"train/loss": 150.5}, 301)
    lg2.close()
    assert _history(client, lg.run_id, "train/loss")[-2:] == [(300, 150.0), (301, 150.5)]
    run = client.get_run(lg.run_id)
    assert run.data.params["train.beta"] == "0.001" and run.data.tags["awm.config_hash"] == "abc"


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_spool_survives_server_outage(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    """Stop the real server mid-run, keep logging (spooled to disk), restart it on the same
    port and backend: the history is complete, with no duplicates."""
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "r-spool"
    lg = _logger(run_dir, mlflow_server.url, flush_interval_s=0.2, retry_interval_s=0.5)
    expected = []
    for step in range(1, 21):
        lg.log_metrics({"train/loss": float(step)}, step)
        expected.append((step, float(step)))
    assert lg.flush()
    assert lg.run_id is not None
    mlflow_server.stop()
    try:
        for step in range(21, 41):
            lg.log_metrics({"train/loss": float(step)}, step)
            expected.append((step, float(step)))
            time.sleep(0.02)
        assert not lg.flush()
        spool = run_dir / "mlflow_spool" / "metrics.jsonl"
        assert spool.exists() and len(spool.read_text().splitlines()) >= 20
    finally:
        mlflow_server.start()
    for step in range(41, 51):
        lg.log_metrics({"train/loss": float(step)}, step)
        expected.append((step, float(step)))
    time.sleep(0.6)  # past the retry interval
    lg.close()
    assert not (run_dir / "mlflow_spool" / "metrics.jsonl").exists()
    assert lg.stats["replayed"] >= 20
    client = MlflowClient(mlflow_server.url)
    assert _history(client, lg.run_id, "train/loss") == expected


def test_unreachable_server_spools_then_replay(tmp_path: Path) -> None:
    """No server at all while the job runs: everything is spooled (nothing lost, nothing
    blocks) and `replay_spool` sends it later (here to an embedded store standing in)."""
    from mlflow.tracking import MlflowClient

    from awm_platform.runner.spec import JobSpec
    from awm_platform.runner.tracking import replay_spool

    run_dir = tmp_path / "r-offline"
    dead = f"http://127.0.0.1:{free_port()}"
    lg = _logger(run_dir, dead, background=False)
    t0 = time.monotonic()
    for step in range(1, 11):
        lg.log_metrics({"eval/jpeg": step / 10}, step)
        lg.flush()
    lg.close()
    assert time.monotonic() - t0 < 10, "an unreachable server must not stall the trainer"
    assert lg.run_id is None and lg.stats["spooled"] == 10
    uri = f"sqlite:///{tmp_path / 'late.db'}"
    JobSpec(
        name="r-offline",
        config={},
        cluster="debug",
        store_url="sqlite://",
        tracking_uri=dead,
        artifact_root=(tmp_path / "art").as_uri(),
        experiment="spool-test",
    ).save(run_dir)
    assert replay_spool(run_dir, tracking_uri=uri)
    info = json.loads((run_dir / "capsule" / "mlflow.json").read_text())
    assert _history(MlflowClient(uri), info["run_id"], "eval/jpeg") == [(s, s / 10) for s in range(1, 11)]


def test_params_are_flattened_and_truncated() -> None:
    from awm_platform.config import ExperimentConfig, resolved_config
    from awm_platform.runner.tracking import MAX_PARAM_VALUE, run_params

    cfg = ExperimentConfig.model_validate(
        {"launcher": {"setup": ["x" * 7000]}, "storage": {"url": "postgresql://u:hunter2@db/awm"}}
    )
    params = run_params(resolved_config(cfg))
    assert params["train.beta"] == "0.001" and params["derived.world_size"] == "1"
    assert len(params["launcher.setup"]) <= MAX_PARAM_VALUE
    assert "hunter2" not in json.dumps(params)
    assert os.environ.get("MLFLOW_RUN_ID") is None


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifact_files(client, run_id, f.path) if f.is_dir else [f.path]
    return out


_CRASHING_REPLAY = """
import os, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
from awm_platform.runner import tracking
from awm_platform.runner.tracking import replay_spool

tracking.MAX_BATCH = 10  # 30 spooled values -> 3 log_batch calls (a small, quick server load)
where = sys.argv[2]
state = {"batches": 0}
log_batch, log_artifacts = MlflowClient.log_batch, MlflowClient.log_artifacts

def crashing_log_batch(self, run_id, metrics=(), **kw):
    out = log_batch(self, run_id, metrics=metrics, **kw)
    if metrics:
        state["batches"] += 1
        if where == "metrics" and state["batches"] == 2:
            os._exit(9)  # killed between two batches of the replayed spool
    return out

def crashing_log_artifacts(self, *a, **kw):
    log_artifacts(self, *a, **kw)
    if where == "artifacts":
        os._exit(9)  # killed after uploading a bundle, before removing it from the spool

MlflowClient.log_batch = crashing_log_batch
MlflowClient.log_artifacts = crashing_log_artifacts
replay_spool(Path(sys.argv[1]))
sys.exit(0)
"""


@pytest.mark.slow
@pytest.mark.mlflow_server
def test_spooled_artifacts_and_a_crashed_replay_leave_no_duplicates(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """The job ends during an outage with metrics (3 batches' worth here), images and a checkpoint
    in its spool. A replay killed between two metric batches, then one killed after uploading
    an artifact bundle, then `awm status` (which replays finished runs' spools): MLflow has
    every value once and every artifact once; the spool is empty."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient
    from PIL import Image
    from typer.testing import CliRunner

    from awm_platform.cli.main import app
    from awm_platform.runner.spec import JobSpec
    from awm_platform.runner.tracking import spool_pending
    from awm_platform.store import Store

    run_dir = tmp_path / "r-crash"
    lg = _logger(run_dir, mlflow_server.url, flush_interval_s=0.2, retry_interval_s=0.5)
    lg.log_metrics({"train/loss": 0.0}, 0)
    assert lg.flush() and lg.run_id  # the MLflow run exists before the outage
    expected = [(0, 0.0)]
    ckpt = tmp_path / "ckpt" / "step-10"
    (ckpt / "lora").mkdir(parents=True)
    (ckpt / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (ckpt / "manifest.json").write_text(json.dumps({"step": 10, "formats": ["diffusers"]}))
    mlflow_server.stop()
    try:
        for step in range(1, 31):
            lg.log_metrics({"train/loss": step / 7}, step)
            expected.append((step, step / 7))
        lg.log_images([Image.new("RGB", (8, 8), (i * 90, 0, 0)) for i in range(2)], ["a cat", "a dog"], 5, "eval")
        lg.log_checkpoint(ckpt / "manifest.json", 10)
        lg.close()  # the job ends while the server is down: everything stays spooled
    finally:
        mlflow_server.start()
    assert spool_pending(run_dir) and lg.stats["spooled"] == 30
    JobSpec(name="r-crash", config={}, cluster="local", store_url="sqlite://", tracking_uri=mlflow_server.url,
            artifact_root=None, experiment="spool-test").save(run_dir)

    for where in ("metrics", "artifacts"):
        crashed = subprocess.run([sys.executable, "-c", _CRASHING_REPLAY, str(run_dir), where],
                                 capture_output=True, text=True, timeout=300, check=False)
        assert crashed.returncode == 9, crashed.stderr
        assert spool_pending(run_dir)
    client = MlflowClient(mlflow_server.url)
    assert len(client.get_metric_history(lg.run_id, "train/loss")) == len(expected)  # resent, not duplicated

    with Store.default() as store:  # the finished run, as `awm status` sees it
        store.create_run(name="r-crash", config_hash="abc", resolved_config={}, output_dir=run_dir,
                         cluster="local", status="COMPLETED")
    res = CliRunner().invoke(app, ["status", "r-crash", "--json"])
    assert res.exit_code == 0, res.output
    assert "r-crash: sent its MLflow spool" in res.stderr
    assert [r["status"] for r in json.loads(res.stdout)] == ["COMPLETED"]
    assert not spool_pending(run_dir)
    assert _history(client, lg.run_id, "train/loss") == expected
    arts = sorted(_artifact_files(client, lg.run_id))
    # each file once: a re-uploaded image would show as a second .png (log_image names files uniquely)
    assert [a for a in arts if a.endswith(".png")] and len([a for a in arts if a.endswith(".png")]) == 2, arts
    for name in ("captions.json", "manifest.json", "lora_reference.json"):  # lora_reference: log_lora=path
        assert len([a for a in arts if a.endswith("/" + name)]) == 1, (name, arts)
    images = sorted(f.path for f in client.list_artifacts(lg.run_id, "images"))
    assert len(images) == 4, images  # each image once: full size (.png) + the UI's thumbnail (.webp)
    assert all(p.startswith(("images/eval~00+step+5+", "images/eval~01+step+5+")) for p in images), images


def test_images_with_step_slider_captions_and_experiment_kind(tmp_path: Path) -> None:
    """Images go through `MlflowClient.log_image(key=, step=)` (the UI's image charts with a step slider),
    their captions into a JSON artifact; experiments are tagged as model training (MLflow 3's UI would
    otherwise open the GenAI view), also an existing untagged one, but never over a user's choice."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from awm_platform.runner.tracking import EXPERIMENT_KIND_TAG, MlflowLogger, image_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old_id = client.create_experiment("made-elsewhere", artifact_location=(tmp_path / "a1").as_uri())
    mine_id = client.create_experiment("user-kind", artifact_location=(tmp_path / "a2").as_uri(),
                                       tags={EXPERIMENT_KIND_TAG: "genai_development"})
    run_ids = {}
    for exp in ("spool-test", "made-elsewhere", "user-kind"):
        lg = MlflowLogger(tmp_path / f"r-{exp}", tracking_uri=uri, experiment=exp, run_name=exp, background=False,
                          artifact_root=(tmp_path / f"art-{exp}").as_uri())
        if exp == "spool-test":
            for step in (5, 10):
                imgs = [Image.new("RGB", (8, 8), (step * 20, i * 90, 0)) for i in range(2)]
                lg.log_images(imgs, [f"a cat at {step}", f"a dog at {step}"], step, "eval_ema/images")
        lg.log_metrics({"train/loss": 1.0}, 1)
        lg.close()
        run_ids[exp] = lg.run_id
        assert not (tmp_path / f"r-{exp}" / "mlflow_spool" / "artifacts").exists() or \
            not any((tmp_path / f"r-{exp}" / "mlflow_spool" / "artifacts").iterdir())

    kinds = {e: client.get_experiment_by_name(e).tags.get(EXPERIMENT_KIND_TAG)
             for e in ("spool-test", "made-elsewhere", "user-kind")}
    assert kinds == {"spool-test": "custom_model_development", "made-elsewhere": "custom_model_development",
                     "user-kind": "genai_development"}
    assert {client.get_run(run_ids[e]).info.experiment_id for e in ("made-elsewhere", "user-kind")} == {old_id, mine_id}

    run_id = run_ids["spool-test"]
    assert client.get_run(run_id).data.tags.get("mlflow.loggedImages") == "True"
    images = sorted(f.path for f in client.list_artifacts(run_id, "images"))
    assert image_key("eval_ema/images", 1) == "eval_ema/images/01"
    for key in ("eval_ema~images~00", "eval_ema~images~01"):  # one chart per image slot, 2 steps each
        for step in (5, 10):
            got = [p for p in images if p.startswith(f"images/{key}+step+{step}+")]
            assert sorted(Path(p).suffix for p in got) == [".png", ".webp"], (key, step, images)
    assert len(images) == 8
    art = client.download_artifacts(run_id, "samples/eval_ema/images/step_000010/captions.json", str(tmp_path / "dl"))
    captions = json.loads(Path(art).read_text())
    assert captions == {"step": 10, "key": "eval_ema/images", "images": [
        {"image_key": "eval_ema/images/00", "caption": "a cat at 10"},
        {"image_key": "eval_ema/images/01", "caption": "a dog at 10"}]}
    assert not [f for f in client.list_artifacts(run_id, "samples/eval_ema/images/step_000010") if f.path.endswith(".png")]


def test_store_logger_flush_metrics_returns_once_a_flush_in_progress_is_written(tmp_path: Path) -> None:
    """The trainer flushes before a checkpoint is final; the background thread may be writing values
    logged before that (it took them from the buffer): the trainer's flush waits for it."""
    import threading

    from awm_platform.runner.tracking import StoreLogger
    from awm_platform.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        store.create_run(name="r", config_hash="h", resolved_config={}, output_dir=str(tmp_path / "r"))
    logger = StoreLogger(url, "r", flush_interval_s=3600)
    real, writing = logger.store.log_metrics, threading.Event()

    def slow_write(*args: Any, **kwargs: Any) -> None:  # the background flush, caught mid-write
        writing.set()
        time.sleep(0.5)
        real(*args, **kwargs)

    logger.store.log_metrics = slow_write  # type: ignore[method-assign]
    try:
        logger.log_metrics({"eval/x": 1.0}, 1)  # an eval metric wakes the background thread at once
        assert writing.wait(10)
        logger.flush_metrics()
        with Store(url) as store:
            assert store.get_metric_history("r", "eval/x") == [(1, 1.0)]
    finally:
        logger.close()


def test_mlflow_flush_metrics_sends_the_metrics_and_leaves_uploads_to_the_background(tmp_path: Path) -> None:
    """The trainer's call before a checkpoint: the metrics reach MLflow at once; the staged images stay
    on disk for the background flush (an upload must not stall training), and go with the next flush."""
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from awm_platform.runner.tracking import MlflowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lg = MlflowLogger(tmp_path / "r", tracking_uri=uri, experiment="flush", run_name="flush", background=False,
                      artifact_root=(tmp_path / "art").as_uri())
    try:
        lg.log_images([Image.new("RGB", (8, 8))], ["a cat"], 1, "eval/images")
        lg.log_metrics({"train/loss": 0.5}, 1)
        lg.flush_metrics()
        client = MlflowClient(uri)
        assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "train/loss")] == [(1, 0.5)]
        assert lg.pending() and not client.list_artifacts(lg.run_id, "images")
        lg.flush()
        assert not lg.pending() and client.list_artifacts(lg.run_id, "images")
    finally:
        lg.close()
