"""`cancel_run` on a real local job: the trainer checkpoints, the job and its processes are
gone, the status is CANCELLED. Through the CLI: `awm logs --follow` on a running job,
`awm cancel`, then `awm rerun --resume` continues the same run to completion; GPU-hours equal
the job segments' elapsed time; names for reruns."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runner.conftest import jsonl_steps, segment_seconds, tiny_config, tiny_config_dict, write_config

pytestmark = pytest.mark.slow


def test_cancel_local_run_checkpoints_and_leaves_no_process(tiny_model: Path) -> None:
    from awm_platform.runner.api import submit_run
    from awm_platform.runner.proc import is_alive
    from awm_platform.runner.state import cancel_run
    from awm_platform.store import Store

    store = Store.default()
    sub = submit_run(tiny_config(tiny_model, "to-cancel", num_epochs=200), cluster="local", store=store)
    metrics = sub.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (metrics.exists() and '"metrics"' in metrics.read_text()):
        time.sleep(0.5)
    assert metrics.exists(), "the local job never trained"
    events = [json.loads(x) for x in (sub.run_dir / "events.jsonl").read_text().splitlines()]
    pids = {e["pid"] for e in events} | {int(sub.job_id)}
    cancel_run(sub.name, store)
    run = store.get_run(sub.name)
    assert run.status == "CANCELLED" and run.ended_at is not None
    assert not any(is_alive(p) for p in pids), "cancel left processes behind"
    assert list((sub.run_dir / "checkpoints").glob("step-*/manifest.json")), "no checkpoint on cancel"
    assert "caught SIGTERM" in "".join(p.read_text() for p in (sub.run_dir / "submitit").glob("*_log.err"))


def test_rerun_names() -> None:
    from awm_platform.runner.api import next_rerun_name

    taken = {"a-r1", "a-r2"}
    assert next_rerun_name("a", taken.__contains__) == "a-r3"
    assert next_rerun_name("a-r2", taken.__contains__) == "a-r3"
    assert next_rerun_name("b", taken.__contains__) == "b-r1"


AWM = [sys.executable, "-m", "awm_platform.cli.main"]


def _awm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AWM, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _follow_sections(out: str) -> dict[str, str]:
    """`awm logs --follow` output -> {log file: everything printed for it} (tail -f headers)."""
    sections: dict[str, str] = {}
    current = None
    for line in out.splitlines(keepends=True):
        m = re.fullmatch(r"==> (.+) <==\n", line)
        if m:
            current = m[1]
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line
    return sections


def test_follow_cancel_and_resume_the_same_run(tiny_model: Path, tmp_path: Path) -> None:
    """A real local job through the CLI: `logs --follow` prints the job's lines as they are
    written and exits by itself when the run ends; `cancel` checkpoints; `rerun --resume`
    continues the SAME run from that checkpoint to the end (no duplicated or missing step);
    GPU-hours = the sum of both segments' elapsed time x GPUs; job.json is 0600."""
    from awm_platform.runner.state import cancel_run
    from awm_platform.store import Store

    epochs = 60
    cfg = write_config(tmp_path / "c.yaml", tiny_config_dict(tiny_model, "fol", num_epochs=epochs, save_freq=5,
                                                             eval_freq=1000))
    res = _awm("submit", str(cfg), "--cluster", "local")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "fol"
    store = Store.default()
    run_dir = Path(store.get_run("fol").output_dir)
    assert stat.S_IMODE(os.stat(run_dir / "job.json").st_mode) == 0o600  # unredacted config + URLs
    follow = subprocess.Popen([*AWM, "logs", "fol", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (metrics.exists() and '"train/loss"' in metrics.read_text()):
            time.sleep(0.1)
        assert '"train/loss"' in metrics.read_text(), "the local job never trained"
        assert follow.poll() is None, "logs --follow exited while the run was running"
        cancel_run("fol", store)  # in-process: no CLI start-up while the tiny job races to its end
        out, err = follow.communicate(timeout=60)  # exits by itself once the run has ended
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    files = sorted((run_dir / "submitit").glob("*_log.*"))
    assert files
    printed = _follow_sections(out)
    for f in files:  # every byte of every log file, in order (newlines aside: headers may split a line)
        assert printed.get(str(f), "").replace("\n", "") == f.read_text().replace("\n", ""), f
    assert "caught SIGTERM" in printed[str(next(f for f in files if f.name.endswith("_log.err")))]

    run = store.get_run("fol")
    assert run.status == "CANCELLED"
    stopped_at = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert 0 < stopped_at < epochs
    first_job = run.job_ids[-1]
    mlflow_run = run.mlflow_run_id

    res = _awm("rerun", "fol", "--resume")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "fol"  # the same run, not fol-r1
    res = _awm("logs", "fol", "--follow", timeout=400)  # returns when the resumed run has ended
    assert res.returncode == 0, res.stderr
    run = store.get_run("fol")
    assert run.status == "COMPLETED", run.error
    assert len(run.job_ids) == 2 and run.job_ids[0] == first_job and run.mlflow_run_id == mlflow_run
    assert store.find_run("fol-r1") is None
    steps = list(range(1, epochs + 1))
    assert jsonl_steps(run_dir, "train/loss") == steps  # resumed at stopped_at + 1: no gap, no repeat
    assert [s for s, _ in store.get_metric_history("fol", "train/loss")] == steps
    segments = segment_seconds(run_dir)
    assert len(segments) == 2
    assert run.gpu_hours * 3600 == pytest.approx(sum(segments) * run.num_gpus, rel=0.10)
    store.close()
