"""The runner's worker is the one training entry point `awm train` uses too: same exit codes
(trainers.awm.process), here seen from the job controller on the debug executor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.runner.conftest import tiny_config_dict, write_config


def test_worker_usage_is_bad_input() -> None:
    out = subprocess.run([sys.executable, "-m", "awm_platform.runner.worker"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2 and "usage: python -m awm_platform.runner.worker RUN_DIR" in out.stderr


@pytest.mark.slow
def test_a_model_that_cannot_be_loaded_exits_2_and_names_it(
    tiny_model: Path, tmp_path: Path, isolated_awm_home: Path
) -> None:
    from awm_platform.cli.main import app
    from awm_platform.store import Store

    missing = tmp_path / "no-such-model"
    data = tiny_config_dict(tiny_model, "nomodel")
    data["pretrained"] = {**data["pretrained"], "model": str(missing)}
    cfg = write_config(tmp_path / "c.yaml", data)
    CliRunner().invoke(app, ["submit", str(cfg), "--cluster", "debug"])
    with Store.default() as store:
        run = store.get_run("nomodel")
    assert run.status == "FAILED"
    assert run.error.startswith("error: ") and str(missing) in run.error, run.error
    run_dir = Path(run.output_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["rc"] for e in events if e["event"] == "child_exit"] == [2]
    assert [e["event"] for e in events if e["event"] in ("worker_start", "trainer_imported", "train_call",
                                                        "logger_closed")] == \
        ["worker_start", "trainer_imported", "train_call", "logger_closed"]
    assert run_dir.is_dir()  # the run's own directory (job.json, capsule) is not the trainer's to remove
