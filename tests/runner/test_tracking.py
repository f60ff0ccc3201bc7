"""MLflow tracking: batching, the disk spool across a real server outage, run metadata."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

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
