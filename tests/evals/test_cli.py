"""`awm eval ...` end to end: the installed console script on a real store, the tiny trained
checkpoint, real OCR; jobs on the debug executor (inside the command) and the local executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.evals.conftest import RUN_NAME, TrainedRun, register_run

AWM = str(Path(sys.executable).parent / "awm")
TINY = ["--set", "eval.service.num_steps=2", "--set", "eval.service.batch_size=4",
        "--set", "eval.service.weights_dirs.ocr.workers=1"]


def awm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as users run it."""
    env = {**os.environ, "AWM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([AWM, *args], capture_output=True, text=True, env=env, timeout=600, check=False)


@dataclass
class Out:
    returncode: int
    stdout: str
    stderr: str


def awm_here(*args: str, home: Path) -> Out:
    """The same `awm` command in this process (the autouse fixture already points AWM_HOME at
    `home`): saves each command the interpreter start and the imports (~6 s)."""
    from typer.testing import CliRunner

    from awm_platform.cli.main import app

    assert os.environ["AWM_HOME"] == str(home)
    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Out(res.exit_code, res.stdout, res.stderr)


def ok_json(out: subprocess.CompletedProcess[str] | Out) -> Any:
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _other_checkpoint(run: TrainedRun, dest: Path) -> Path:
    """The same weights under another manifest (another `created` time): another checkpoint sha256
    whose images, and so scores, are identical. Its run config sits in the run's capsule, as
    `awm submit` writes it."""
    import yaml

    (dest / "capsule").mkdir(parents=True)
    (dest / "capsule" / "config.yaml").write_text(yaml.safe_dump(run.config))
    ckpt = dest / "checkpoints" / "step-2"
    shutil.copytree(run.checkpoint, ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["created"] = manifest["created"] + 1.0
    (ckpt / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return ckpt


def test_run_list_show_schedule_compare_cancel_retry(trained_run: TrainedRun, tmp_path: Path,
                                                     isolated_awm_home: Path) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    home = isolated_awm_home

    first = ok_json(awm("eval", "run", RUN_NAME, "--benchmarks", "ocr", "--cluster", "debug", "--limit", "3",
                        "--wait", "--json", *TINY, home=home))
    assert (first["summary"]["submitted"], first["summary"]["found"]) == (1, 1)
    [rec] = first["evaluations"]
    assert (rec["target"], rec["status"], rec["partial"], rec["n"], rec["weights"]) == (
        f"{RUN_NAME}@2", "COMPLETED", True, 3, "policy")
    assert rec["ci_low"] <= rec["score"] <= rec["ci_high"]

    again = ok_json(awm_here("eval", "run", RUN_NAME, "--benchmarks", "ocr", "--cluster", "debug", "--limit", "3",
                        "--json", *TINY, home=home))
    assert (again["summary"]["submitted"], again["summary"]["already_done"]) == (0, 1)
    assert again["evaluations"][0]["id"] == rec["id"]

    sched = ok_json(awm_here("eval", "schedule", "--once", "--benchmarks", "ocr", "--cluster", "debug", "--json",
                        "--set", "eval.service.limit=3", *TINY, home=home))
    assert {k: sched[k] for k in ("found", "submitted", "already_done", "running", "failed")} == {
        "found": 1, "submitted": 0, "already_done": 1, "running": 0, "failed": 0}

    listed = ok_json(awm_here("eval", "list", "--json", home=home))
    assert [(r["id"], r["target"], r["partial"], r["spec_hash"]) for r in listed] == [
        (rec["id"], f"{RUN_NAME}@2", True, rec["spec_hash"])]
    table = awm_here("eval", "list", home=home)
    assert table.returncode == 0 and "(partial)" in table.stdout and rec["spec_hash"][:8] in table.stdout

    shown = ok_json(awm_here("eval", "show", str(rec["id"]), "--json", home=home))
    assert shown["spec"]["num_steps"] == 2 and shown["spec"]["limit"] == 3 and shown["cluster"] == "debug"
    assert [s["status"] for s in shown["shards"]] == ["DONE"] and len(shown["job_ids"]) == 1
    # --limit 3 in batches of 4: the batch's fourth image is made (and cached) too, not scored
    assert sorted(p.name for p in Path(shown["images_dir"]).glob("*.png")) == [
        "00000_00.png", "00001_00.png", "00002_00.png", "00003_00.png"]
    assert "ci_method" in shown["sub_scores"] and shown["error"] is None
    text = awm_here("eval", "show", str(rec["id"]), home=home)
    assert text.returncode == 0 and "(PARTIAL)" in text.stdout and "shard 0: DONE" in text.stdout

    # the same weights as another checkpoint (a directory target): paired difference exactly 0
    other = _other_checkpoint(trained_run, tmp_path / "copy")
    second = ok_json(awm_here("eval", "run", str(other), "--benchmarks", "ocr", "--cluster", "debug", "--limit", "3",
                         "--wait", "--json", *TINY, home=home))
    [rec2] = second["evaluations"]
    assert rec2["target"] == f"dir:{other}" and rec2["status"] == "COMPLETED" and rec2["spec_hash"] == rec["spec_hash"]
    cmp = ok_json(awm_here("eval", "compare", f"{RUN_NAME}@2", str(other), "--benchmark", "ocr", "--json", home=home))
    assert (cmp["a"]["id"], cmp["b"]["id"], cmp["n_pairs"], cmp["diff"], cmp["tied"]) == (
        rec["id"], rec2["id"], 3, 0.0, True)
    by_id = awm_here("eval", "compare", str(rec["id"]), str(rec2["id"]), home=home)
    assert by_id.returncode == 0 and "statistically tied" in by_id.stdout

    # cancel / retry act only where the lifecycle allows
    done_cancel = awm_here("eval", "cancel", str(rec["id"]), home=home)
    assert done_cancel.returncode == 2 and "only PENDING or RUNNING" in done_cancel.stderr
    done_retry = awm_here("eval", "retry", str(rec["id"]), home=home)
    assert done_retry.returncode == 2 and "only FAILED or CANCELLED" in done_retry.stderr
    from awm_platform.config import config_from_dict
    from awm_platform.evals.scheduler import Scheduler
    from awm_platform.evals.targets import resolve_targets

    with Store.default() as store:  # a PENDING evaluation nobody submitted yet
        sch = Scheduler(store, config_from_dict({"eval": {"service": {"num_steps": 2, "limit": 1}}}))
        [pending] = sch.ensure(resolve_targets(store, RUN_NAME), ["ocr"], ["policy"])
    cancelled = awm_here("eval", "cancel", str(pending.id), home=home)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    retried = ok_json(awm_here("eval", "retry", str(pending.id), "--cluster", "debug", "--wait", "--json", *TINY,
                          home=home))
    assert (retried["id"], retried["status"], retried["n"]) == (pending.id, "COMPLETED", 1)


def test_local_executor_runs_the_shards_as_parallel_processes(trained_run: TrainedRun,
                                                              isolated_awm_home: Path) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    out = ok_json(awm_here("eval", "run", f"{RUN_NAME}@2", "--benchmarks", "ocr", "--cluster", "local", "--shards", "2",
                      "--limit", "4", "--wait", "--json", *TINY, "--set", "eval.service.batch_size=2",
                      home=isolated_awm_home))  # 4 images in 2 batches: 2 shards
    [rec] = out["evaluations"]
    assert rec["status"] == "COMPLETED" and rec["n"] == 4
    assert len(out["summary"]["jobs"]) == 2  # one task (process) per shard
    with Store.default() as store:
        ev = store.get_evaluation(rec["id"])
        shards = store.list_shards(ev.id)
        assert [s.status for s in shards] == ["DONE", "DONE"] and [s.num_images for s in shards] == [2, 2]
        assert ev.job_ids == out["summary"]["jobs"]
        # task k claimed shard k first: each shard was claimed once
        assert [s.attempts for s in shards] == [1, 1]


def test_schedule_interval_runs_passes_until_sigterm(isolated_awm_home: Path) -> None:
    """`--interval`: a pass every S seconds (one JSON line each with --json); SIGTERM lets the pass in
    progress finish and exits 0."""
    import signal
    import time

    env = {**os.environ, "AWM_HOME": str(isolated_awm_home)}
    proc = subprocess.Popen([AWM, "eval", "schedule", "--interval", "0.5", "--benchmarks", "ocr", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # two passes over an empty store
        assert all(json.loads(line)["found"] == 0 for line in lines), lines
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
