"""`cancel_run` on a real local job: the trainer checkpoints, the job and its processes are
gone, the status is CANCELLED; `rerun --resume` is refused for nothing, names for reruns."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.runner.conftest import tiny_config

pytestmark = pytest.mark.slow


def test_cancel_local_run_checkpoints_and_leaves_no_process(tiny_model: Path) -> None:
    from awm_platform.runner import cancel_run, submit_run
    from awm_platform.runner.proc import is_alive
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
