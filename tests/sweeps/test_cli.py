"""`awm sweep ...` through the real CLI process (start-up time, errors, status JSON, stop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from awm_platform.sweeps.orchestrator import Orchestrator
from tests.sweeps.fake_backend import FakeBackend
from tests.sweeps.helpers import make_ctx, sweep_section, write_config

AWM = [sys.executable, "-m", "awm_platform.cli.main"]


def _awm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWM_HOME": str(home)}
    return subprocess.run([*AWM, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_help_lists_sweep_commands_without_heavy_imports(isolated_awm_home):
    """`--help` stays fast because the CLI imports none of optuna, mlflow, torch, sqlalchemy
    (asserted by what is imported, not by wall time: the shared 2-core box is too noisy)."""
    out = _awm("sweep", "--help", home=isolated_awm_home)
    assert out.returncode == 0
    for cmd in ("start", "status", "resume", "stop"):
        assert cmd in out.stdout
    code = ("import sys, awm_platform.cli.main; "
            "print(sorted(m for m in ('optuna','mlflow','torch','sqlalchemy') if m in sys.modules))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert mods.strip() == "[]"


def test_start_rejects_bad_configs_with_exit_2(tmp_path, isolated_awm_home):
    no_sweep = write_config(tmp_path / "a.yaml", {"name": "x", "pretrained": {"model": "m"},
                                                  "reward_fn": {"jpeg_compressibility": 1.0}})
    out = _awm("sweep", "start", str(no_sweep), home=isolated_awm_home)
    assert out.returncode == 2 and "no `sweep:` section" in out.stderr
    bad = write_config(tmp_path / "b.yaml", {"name": "x", "sweep": sweep_section(
        params={"train.ghuber_power": {"type": "float", "low": 0.1, "high": 2.0}})})
    out = _awm("sweep", "start", str(bad), home=isolated_awm_home)
    assert out.returncode == 2 and "train.ghuber_power" in out.stderr and str(bad) in out.stderr
    out = _awm("sweep", "status", "nope", home=isolated_awm_home)
    assert out.returncode == 2 and "nope" in out.stderr


def test_start_json_prints_one_object_on_stdout(tmp_path, isolated_awm_home, capsys):
    """--detach through the real CLI: {study, pid, log}; the blocking route's ending (what
    `start --json` prints after the sweep) on a fake-backend sweep: `sweep status --json`'s object."""
    from awm_platform.sweeps.cli import _finish_json

    cfg = write_config(tmp_path / "s.yaml", {
        "name": "detached", "pretrained": {"model": str(tmp_path / "no-model")},
        "reward_fn": {"jpeg_compressibility": 1.0}, "sample": {"num_image_per_prompt": 2, "prompts_per_epoch": 2},
        "train": {"batch_size": 2}, "sweep": sweep_section(n_trials=1, parallelism=1, max_retries=0)})
    out = _awm("sweep", "start", str(cfg), "--cluster", "local", "--json", "--detach", home=isolated_awm_home)
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    assert started["study"] == "detached" and started["pid"] > 0 and started["log"].endswith("orchestrator.log")
    assert _awm("sweep", "stop", "detached", home=isolated_awm_home).returncode == 0

    ctx = make_ctx("jsonstudy", n_trials=2, parallelism=2)
    orch = Orchestrator(ctx, backend=FakeBackend(steps=2), echo=lambda m: None, track=False)
    orch.create()
    _finish_json(ctx, orch.run())
    captured = capsys.readouterr()
    status = json.loads(captured.out)  # stdout is exactly the JSON object; the report went to stderr
    assert status["study"] == "jsonstudy" and status["status"] == "COMPLETED" and len(status["trials"]) == 2
    assert "sweep jsonstudy COMPLETED" in captured.err


def test_status_json_and_stop_without_orchestrator(isolated_awm_home):
    ctx = make_ctx("clistudy", n_trials=3, parallelism=2, max_retries=1)
    backend = FakeBackend(steps=2, fail_once={1})
    orch = Orchestrator(ctx, backend=backend, echo=lambda m: None, track=False)
    orch.create()
    orch.run()
    out = _awm("sweep", "status", "clistudy", "--json", home=isolated_awm_home)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "COMPLETED" and data["n_trials"] == 3
    rows = {r["number"]: r for r in data["trials"]}
    assert set(rows) == {0, 1, 2, 3}
    assert rows[1]["state"] == "FAIL" and rows[1]["run_status"] == "FAILED"
    retry = next(r for r in rows.values() if r["retry_of"] == 1)
    assert retry["params"] == rows[1]["params"] and retry["state"] == "COMPLETE"
    for n, r in rows.items():
        assert {"number", "state", "params", "values", "run", "job", "gpu_hours"} <= set(r)
        assert r["run"] == f"clistudy-t{n}" and r["job"] == f"fake-{n}"
    table = _awm("sweep", "status", "clistudy", home=isolated_awm_home)
    assert table.returncode == 0 and f"clistudy-t{retry['number']}" in table.stdout
    assert "retry of t1" in table.stdout
    stop = _awm("sweep", "stop", "clistudy", home=isolated_awm_home)
    assert stop.returncode == 0, stop.stderr
    assert json.loads(_awm("sweep", "status", "clistudy", "--json", home=isolated_awm_home).stdout)[
        "status"] == "STOPPED"
