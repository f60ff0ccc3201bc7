"""MLflow mirror of a COMPLETED evaluation (the store is the truth; MLflow is a view of it).

`mirror_evaluation` is idempotent: a second call, or a call after a crash half way, leaves
exactly one copy of everything:

* on the training run (when the evaluation has one): metrics `bench/<benchmark>` and
  `bench/<benchmark>/<tag>` (GenEval's per-tag accuracies) at the checkpoint's step, each logged
  only when its history has no point at that step. A PARTIAL evaluation (`--limit`) logs
  `bench_partial/...` instead: partial numbers never sit on the curve of full ones. The key
  carries no spec, so one spec per (checkpoint, benchmark) lands there: the first mirrored;
* one child run per evaluation key, found by its tag `awm.eval_key` before creating one
  (created in the training run's experiment, `mlflow.parentRunId` = the training run; else in
  `experiment`). Two mirrors racing may both create one: every call keeps the run with the
  smallest run id and deletes the others, so they converge on one. It carries the spec (+
  benchmark, version, target, keys) as params, score / ci_low / ci_high / num_samples (and
  `score/<tag>`) as metrics, the per-sample rows as a `log_table` table (`eval_samples.json`,
  logged only when absent: MlflowClient.log_table APPENDS to an existing table), and a fixed
  panel of images: sample 0 of the first `PANEL_SIZE` prompt indices, as `panel/<file>.png`
  (plain artifacts: uploading one again overwrites it) with `panel/captions.json`; it ends
  FINISHED. Partial evaluations are tagged `awm.partial=true`.

Fault points (`AWM_FAULT_INJECT`): `eval_mirror_after_child_run`, `eval_mirror_after_table`,
`eval_mirror_before_finish`.

Metric timestamps are the evaluation's end time, not "now": MLflow drops a point identical in
(key, value, timestamp, step), so even two racing mirrors cannot duplicate one.

Only `MlflowClient` (the public API) is used, never the fluent active-run stack: the eval worker
mirrors from threads. Every failure (server down, refused request) becomes ONE `MirrorError`
whose message has the tracking URI's credentials hidden; the caller leaves the evaluation
`mirrored=false` and the scheduler tries again later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from awm_platform.redaction import quiet_mlflow_links, redact_text, redact_url, scrub
from awm_platform.runner.proc import fault_point
from awm_platform.runner.tracking import MAX_PARAM_VALUE, MAX_TAG_VALUE, get_or_create_experiment
from awm_platform.store import EvalStatus, Evaluation, SampleScore, Store, eval_key

EVAL_KEY_TAG = "awm.eval_key"
PANEL_SIZE = 8  # prompt indices in the image panel (sample 0 of each)
PANEL_DIR = "panel"
TABLE_FILE = "eval_samples.json"
BENCH_PREFIX = "bench"
PARTIAL_PREFIX = "bench_partial"


class MirrorError(RuntimeError):
    """MLflow could not be brought up to date; one line, credentials hidden. The evaluation
    itself is fine (its store row is the truth); mirroring is retried later."""


def _ms(value: datetime | None) -> int:
    if value is None:
        return int(datetime.now(UTC).timestamp() * 1000)
    if value.tzinfo is None:  # SQLite gives naive UTC datetimes back
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def _metric_name(name: str) -> str:
    """MLflow metric names allow alphanumerics and `_ - . / space` only."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def _per_tag(evaluation: Evaluation) -> dict[str, float]:
    per_tag = (evaluation.sub_scores or {}).get("per_tag") or {}
    return {str(t): float(v) for t, v in per_tag.items() if v is not None}


