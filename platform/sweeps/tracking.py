"""MLflow side of a sweep: one parent run per study, the study summary as its artifacts.

Child runs (one per trial) are created by the trainer inside each job, with the parent run
id the orchestrator passes to `runner.api.submit_run(mlflow_parent_run_id=...)`.
Tracking must never kill a sweep: every MLflow failure here is reported and skipped.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from awm_platform.config import ExperimentConfig
from awm_platform.redaction import quiet_mlflow_links
from awm_platform.runner.api import tracking_target
from awm_platform.runner.tracking import get_or_create_experiment


def tracking_uri(cfg: ExperimentConfig) -> str:
    return tracking_target(cfg)[0]


def _client_and_experiment(cfg: ExperimentConfig) -> tuple[Any, str]:
    """Same tracking target and experiment artifact root as the trainer's runs (runner.api)."""
    uri, artifact_root = tracking_target(cfg)
    quiet_mlflow_links(uri)  # MLflow would print the URI, credentials included, when a run ends
    client = MlflowClient(tracking_uri=uri)
    return client, get_or_create_experiment(client, cfg.tracking.experiment, artifact_root)


def start_parent_run(cfg: ExperimentConfig, study_name: str, storage_redacted: str) -> str | None:
    """Create the study's parent run; returns its id, or None (with a warning) if MLflow fails."""
    assert cfg.sweep is not None
    spec = cfg.sweep
    try:
        client, exp_id = _client_and_experiment(cfg)
        tags = {
            "mlflow.runName": f"sweep:{study_name}",
            "awm.sweep.study": study_name,
            "awm.sweep.storage": storage_redacted,
            "awm.sweep.sampler": spec.sampler.model_dump_json(),
            "awm.sweep.pruner": spec.pruner.model_dump_json(),
            "awm.sweep.search_space": json.dumps({k: v.model_dump(exclude_none=True) for k, v in spec.params.items()},
                                                 sort_keys=True),
            "awm.sweep.objective": json.dumps([o.model_dump() for o in spec.objective]),
            "awm.sweep.n_trials": str(spec.n_trials),
        }
        run = client.create_run(exp_id, tags=tags)
        return str(run.info.run_id)
    except Exception as exc:  # noqa: BLE001 - tracking down must not stop a sweep
        warnings.warn(f"MLflow at {tracking_uri(cfg)} unavailable, the sweep runs without a parent run: {exc}",
                      stacklevel=2)
        return None


def summarize_study(study: optuna.Study) -> dict[str, Any]:
    """Best trial(s), importances and counts as JSON-able data (also printed by the CLI)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "counts": {s.name: sum(t.state == s for t in trials) for s in TrialState},
    }
    best = study.best_trials if complete else []
    out["best_trials"] = [{"number": t.number, "values": t.values, "params": t.params,
                           "run_name": t.user_attrs.get("run_name")} for t in best]
    if len(complete) >= 2:  # importances need a fitted model over >= 2 completed trials
        try:
            out["param_importances"] = {
                k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except Exception as exc:  # noqa: BLE001 - e.g. every trial has the same params
            out["param_importances_error"] = str(exc)
    return out


def log_study_summary(cfg: ExperimentConfig, parent_run_id: str | None, study: optuna.Study,
                      *, status: str = "FINISHED") -> None:
    """Best trial(s) JSON, importances, trials table and plots on the parent run; close it."""
    if parent_run_id is None:
        return
    try:
        client, _ = _client_and_experiment(cfg)
        summary = summarize_study(study)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "best_trials.json").write_text(json.dumps(summary["best_trials"], indent=2, default=str))
            (d / "param_importances.json").write_text(json.dumps(
                summary.get("param_importances", {"error": summary.get(
                    "param_importances_error", "fewer than 2 completed trials")}), indent=2))
            (d / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
            try:
                study.trials_dataframe().to_csv(d / "trials.csv", index=False)
            except Exception:  # noqa: BLE001, S110 - pandas edge cases on empty studies
                pass
            _plots(study, d)
            client.log_artifacts(parent_run_id, str(d), artifact_path="study")
        for i, t in enumerate(summary["best_trials"][:1]):
            for j, v in enumerate(t["values"] or []):
                client.log_metric(parent_run_id, f"best_value_{j}" if j else "best_value", float(v))
            client.set_tag(parent_run_id, "awm.sweep.best_trial", str(t["number"]))
            del i
        client.set_terminated(parent_run_id, status=status)
    except Exception as exc:  # noqa: BLE001 - deliberate
        warnings.warn(f"could not log the study summary to MLflow run {parent_run_id}: {exc}", stacklevel=2)


def _plots(study: optuna.Study, out: Path) -> None:
    """Optimisation history and parallel coordinates (matplotlib, offline; plotly is not a
    dependency). Skipped quietly when the study has too little data to plot."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return
    matplotlib.use("Agg")  # files only, never a window; set here, not at import, to leave other users' backend alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning on every optuna matplotlib plot
        targets = [None] if len(study.directions) == 1 else [
            (lambda t, i=i: t.values[i]) for i in range(len(study.directions))]
        for i, target in enumerate(targets):
            suffix = "" if target is None else f"_{i}"
            for name, fn in (("optimization_history", ovm.plot_optimization_history),
                             ("parallel_coordinate", ovm.plot_parallel_coordinate)):
                try:
                    kwargs = {} if target is None else {"target": target, "target_name": f"objective {i}"}
                    ax = fn(study, **kwargs)
                    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                    fig.savefig(out / f"{name}{suffix}.png", dpi=80, bbox_inches="tight")
                    plt.close(fig)
                except Exception:  # noqa: BLE001 - deliberate
                    plt.close("all")
