"""What the `awm sweep` commands do, as plain functions (the CLI and the tests call these)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from awm_platform.config import load_config
from awm_platform.paths import validate_run_name
from awm_platform.redaction import redact_url
from awm_platform.runner.proc import is_alive
from awm_platform.store import Store
from awm_platform.sweeps.optuna_bridge import load_study, storage_url
from awm_platform.sweeps.orchestrator import (
    ORCH_ATTR,
    SWEEP_STOPPED,
    SWEEP_STOPPING,
    Backend,
    Orchestrator,
    RunnerBackend,
    SweepContext,
    SweepError,
    SweepResult,
    orchestrator_alive,
    stop_in_flight,
    sweep_dir,
    this_host,
)
from awm_platform.sweeps.tracking import tracking_uri
from benchmarks.files import atomic_write


def prepare(config: Path | str, overrides: list[str] | None = None, *, cluster: str | None = None,
            study: str | None = None) -> SweepContext:
    cfg = load_config(config, overrides or [])
    if cfg.sweep is None:
        raise SweepError(f"{config} has no `sweep:` section (see docs/sweeps.md for its keys)")
    name = study or cfg.name
    try:
        validate_run_name(f"{name}-t0")
    except ValueError as exc:
        raise SweepError(f"study name {name!r} is not usable in run names: {exc}") from None
    return SweepContext(study_name=name, cfg=cfg, cluster=cluster or cfg.launcher.cluster,
                        storage_url=storage_url(cfg.sweep))


def start(ctx: SweepContext, *, detach: bool = False, backend: Backend | None = None,
          echo: Callable[[str], None] = print, install_signal_handlers: bool = False) -> SweepResult | int:
    """Create the study and drive it (blocking), or hand it to a background orchestrator (returns its pid)."""
    orch = Orchestrator(ctx, backend=backend, echo=echo, install_signal_handlers=install_signal_handlers)
    orch.create()
    echo(f"study {ctx.study_name}: {ctx.spec.n_trials} trials, {ctx.spec.parallelism} in parallel, "
         f"cluster {ctx.cluster}, sampler {ctx.spec.sampler.name}, pruner {ctx.spec.pruner.name}")
    if detach:
        return spawn_daemon(ctx.study_name)
    return orch.run()


def resume(study_name: str, *, detach: bool = False, backend: Backend | None = None,
           echo: Callable[[str], None] = print, install_signal_handlers: bool = False) -> SweepResult | int:
    ctx = SweepContext.load(study_name, store=Store.default())
    if detach:
        return spawn_daemon(study_name)
    orch = Orchestrator(ctx, backend=backend, echo=echo, install_signal_handlers=install_signal_handlers)
    return orch.run(resume=True)


def spawn_daemon(study_name: str) -> int:
    """Run `awm sweep resume STUDY` as a detached background process; pid and log in the sweep dir."""
    d = sweep_dir(study_name)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "orchestrator.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "awm_platform.sweeps.daemon", study_name],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=os.environ.copy())
    atomic_write(d / "orchestrator.pid", f"{proc.pid}\n")
    return proc.pid


def stop(study_name: str, *, backend: Backend | None = None, echo: Callable[[str], None] = print,
         timeout_s: float = 300.0) -> int:
    """Cancel in-flight jobs and mark the sweep STOPPED. With a live orchestrator, it does the
    cancelling (asked through the store, and by SIGTERM when on this host); otherwise we do."""
    ctx = SweepContext.load(study_name, store=Store.default())
    store = ctx.open_store()
    opened = load_study(ctx.storage_url, ctx.study_name)
    store.update_sweep(study_name, status=SWEEP_STOPPING)
    info = opened.study.user_attrs.get(ORCH_ATTR)
    if orchestrator_alive(info, ctx.spec.grace_period_s):
        if info.get("host") == this_host():
            try:
                os.kill(int(info["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
        echo(f"asked orchestrator pid {info['pid']} on {info['host']} to stop; waiting")
        started = None if info.get("started") is None else float(info["started"])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if store.get_sweep(study_name).status == SWEEP_STOPPED:
                return 0
            if info.get("host") == this_host() and not is_alive(int(info["pid"]), started):
                break  # died without finishing the stop: do it ourselves
            time.sleep(0.5)
        else:
            raise SweepError(f"the orchestrator did not stop within {timeout_s:.0f} s; retry `awm sweep stop`")
    return stop_in_flight(opened, store, backend or RunnerBackend(), study_name, echo)


def status(study_name: str, *, store: Store | None = None) -> dict[str, Any]:
    """The study's trials with their runs: number, state, params, values, run, job, GPU-hours."""
    ctx = SweepContext.load(study_name, store=store or Store.default())
    store = store or ctx.open_store()
    study = load_study(ctx.storage_url, ctx.study_name).study
    sweep = store.get_sweep(study_name)
    runs = {r.trial_number: r for r in store.list_runs(sweep_name=study_name)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        run = runs.get(t.number)
        rows.append({
            "number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
            "run": run.name if run else t.user_attrs.get("run_name"),
            "run_status": run.status if run else None,
            "job": (run.job_ids[-1] if run and run.job_ids else t.user_attrs.get("job_id")),
            "gpu_hours": float(run.gpu_hours) if run else 0.0,
            "retry_of": t.user_attrs.get("retry_of"), "attempt": t.user_attrs.get("attempt", 0),
            "error": t.user_attrs.get("error"),
        })
    info = study.user_attrs.get(ORCH_ATTR)
    return {
        "study": study_name, "status": sweep.status, "storage": redact_url(ctx.storage_url),
        "cluster": ctx.cluster, "n_trials": ctx.spec.n_trials, "parallelism": ctx.spec.parallelism,
        "directions": [d.name.lower() for d in study.directions],
        "objective": [o.metric for o in ctx.spec.objective],
        "mlflow_parent_run_id": sweep.mlflow_parent_run_id,
        "orchestrator": info if orchestrator_alive(info, ctx.spec.grace_period_s) else None,
        "gpu_hours": sum(r["gpu_hours"] for r in rows), "trials": rows,
    }


def best_trial_report(ctx: SweepContext, result: SweepResult, store: Store | None = None) -> list[str]:
    """Lines printed at the end of a sweep: best trial, where its LoRA is, how to open MLflow."""
    store = store or ctx.open_store()
    lines = [f"sweep {ctx.study_name} {result.status}: " + ", ".join(f"{k.lower()}={v}" for k, v in
                                                                      result.counts.items() if v)]
    for b in result.best[:3]:
        lines.append(f"best trial t{b['number']}: values={b['values']} params={b['params']} run={b['run_name']}")
        if b.get("run_name"):
            ckpts = store.list_checkpoints(b["run_name"]) if store.find_run(b["run_name"]) else []
            if ckpts:
                p = Path(ckpts[-1].path)
                lora = p / "lora" if (p / "lora").exists() else p
                lines.append(f"  its LoRA (step {ckpts[-1].step}): {lora}")
            else:
                run = store.find_run(b["run_name"])
                if run is not None:
                    lines.append(f"  its run directory: {run.output_dir}")
    if not result.best:
        lines.append("no trial completed")
    lines.append(f"open MLflow: mlflow ui --backend-store-uri {redact_url(tracking_uri(ctx.cfg))} --workers 1")
    lines.append(f"trials: awm sweep status {ctx.study_name}")
    return lines
