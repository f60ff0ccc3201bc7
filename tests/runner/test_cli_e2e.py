"""End to end through the CLI on the debug executor (in-process controller, real trainer
child process), tracking to a REAL mlflow server over HTTP: submit, status, logs, rerun,
cancel; MLflow tags/params/metrics/artifacts; the capsule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.runner.conftest import segment_seconds, tiny_config_dict, write_config

pytestmark = [pytest.mark.slow, pytest.mark.mlflow_server]


def _cli(*args: str) -> Any:
    from awm_platform.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_submit_status_logs_rerun_over_http(
    tiny_model: Path, tmp_path: Path, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    exp_id = client.create_experiment("cli-e2e-parent")
    parent = client.create_run(exp_id, run_name="sweep-parent").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)  # an active run in the caller: must not leak into the job
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_config_dict(
            tiny_model,
            "e2e",
            num_epochs=2,
            eval_freq=1,
            save_freq=1,
            eval={"max_prompts": 2, "at_start": False, "ema": False},
            tracking={
                "uri": mlflow_server.url,
                "experiment": "cli-e2e",
                "log_lora": "artifact",
                "parent_run_id": parent,
            },
        ),
    )
    res = _cli("submit", str(cfg), "--cluster", "debug")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[0] == "e2e"

    res = _cli("status", "e2e", "--json")
    assert res.exit_code == 0, res.output
    [rec] = json.loads(res.stdout)  # always a list, also for one run
    assert rec["run"] == "e2e" and rec["status"] == "COMPLETED" and rec["job_ids"] and rec["mlflow_run_id"]
    run_dir = Path(rec["run_dir"])
    # GPU-hours = the job's one segment (controller start -> trainer exit) x 1 GPU
    segments = segment_seconds(run_dir)
    assert len(segments) == 1
    assert rec["gpu_hours"] * 3600 == pytest.approx(segments[0], rel=0.10)
    for f in (
        "config.yaml",
        "config_hash",
        "git.json",
        "pip-freeze.txt",
        "launch.json",
        "hosts.jsonl",
        "mlflow.json",
    ):
        assert (run_dir / "capsule" / f).exists(), f
    assert "torch==" in (run_dir / "capsule" / "pip-freeze.txt").read_text()
    assert json.loads((run_dir / "capsule" / "mlflow.json").read_text())["run_id"] == rec["mlflow_run_id"]

    run = client.get_run(rec["mlflow_run_id"])
    assert run.info.run_name == "e2e" and run.info.status == "FINISHED"
    assert run.info.run_id != parent
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["awm.cluster"] == "debug" and tags["awm.job_id"] == rec["job_ids"][0] and tags["awm.host"]
    assert tags["awm.config_hash"] == (run_dir / "capsule" / "config_hash").read_text().strip()
    assert tags["mlflow.user"]
    git = json.loads((run_dir / "capsule" / "git.json").read_text())
    if git["commit"]:  # a git checkout: commit, branch and dirty flag of the launched code
        assert tags["mlflow.source.git.commit"] == git["commit"]
        assert tags["mlflow.source.git.branch"] == git["branch"]
        assert tags["awm.git_dirty"] == str(bool(git["dirty"])).lower()
    else:  # not a checkout: no git tags at all rather than empty ones
        assert not {"mlflow.source.git.commit", "mlflow.source.git.branch", "awm.git_dirty"} & set(tags)
    assert run.data.params["train.beta"] == "0.001" and run.data.params["name"] == "e2e"
    assert tags["awm.method"] == "awm" and run.data.params["method"] == "awm"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [1, 2]
    assert sorted(
        m.step for m in client.get_metric_history(run.info.run_id, "eval/jpeg_compressibility")
    ) == [1, 2]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints/step-2")}
    assert "checkpoints/step-2/manifest.json" in arts and "checkpoints/step-2/lora" in arts
    samples = client.list_artifacts(run.info.run_id, "samples")
    assert samples, "in-loop evaluation images were not logged"
    local = Path(client.download_artifacts(run.info.run_id, samples[0].path, str(tmp_path / "dl")))
    captions = list(local.rglob("captions.json"))
    assert captions and json.loads(captions[0].read_text())["images"][0]["caption"]
    assert not (run_dir / "mlflow_spool" / "metrics.jsonl").exists()

    res = _cli("logs", "e2e")  # debug jobs log only submitit's logger lines to the files
    assert res.exit_code == 0 and f"==> {run_dir}/submitit/{rec['job_ids'][0]}_0_log.out <==" in res.stdout

    res = _cli("cancel", "e2e")
    assert res.exit_code == 1 and "already COMPLETED" in res.output

    res = _cli("rerun", "e2e", "--set", "num_epochs=1", "--json")
    assert res.exit_code == 0, res.output
    rerun_rec = json.loads(res.stdout)
    assert rerun_rec["run"] == "e2e-r1" and rerun_rec["rerun_of"] == "e2e" and rerun_rec["cluster"] == "debug"
    assert rerun_rec["job_id"] and Path(rerun_rec["run_dir"]).name == "e2e-r1"
    res = _cli("status", "--json")
    recs = {r["run"]: r for r in json.loads(res.stdout)}
    assert recs["e2e-r1"]["status"] == "COMPLETED" and recs["e2e-r1"]["mlflow_run_id"] != rec["mlflow_run_id"]
    r1 = client.get_run(recs["e2e-r1"]["mlflow_run_id"])
    assert r1.data.params["num_epochs"] == "1" and r1.data.tags["awm.rerun_of"] == "e2e"

    res = _cli("status", "nope")
    assert res.exit_code == 2 and "no run named 'nope'" in res.output


def test_child_env_scrubs_mlflow_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from awm_platform.runner.proc import child_env, scrubbed_environ

    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    assert "MLFLOW_RUN_ID" not in child_env({"X": "1"})
    with scrubbed_environ():
        assert "MLFLOW_RUN_ID" not in os.environ
    assert os.environ["MLFLOW_RUN_ID"] == "abc"