def _training_run(client: MlflowClient, run_id: str | None) -> Any | None:
    """The training run, or None when there is none to log to (never created, or deleted in
    MLflow: the evaluation still gets its child run)."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return run if run.info.lifecycle_stage == "active" else None


def _child_tags(evaluation: Evaluation, key: str, parent_run_id: str | None) -> dict[str, str]:
    tags = {
        EVAL_KEY_TAG: key,
        "awm.kind": "evaluation",
        "awm.evaluation_id": str(evaluation.id),
        "awm.benchmark": evaluation.benchmark,
        "awm.checkpoint_sha256": evaluation.checkpoint_sha256,
        "awm.partial": str(bool(evaluation.partial)).lower(),
        **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
    }
    return {k: _text(v, MAX_TAG_VALUE) for k, v in tags.items()}


def _child_run(client: MlflowClient, evaluation: Evaluation, key: str, experiment_id: str,
               parent_run_id: str | None) -> str:
    def existing() -> list[Any]:
        return client.search_runs([experiment_id], filter_string=f"tags.`{EVAL_KEY_TAG}` = '{key}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=100)

    runs = existing()
    if not runs:
        name = _text(f"eval {evaluation.benchmark} {evaluation.target}", 250)
        client.create_run(experiment_id, run_name=name, tags=_child_tags(evaluation, key, parent_run_id),
                          start_time=_ms(evaluation.started_at or evaluation.created_at))
        runs = existing()  # a racing mirror may have created one too: converge on the same
    ids = sorted(r.info.run_id for r in runs)
    for loser in ids[1:]:
        client.delete_run(loser)
    return ids[0]


def _log_child(client: MlflowClient, run_id: str, evaluation: Evaluation, key: str, parent_run_id: str | None,
               ts: int) -> None:
    run = client.get_run(run_id)
    # the tags again where missing: the kept run may be a racer's, created before it set them all
    tags = [RunTag(k, v) for k, v in _child_tags(evaluation, key, parent_run_id).items() if run.data.tags.get(k) != v]
    params = {str(k): v for k, v in (evaluation.spec or {}).items()}
    params |= {"benchmark": evaluation.benchmark, "benchmark_version": evaluation.benchmark_version,
               "spec_hash": evaluation.spec_hash, "eval_key": key, "target": evaluation.target,
               "checkpoint_sha256": evaluation.checkpoint_sha256}
    # params are write-once in MLflow: log the missing ones only (a second target label of the same
    # checkpoint, e.g. run@step then dir:PATH, must not be a conflicting rewrite)
    new = [Param(k[:250], _text(v, MAX_PARAM_VALUE)) for k, v in sorted(params.items())
           if k[:250] not in run.data.params]
    metrics = {"score": evaluation.score, "ci_low": evaluation.ci_low, "ci_high": evaluation.ci_high,
               "num_samples": evaluation.num_samples}
    metrics |= {_metric_name(f"score/{t}"): v for t, v in _per_tag(evaluation).items()}
    points = [Metric(k, float(v), ts, 0) for k, v in sorted(metrics.items())
              if v is not None and k not in run.data.metrics]
    for i in range(0, len(new), 100):  # MLflow's limit of params per batch
        client.log_batch(run_id, params=new[i:i + 100])
    if points or tags:
        client.log_batch(run_id, metrics=points, tags=tags)


def _log_table(client: MlflowClient, run_id: str, samples: Sequence[SampleScore]) -> None:
    if any(f.path == TABLE_FILE for f in client.list_artifacts(run_id)):
        return  # log_table would append a second copy of every row
    rows = sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))
    extra_keys = sorted({k for s in rows for k in (s.extra or {})} - {"prompt_index", "sample_index", "seed", "score"})
    table: dict[str, list[Any]] = {"prompt_index": [s.prompt_index for s in rows],
                                   "sample_index": [s.sample_index for s in rows],
                                   "seed": [s.seed for s in rows], "score": [s.score for s in rows]}
    for k in extra_keys:  # nested values (GenEval's detections) as JSON text: one readable cell each
        values = [(s.extra or {}).get(k) for s in rows]
        table[k] = [v if v is None or isinstance(v, str | int | float | bool) else json.dumps(v, sort_keys=True)
                    for v in values]
    # object columns throughout: log_table looks for image columns with select_dtypes("object"), which
    # warns (Pandas4Warning) on every mirror when pandas 3 infers its `str` dtype for text columns
    client.log_table(run_id, data=pd.DataFrame(table, dtype=object), artifact_file=TABLE_FILE)


def _log_panel(client: MlflowClient, run_id: str, samples: Sequence[SampleScore], images_dir: Path | None) -> None:
    if images_dir is None:
        return
    prompts = sorted({s.prompt_index for s in samples})[:PANEL_SIZE]
    by_key = {(s.prompt_index, s.sample_index): s for s in samples}
    present = {Path(f.path).name for f in client.list_artifacts(run_id, PANEL_DIR)}
    captions = []
    for p in prompts:
        path = Path(images_dir) / f"{p:05d}_00.png"
        if not path.is_file():
            continue  # images pruned since: the panel shows what is left
        if path.name not in present:
            client.log_artifact(run_id, str(path), PANEL_DIR)
        sample = by_key.get((p, 0))
        extra = (sample.extra or {}) if sample is not None else {}
        captions.append({"file": path.name, "prompt_index": p, "sample_index": 0,
                         "score": sample.score if sample is not None else None,
                         "prompt": extra.get("prompt") if isinstance(extra.get("prompt"), str) else None})
    if captions and "captions.json" not in present:
        client.log_dict(run_id, {"images": captions}, f"{PANEL_DIR}/captions.json")


def _log_training(client: MlflowClient, run_id: str, evaluation: Evaluation, step: int, ts: int) -> None:
    prefix = PARTIAL_PREFIX if evaluation.partial else BENCH_PREFIX
    values = {f"{prefix}/{evaluation.benchmark}": evaluation.score}
    values |= {f"{prefix}/{evaluation.benchmark}/{t}": v for t, v in _per_tag(evaluation).items()}
    points = []
    for name, value in sorted(values.items()):
        key = _metric_name(name)
        if value is None or any(m.step == step for m in client.get_metric_history(run_id, key)):
            continue
        points.append(Metric(key, float(value), ts, step))
    if points:
        client.log_batch(run_id, metrics=points)


def mirror_evaluation(
    evaluation: Evaluation,
    samples: Sequence[SampleScore],
    *,
    tracking_uri: str,
    experiment: str,
    images_dir: Path | None,
    training_run_id: str | None,
    step: int | None,
    artifact_location: str | None = None,
) -> str:
    """Bring MLflow up to date with a COMPLETED evaluation (module docstring); returns the child
    run id. `artifact_location`: for an experiment this creates (runner.api.tracking_target).
    Raises MirrorError (one line, no credentials) when MLflow fails."""
    key = eval_key(evaluation.checkpoint_sha256, evaluation.benchmark, evaluation.benchmark_version,
                   evaluation.spec_hash)
    # a dead server must cost one refused connection, not minutes of client retries (a user's own
    # settings win); set for the process, as MlflowLogger does: scoping it would race between threads
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    quiet_mlflow_links(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        training = _training_run(client, training_run_id)
        # nested runs show under their parent only within its experiment
        experiment_id = (training.info.experiment_id if training is not None
                         else get_or_create_experiment(client, experiment, artifact_location))
        ts = _ms(evaluation.ended_at)  # the child run's end and every metric point's timestamp
        parent = training.info.run_id if training is not None else None
        run_id = _child_run(client, evaluation, key, experiment_id, parent)
        fault_point("eval_mirror_after_child_run")
        _log_child(client, run_id, evaluation, key, parent, ts)
        _log_table(client, run_id, samples)
        fault_point("eval_mirror_after_table")
        _log_panel(client, run_id, samples, images_dir)
        if training is not None and step is not None:
            _log_training(client, training.info.run_id, evaluation, int(step), ts)
        fault_point("eval_mirror_before_finish")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED", end_time=ts)
        return run_id
    except Exception as exc:  # noqa: BLE001 - one error type for the worker and the scheduler to catch
        # the server's or the HTTP library's message may quote the request URL, credentials included
        detail = scrub(" ".join(f"{type(exc).__name__}: {exc}".split()), set(redact_text(tracking_uri)[1]))
        raise MirrorError(f"MLflow mirror of evaluation {evaluation.id} ({key}) at {redact_url(tracking_uri)} "
                          f"failed: {detail[:300]}") from None


def mirror_stored(store: Store, evaluation_id: int, *, tracking_uri: str, experiment: str,
                  artifact_location: str | None = None) -> str:
    """Mirror a COMPLETED evaluation of the store and mark it mirrored (the one entry point for the
    worker that completed it and for the scheduler's catch-up of `mirrored=false` rows).
    The training run is the evaluation's run's MLflow run (if any), at the checkpoint's step."""
    evaluation = store.get_evaluation(evaluation_id)
    if evaluation.status != EvalStatus.COMPLETED:
        raise MirrorError(f"evaluation {evaluation_id} is {evaluation.status}: only COMPLETED evaluations are mirrored")
    run = store.find_run(evaluation.run_name) if evaluation.run_name else None
    run_id = mirror_evaluation(
        evaluation,
        store.get_sample_scores(evaluation_id),
        tracking_uri=tracking_uri,
        experiment=experiment,
        images_dir=Path(evaluation.images_dir) if evaluation.images_dir else None,
        training_run_id=run.mlflow_run_id if run is not None else None,
        step=evaluation.step,
        artifact_location=artifact_location,
    )
    store.mark_mirrored(evaluation_id, run_id)
    return run_id

