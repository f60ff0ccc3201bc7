"""16 processes write to one store at once: no row lost, no lock error surfaces."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from awm_platform.store import Checkpoint, MetricPoint, Store

N_WORKERS = 16


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'concurrent.db'}"  # fresh file: the migration races too
    return request.getfixturevalue("fresh_postgres_db")


def test_sixteen_concurrent_writers_lose_nothing(fresh_url: str, repo_root) -> None:
    start_at = time.time() + 4.0  # time for all interpreters to start and import
    procs = [subprocess.Popen([sys.executable, "-m", "tests.foundation.store_worker", fresh_url, str(i), str(start_at)],
                              cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(N_WORKERS)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    failures = [(i, err) for i, (rc, err) in enumerate(results) if rc != 0]
    assert not failures, failures[0][1][-2000:]
    assert not any("locked" in err.lower() for _, err in results)

    store = Store(fresh_url)
    runs = {r.name: r for r in store.list_runs()}
    assert set(runs) == {"shared"} | {f"w{i:02d}" for i in range(N_WORKERS)}
    assert sorted(runs["shared"].job_ids, key=int) == [str(i) for i in range(N_WORKERS)]  # no lost update
    assert all(runs[f"w{i:02d}"].status == "COMPLETED" for i in range(N_WORKERS))
    assert store.count(MetricPoint) == N_WORKERS * (2 * 10 + 10)
    assert store.count(Checkpoint) == N_WORKERS * 5
    for i in range(N_WORKERS):
        assert store.get_metric_history(f"w{i:02d}", "eval/x") == [(s, float(s)) for s in range(10)]
    store.close()
