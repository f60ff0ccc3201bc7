"""Time from `awm submit` to the trainer's first step, and from its last step to COMPLETED in
the store, on the local executor and on the local SLURM cluster; split into the scheduler's
part, the trainer's part and OUR overhead (target: < 2 s on top of the scheduler).

    .venv/bin/python perf/submit_overhead.py [--clusters local,slurm] [--partition debug]

Uses the timeline each job writes to `run_dir/events.jsonl` (controller_start, child_spawned,
worker_start, train_call, train_return, child_exit, reported) and the trainer's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _events(run_dir: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        out.setdefault(e["event"], e["t"])
    return out


def _metric_times(run_dir: Path) -> tuple[float, float]:
    ts = [
        json.loads(x)["time"]
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x).get("type") == "metrics"
    ]
    return min(ts), max(ts)


def measure(cluster: str, model: Path, partition: str | None) -> dict[str, float]:
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    name = f"perf-{cluster}-{int(time.time())}"
    launcher: dict[str, Any] = {"cpus_per_task": 1, "time_min": 10}
    if partition and cluster == "slurm":
        launcher["partition"] = partition
    cfg = config_from_dict(
        tiny_experiment_dict(model, name, num_epochs=2, eval_freq=1000, launcher=launcher)
    )
    store = Store.default()
    t0 = time.time()
    sub = submit_run(cfg, cluster=cluster, store=store)
    t_sub = time.time()
    seen_completed = None
    while time.time() - t0 < 600:
        run = store.get_run(name)
        if run.status in ("COMPLETED", "FAILED"):
            seen_completed = time.time()
            break
        time.sleep(0.05)
    assert run.status == "COMPLETED", run.error
    ev = _events(sub.run_dir)
    deadline = time.time() + 30  # the controller writes its `reported` event just after the store row
    while "reported" not in ev and time.time() < deadline:
        time.sleep(0.05)
        ev = _events(sub.run_dir)
    first, last = _metric_times(sub.run_dir)
    return {
        "submit_call_s": t_sub - t0,  # ours
        "scheduler_to_controller_s": ev["controller_start"] - t_sub,  # scheduler (+ submitit start-up)
        "controller_s": ev["child_spawned"] - ev["controller_start"],  # ours
        "worker_python_start_s": ev["worker_start"] - ev["child_spawned"],  # interpreter + our imports
        "trainer_import_s": ev["trainer_imported"] - ev["worker_start"],  # trainer (torch, diffusers)
        "worker_setup_s": ev["train_call"] - ev["trainer_imported"],  # ours (config, loggers)
        "trainer_to_first_step_s": first - ev["train_call"],  # trainer (imports, model, step 1)
        "submit_to_first_step_s": first - t0,
        "trainer_last_step_to_return_s": ev["train_return"] - last,  # trainer (final checkpoint)
        "logger_close_s": ev["logger_closed"] - ev["train_return"],  # ours (final MLflow flush)
        "worker_exit_s": ev["child_exit"] - ev["logger_closed"],  # interpreter teardown (torch)
        "report_s": ev["reported"] - ev["child_exit"],  # ours (store update)
        "last_step_to_completed_s": (seen_completed or ev["reported"]) - last,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", default="local,slurm")
    ap.add_argument("--partition", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from trainers.awm.tiny import make_tiny

    tmp = tempfile.mkdtemp(prefix="awm-perf-submit-")
    os.environ["AWM_HOME"] = str(Path(tmp) / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    model = make_tiny(Path(tmp) / "model")
    # one-time initialisation of the embedded stores (alembic migrations of a NEW mlflow.db /
    # awm.db, ~2-3 s) is not per-submission overhead: do it before measuring
    from mlflow.tracking import MlflowClient

    from awm_platform.paths import default_mlflow_tracking_uri
    from awm_platform.store import Store

    t = time.time()
    MlflowClient(default_mlflow_tracking_uri()).search_experiments()
    Store.default().close()
    print(f"one-time store initialisation (new AWM_HOME): {time.time() - t:.2f} s")
    for cluster in args.clusters.split(","):
        r = measure(cluster, model, args.partition)
        ours_start = r["submit_call_s"] + r["controller_s"] + r["worker_setup_s"]
        ours_end = r["logger_close_s"] + r["report_s"]
        print(f"== {cluster}")
        for k, v in r.items():
            print(f"  {k:32s} {v:8.3f}")
        print(
            f"  OURS before the first step       {ours_start:8.3f}  (submit + controller + worker setup; "
            f"+ {r['worker_python_start_s']:.3f} s interpreter/imports)"
        )
        print(
            f"  OURS after the last step         {ours_end:8.3f}  (final logger flush + store report; "
            f"+ {r['worker_exit_s']:.3f} s process exit)"
        )
        print(json.dumps({"cluster": cluster, **r, "ours_start_s": ours_start, "ours_end_s": ours_end}))


if __name__ == "__main__":
    main()
