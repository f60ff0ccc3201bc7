"""Sweeps on the real services: Optuna RDB on PostgreSQL, trials on the single-node SLURM."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from awm_platform.store import Store
from awm_platform.sweeps.orchestrator import Orchestrator, SweepContext
from tests.sweeps.conftest import OrchestratorThread
from tests.sweeps.helpers import max_concurrent, sweep_section

pytestmark = pytest.mark.slow


def _ctx(base: dict[str, Any], name: str, cluster: str, **sweep: Any) -> SweepContext:
    from awm_platform.config import config_from_dict
    from awm_platform.sweeps.optuna_bridge import storage_url

    cfg = config_from_dict({**base, "name": name, "sweep": sweep_section(poll_interval_s=0.3, **sweep)})
    return SweepContext(study_name=name, cfg=cfg, cluster=cluster, storage_url=storage_url(cfg.sweep))


def _check_linked(study: optuna.Study, store: Store, name: str, n: int) -> None:
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n))  # unique, none lost
    runs = {r.trial_number: r for r in store.list_runs(sweep_name=name)}
    assert sorted(runs) == list(range(n))
    for t in trials:
        assert t.state == TrialState.COMPLETE, (t.number, t.state, t.user_attrs.get("error"))
        assert t.user_attrs["run_name"] == runs[t.number].name
        assert runs[t.number].status == "COMPLETED"


@pytest.mark.postgres
def test_four_trials_in_flight_on_postgres(trial_base, fresh_postgres_db, postgres_server):
    store_url = postgres_server.create_database(prefix="awm_sw")
    try:
        base = {**trial_base, "storage": {"url": store_url}}
        ctx = _ctx(base, "pgconc", "local", n_trials=4, parallelism=4, storage=fresh_postgres_db)
        store = Store(store_url)
        orch = Orchestrator(ctx, store=store, echo=print, track=False)
        orch.create()
        assert orch.run().status == "COMPLETED"
        # really 4 at once (from the start/end times the jobs recorded, not by sampling)
        assert max_concurrent(store.list_runs(sweep_name="pgconc")) == 4
        study = optuna.load_study(study_name="pgconc", storage=fresh_postgres_db)
        _check_linked(study, store, "pgconc", 4)
        assert store.get_sweep("pgconc").optuna_storage.startswith("postgresql")
        assert "***" in store.get_sweep("pgconc").optuna_storage  # password redacted
        store.close()
    finally:
        postgres_server.drop_database(store_url.rsplit("/", 1)[1])


@pytest.mark.slurm
def test_two_parallel_trials_on_slurm_survive_preemption(trial_base, slurm_cluster):
    # 24 epochs of 0.2 s: long enough to preempt trial 0 mid-training (after its first eval)
    base = {**trial_base, "num_epochs": 24, "save_freq": 1, "eval_freq": 12,
            "launcher": {**trial_base["launcher"], "partition": slurm_cluster.partition, "cluster": "slurm"}}
    ctx = _ctx(base, "slurmsw", "slurm", n_trials=2, parallelism=2)
    store = Store.default()
    orch = Orchestrator(ctx, store=store, echo=print, track=False)
    orch.create()
    th = OrchestratorThread(orch)
    deadline = time.monotonic() + 180
    job = None
    while time.monotonic() < deadline and job is None:
        run = store.find_run("slurmsw-t0")
        if (run is not None and run.status == "RUNNING" and run.job_ids
                and store.get_metric_history("slurmsw-t0", "eval/jpeg_compressibility")):
            job = run.job_ids[-1]  # trainer is in its loop (first eval logged)
        time.sleep(0.3)
    assert job is not None, "trial 0 never ran on SLURM"
    running = [r for r in store.list_runs(sweep_name="slurmsw") if r.job_ids]
    assert len(running) == 2
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)  # preempt trial 0
    slurm_cluster.release_when_requeued(job, timeout=90)
    result = th.join(300)
    assert result.status == "COMPLETED"
    study = optuna.load_study(study_name="slurmsw", storage=ctx.storage_url)
    _check_linked(study, store, "slurmsw", 2)  # the preempted trial completed as the same trial
    run0 = store.get_run("slurmsw-t0")
    assert run0.job_ids == [job]  # requeued as the same job and the same run
    assert len(study.trials) == 2
    hist = store.get_metric_history("slurmsw-t0", "eval/jpeg_compressibility")
    assert [s for s, _ in hist] == [0, 12, 24] and study.trials[0].value == hist[-1][1]
