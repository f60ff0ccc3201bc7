"""Orchestrator overhead per trial (ask, submit, record, tell) on the local executor and SLURM.

Each trial is a real submitit job that only logs its objective to the store and completes
(`awm_platform.sweeps.noop`: the no-op worker mode), so the numbers are the orchestrator's own
cost plus the scheduler's latency; the script separates the two:

    orchestrator s/trial = (ask + submit + poll + tell time of the orchestrator
                            - time inside submitit's submit/poll calls) / trials

Usage: .venv/bin/python perf/sweep_overhead.py [--trials 20] [--parallelism 4] [--clusters local,slurm]
Target: < 2 s per trial beyond the scheduler's own latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def measure(cluster: str, trials: int, parallelism: int, partition: str | None) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix=f"awm-perf-{cluster}-", dir=os.environ.get("AWM_PERF_TMP")))
    os.environ["AWM_HOME"] = str(home)
    from awm_platform.config import config_from_dict
    from awm_platform.store import Store
    from awm_platform.sweeps.noop import NoopBackend
    from awm_platform.sweeps.optuna_bridge import storage_url
    from awm_platform.sweeps.orchestrator import Orchestrator, SweepContext

    metric = "eval/jpeg_compressibility"
    cfg = config_from_dict({"name": f"perf-{cluster}", "sweep": {
        "params": {"train.beta": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "train.ghuber_power": {"type": "float", "low": 0.1, "high": 1.0}},
        "objective": {"metric": metric}, "n_trials": trials, "parallelism": parallelism,
        "sampler": {"name": "tpe", "seed": 0}, "pruner": {"name": "median"}, "poll_interval_s": 0.5}})
    ctx = SweepContext(study_name=cfg.name, cfg=cfg, cluster=cluster, storage_url=storage_url(cfg.sweep))
    backend = NoopBackend(cluster, home / "jobs", metric, partition=partition)
    store = Store.default()
    orch = Orchestrator(ctx, store=store, backend=backend, echo=lambda m: None, track=False)
    t0 = time.perf_counter()
    orch.create()
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = orch.run()
    wall = time.perf_counter() - t1
    tm = result.timings
    active = tm.ask + tm.submit + tm.poll + tm.tell
    sched = backend.scheduler_submit_s + backend.scheduler_poll_s
    out = {
        "cluster": cluster, "trials": trials, "parallelism": parallelism, "status": result.status,
        "complete": result.counts.get("COMPLETE", 0), "setup_s": round(setup, 3), "wall_s": round(wall, 2),
        "wall_per_trial_s": round(wall / trials, 3),
        "orchestrator_active_per_trial_s": round(active / trials, 4),
        "scheduler_calls_per_trial_s": round(sched / trials, 4),
        "orchestrator_overhead_per_trial_s": round((active - sched) / trials, 4),
        "ask_per_trial_s": round(tm.ask / trials, 4), "tell_per_trial_s": round(tm.tell / trials, 4),
        "submit_own_per_trial_s": round((tm.submit - backend.scheduler_submit_s) / trials, 4),
        "poll_own_per_trial_s": round((tm.poll - backend.scheduler_poll_s) / trials, 4),
        "passes": tm.passes,
    }
    store.close()
    backend.jobs.clear()  # submitit's LocalJob.__del__ fails noisily at interpreter exit otherwise
    import gc

    gc.collect()
    shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--parallelism", type=int, default=4)
    ap.add_argument("--clusters", default="local,slurm")
    ap.add_argument("--partition", default=None)
    args = ap.parse_args()
    for cluster in args.clusters.split(","):
        if cluster == "slurm" and shutil.which("sbatch") is None:
            print(json.dumps({"cluster": "slurm", "skipped": "sbatch not found (scripts/services.sh up slurm)"}))
            continue
        print(json.dumps(measure(cluster, args.trials, args.parallelism, args.partition)), flush=True)


if __name__ == "__main__":
    main()
