"""Two `awm eval schedule --once --wait` processes racing on one PostgreSQL store: one evaluation per
key, one submission (one job), exactly one COMPLETED evaluation with each sample row once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.evals.conftest import TrainedRun, register_run

pytestmark = [pytest.mark.postgres]

AWM = str(Path(sys.executable).parent / "awm")
LIMIT = 3


def test_two_schedulers_racing_on_postgres_submit_once(trained_run: TrainedRun, isolated_awm_home: Path,
                                                       fresh_postgres_db: str) -> None:
    from awm_platform.store import Evaluation, SampleScore, Store

    with Store(fresh_postgres_db) as store:
        register_run(store, trained_run)
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "OMP_NUM_THREADS": "1"}
    cmd = [AWM, "eval", "schedule", "--once", "--wait", "--json", "--benchmarks", "ocr", "--cluster", "debug",
           "--set", f"storage.url={fresh_postgres_db}", "--set", f"eval.service.limit={LIMIT}",
           "--set", "eval.service.num_steps=2", "--set", "eval.service.batch_size=4",
           "--set", "eval.service.weights_dirs.ocr.workers=1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [(p.communicate(timeout=600), p.returncode) for p in procs]
    summaries: list[dict[str, Any]] = []
    for (stdout, stderr), rc in outs:
        assert rc == 0, stdout + stderr
        assert "password" not in stderr.lower()
        summaries.append(json.loads(stdout))
    assert [s["found"] for s in summaries] == [1, 1]
    assert sum(s["submitted"] for s in summaries) == 1 and sum(len(s["jobs"]) for s in summaries) == 1
    assert all(s["final"] == {"COMPLETED": 1} for s in summaries)
    with Store(fresh_postgres_db) as store:
        assert store.count(Evaluation) == 1
        [ev] = store.list_evaluations()
        assert ev.status == "COMPLETED" and len(ev.job_ids) == 1 and ev.num_samples == LIMIT
        assert [s.attempts for s in store.list_shards(ev.id)] == [1]
        assert store.count(SampleScore) == LIMIT
        assert sorted((r.prompt_index, r.sample_index) for r in store.get_sample_scores(ev.id)) == [
            (p, 0) for p in range(LIMIT)]
