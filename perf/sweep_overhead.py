"""Orchestrator overhead per trial (ask, submit, record, tell) on the local executor and SLURM.

Each trial is a real submitit job that only logs its objective to the store and completes
(`perf/noop_backend.py`: the no-op worker mode), so the numbers are the orchestrator's own
cost plus the scheduler's latency; the script separates the two:

    orchestrator s/trial = (ask + submit + poll + tell time of the orchestrator
                            - time inside submitit's submit/poll calls) / trials

The no-op backend skips what the real runner does before handing a trial to submitit
(`runner.api._prepare_run`: store row, job spec, reproducibility capsule with `git rev-parse`/
`git status`/`git diff` subprocesses and the `pip freeze` equivalent). `submit_path` measures
that path per trial on its own (real trial configs, real run directories, no job started) and
the script prints the per-trial total with it: orchestrator overhead + submit path.

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
    from noop_backend import NoopBackend  # perf/ (this script's directory)

    from awm_platform.config import config_from_dict
    from awm_platform.store import Store
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


def submit_path(trials: int) -> dict[str, float]:
    """Per-trial cost of the real runner's preparation (everything `submit_run` does before
    submitit's `submit`), with its parts: git subprocesses, git diff (dirty checkout), pip freeze."""
    home = Path(tempfile.mkdtemp(prefix="awm-perf-submit-", dir=os.environ.get("AWM_PERF_TMP")))
    os.environ["AWM_HOME"] = str(home)
    from awm_platform import paths
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import _prepare_run
    from awm_platform.runner.capsule import git_diff, git_info, pip_freeze
    from awm_platform.runner.launch import launch_command
    from awm_platform.store import Store
    from awm_platform.sweeps.orchestrator import trial_config

    cfg = config_from_dict({"name": "perf-submit", "sweep": {
        "params": {"train.beta": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "objective": {"metric": "eval/jpeg_compressibility"}, "n_trials": trials}})
    store = Store.default()
    parts = {"prepare_s": 0.0, "git_info_s": 0.0, "git_diff_s": 0.0, "pip_freeze_s": 0.0}
    dirty = bool(git_info().get("dirty"))
    for n in range(trials):
        tcfg = trial_config(cfg, "perf-submit", n, {"train.beta": 1e-3 * (1 + n % 5)}, seed=n)
        run_dir = paths.run_dir(tcfg.name)
        t0 = time.perf_counter()
        _prepare_run(store, tcfg, run_dir, "local", launch_cmd=launch_command(tcfg, run_dir), sbatch=None,
                     sweep_name="perf-submit", trial_number=n)
        parts["prepare_s"] += time.perf_counter() - t0
        for key, fn in (("git_info_s", git_info), ("pip_freeze_s", pip_freeze)) + (
                (("git_diff_s", git_diff),) if dirty else ()):
            t0 = time.perf_counter()
            fn()
            parts[key] += time.perf_counter() - t0
    store.close()
    shutil.rmtree(home, ignore_errors=True)
    return {"submit_path_trials": trials, "git_dirty": dirty,
            **{f"{k[:-2]}_per_trial_s": round(v / trials, 4) for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--parallelism", type=int, default=4)
    ap.add_argument("--clusters", default="local,slurm")
    ap.add_argument("--partition", default=None)
    args = ap.parse_args()
    path = submit_path(min(args.trials, 10))
    print(json.dumps(path), flush=True)
    for cluster in args.clusters.split(","):
        if cluster == "slurm" and shutil.which("sbatch") is None:
            print(json.dumps({"cluster": "slurm", "skipped": "sbatch not found (scripts/services.sh up slurm)"}))
            continue
        out = measure(cluster, args.trials, args.parallelism, args.partition)
        out["with_real_submit_path_per_trial_s"] = round(
            out["orchestrator_overhead_per_trial_s"] + path["prepare_per_trial_s"], 4)
        print(json.dumps(out), flush=True)
    print("orchestrator overhead per trial = ask + tell + own poll/submit with the no-op job; the real runner adds "
          f"its submit path ({path['prepare_per_trial_s']:.2f} s per trial here: git {path['git_info_per_trial_s']:.2f}"
          f" s, pip freeze {path['pip_freeze_per_trial_s']:.2f} s"
          + (f", git diff {path['git_diff_per_trial_s']:.2f} s" if path["git_dirty"] else "")
          + "); see with_real_submit_path_per_trial_s. Noisy on a shared machine: compare runs, not digits.")


if __name__ == "__main__":
    main()
