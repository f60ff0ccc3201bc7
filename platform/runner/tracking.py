"""Metric sinks used inside a job: JSONL (run dir) + platform store + MLflow.

MLflow (`MlflowLogger`):
* metrics are buffered in memory and sent by a background thread with ONE
  `MlflowClient.log_batch` per flush (every `flush_interval_s`, or at 1000 values), never one
  HTTP call per value;
* when the tracking server is unreachable, each batch is appended to
  `run_dir/mlflow_spool/metrics.jsonl` (one `write()` on an O_APPEND descriptor per batch, so a
  crash never leaves half a batch interleaved) and the server is retried every
  `retry_interval_s`; once it answers, the spool is replayed (with the original timestamps,
  so a replay that is interrupted and redone does not duplicate rows: MLflow drops identical
  (key, value, timestamp, step) points) and deleted;
* images and checkpoint manifests are staged under `mlflow_spool/artifacts/` and uploaded by
  the same thread (so they survive an outage too); images go through `MlflowClient.log_image`
  with `key=<key>/<index>` and `step=` (the UI's image charts with a step slider), their
  captions as the artifact `samples/<key>/step_<N>/captions.json`;
* experiments are created tagged `mlflow.experimentKind = custom_model_development` (MLflow 3's
  UI otherwise opens them in its GenAI view instead of the runs table);
* per-key high-water marks (`mlflow_spool/hwm.json`, updated only for values that were sent
  or spooled) drop re-logged steps after a resume: the history has no duplicated steps;
* the MLflow run is created once per training run (id in `run_dir/capsule/mlflow.json` and
  the store); requeued jobs reuse it. Nested runs only via an explicit parent run id.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from PIL import Image

from awm_platform.config import config_hash, flatten, resolved_config
from awm_platform.redaction import quiet_mlflow_links, redact, redact_url
from awm_platform.runner.capsule import user_name
from awm_platform.runner.proc import child_env, scoped_environ
from awm_platform.runner.spec import JobSpec
from awm_platform.store import Store
from benchmarks.files import FILE_MODE, atomic_write
from trainers.awm.logging import CompositeLogger, JsonlMetricLogger, NullLogger

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000


#: MLflow 3's UI reads this experiment tag to choose its view; without it, it may open our experiments in
#: the GenAI (traces) view. The values are the UI's ExperimentKind enum (mlflow/server/js bundle:
#: GENAI_DEVELOPMENT="genai_development", CUSTOM_MODEL_DEVELOPMENT="custom_model_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
IMAGES_MANIFEST = "images.json"  # marks a staged bundle whose images go through log_image


def _warn(msg: str) -> None:
    # MLflow's errors name the request URL, i.e. the tracking URI with its credentials
    print(f"[awm-tracking] {redact_url(msg)}", file=sys.stderr, flush=True)


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it tagged as model training; an existing experiment without a
    kind gets the tag (one a user set is left alone)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING})
        except Exception:
            exp = client.get_experiment_by_name(name)  # lost a creation race
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    return exp.experiment_id


def image_key(key: str, index: int) -> str:
    """MLflow image key of the ``index``-th image logged under ``key`` (log_image accepts only
    alphanumerics, ``_ - . /`` and spaces)."""
    safe = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key).strip("/") or "images"
    return f"{safe}/{index:02d}"


class StoreLogger(NullLogger):
    """Metrics into the platform store (sweeps prune on `eval/*`), checkpoints registered.

    Writes happen in a background thread (a database transaction must not sit in the training
    step): train metrics every `flush_interval_s`, eval metrics and checkpoints at once (a
    pruner may be waiting for them). `close()` drains everything. `on_checkpoint(run_dir, step)`
    runs once per checkpoint, after its registration (`eval.on_checkpoint`); its failure only warns."""

    def __init__(self, store_url: str, run_name: str, flush_interval_s: float = 2.0,
                 on_checkpoint: Callable[[Path, int], Any] | None = None) -> None:
        self.store = Store(store_url, upgrade=False)
        self.run_name = run_name
        self.flush_interval_s = flush_interval_s
        self.on_checkpoint = on_checkpoint
        self._buf: dict[int, dict[str, float]] = {}
        self._ckpts: list[tuple[Path, int]] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # one flush at a time: a flush returns once what it saw is written
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="awm-store-flusher", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        with self._lock:
            self._buf.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})
        if any(k.startswith("eval") for k in metrics):
            self._wake.set()

    def log_checkpoint(self, manifest_path: Path, step: int) -> None:
        with self._lock:
            self._ckpts.append((Path(manifest_path), int(step)))
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # keep going: the next flush retries what is left
                _warn(f"store flush failed: {exc}")

    def flush(self) -> None:
        with self._io_lock:
            self._flush(checkpoints=True)

    def flush_metrics(self) -> None:
        """Write the buffered metrics now (the trainer's call before a checkpoint is final); checkpoint
        registrations and their `on_checkpoint` hooks stay with the background thread. Waits for a
        flush in progress, which holds values logged before this call: one flush at a time."""
        with self._io_lock:
            self._flush(checkpoints=False)

    def _flush(self, *, checkpoints: bool) -> None:
        with self._lock:
            buf, self._buf = self._buf, {}
            ckpts: list[tuple[Path, int]] = []
            if checkpoints:
                ckpts, self._ckpts = self._ckpts, []
        try:
            for step, metrics in sorted(buf.items()):
                self.store.log_metrics(self.run_name, metrics, step)
                del buf[step]
            while ckpts:
                manifest_path, step = ckpts[0]
                data = json.loads(manifest_path.read_text())
                sha = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
                self.store.add_checkpoint(
                    self.run_name,
                    step=step,
                    path=str(manifest_path.parent),
                    sha256=sha,
                    formats=list(data.get("formats", [])),
                )
                ckpts.pop(0)
                if self.on_checkpoint is not None:
                    try:
                        self.on_checkpoint(manifest_path.parent.parent.parent, step)
                    except Exception as exc:  # noqa: BLE001 - evaluations never break training
                        _warn(f"eval.on_checkpoint for step {step} failed: {type(exc).__name__}: {exc}")
        finally:  # put back what was not written (older values never override newer ones)
            with self._lock:
                for step, metrics in buf.items():
                    self._buf[step] = {**metrics, **self._buf.get(step, {})}
                self._ckpts[:0] = ckpts

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        try:
            self.flush()
        finally:
            self.store.close()


# ---------------------------------------------------------------------- MLflow ----
# Platform run status -> MLflow run status. Every terminal state closes the MLflow run (with an
# end time), whichever process notices it: the worker (`MlflowLogger.finish`), the job
# controller, the state poller, `cancel_run` (CLI cancel, sweep prune/stop). PREEMPTED is not
# terminal: the requeued job continues the same MLflow run.
MLFLOW_STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED", "PRUNED": "KILLED"}


def mlflow_status(run_status: str) -> str | None:
    """The MLflow status of a platform run status (or of a trainer result such as
    "completed"); None for states that leave the MLflow run open."""
    return MLFLOW_STATUS.get(run_status.upper())


def _fail_fast_http() -> contextlib.AbstractContextManager[None]:
    """No client retries for the calls inside (unless the user set them); the caller's process
    (a CLI, a sweep orchestrator) keeps its own settings afterwards."""
    return scoped_environ({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
                           "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")})


def end_mlflow_run(run: Any, *, tracking_uri: str | None = None) -> str | None:
    """Close the MLflow run of the store row `run` (terminal status) with its MLflow status and
    `run.ended_at` as end time. The tracking URI is the one the job used (`job.json`).
    Returns the MLflow status set, or None when there is nothing to close (status not
    terminal, no MLflow run created yet) or MLflow is unreachable (warned; best effort)."""
    status = mlflow_status(run.status)
    if status is None:
        return None
    run_dir = Path(run.output_dir)
    run_id = run.mlflow_run_id or MlflowLogger._load_json(run_dir / "capsule" / "mlflow.json").get("run_id")
    if not run_id:
        return None
    if tracking_uri is None:
        try:
            tracking_uri = JobSpec.load(run_dir).tracking_uri
        except (OSError, ValueError, TypeError) as exc:
            _warn(f"cannot close MLflow run {run_id} of {run.name}: {exc}")
            return None
    ended = run.ended_at
    if ended is not None and ended.tzinfo is None:  # SQLite returns naive UTC datetimes
        ended = ended.replace(tzinfo=UTC)
    end_ms = int(ended.timestamp() * 1000) if ended is not None else int(time.time() * 1000)
    try:
        from mlflow.tracking import MlflowClient  # deferred: see MlflowLogger._client_

        quiet_mlflow_links(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
        with _fail_fast_http():  # a dead server costs one refused connection, not minutes of retries
            info = client.get_run(run_id).info
            if info.status == status and info.end_time:
                return status  # already closed (e.g. by the worker): keep its end time
            client.set_terminated(run_id, status=status, end_time=end_ms)
    except Exception as exc:  # noqa: BLE001 - tracking must never break state handling
        _warn(f"could not mark MLflow run {run_id} of {run.name} {status} at "
              f"{_redact_uri(tracking_uri)}: {type(exc).__name__}: {str(exc)[:200]}")
        return None
    return status


def run_params(resolved: Mapping[str, Any]) -> dict[str, str]:
    """Flattened resolved config as MLflow params (values cut to MLflow's length limit)."""
    out: dict[str, str] = {}
    for k, v in flatten(dict(resolved)).items():
        text = v if isinstance(v, str) else json.dumps(v)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 15] + "...[truncated]"
        out[k[:250]] = text
    return out


class MlflowLogger(NullLogger):
    def __init__(
        self,
        run_dir: Path,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifact_root: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        job_tags: Mapping[str, str] | None = None,
        log_lora: str = "path",
        on_run_created: Any = None,
        flush_interval_s: float = 2.0,
        retry_interval_s: float = 3.0,
        background: bool = True,
    ) -> None:
        # A dead server must cost one refused connection, not minutes of client retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.run_dir = Path(run_dir)
        self.spool = self.run_dir / "mlflow_spool"
        (self.spool / "artifacts").mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.artifact_root = artifact_root
        self.parent_run_id = parent_run_id
        self.tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in (tags or {}).items() if v is not None}
        self.params = dict(params or {})
        self.job_tags = {k: str(v) for k, v in (job_tags or {}).items() if v is not None}
        self.log_lora = log_lora
        self.on_run_created = on_run_created
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self._client: Any = None
        self._info_path = self.run_dir / "capsule" / "mlflow.json"
        self._info = self._load_json(self._info_path)
        self._hwm: dict[str, int] = {k: int(v) for k, v in self._load_json(self.spool / "hwm.json").items()}
        self._queued_hwm = dict(self._hwm)
        self._buf: list[tuple[str, float, int, int]] = []
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._job_tags_sent = False
        self._reopened = False
        self._offline_until = 0.0
        self._offline_warned = False
        self._status: str | None = None
        self.stats = {"flushes": 0, "sent": 0, "spooled": 0, "replayed": 0}
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="awm-mlflow-flusher", daemon=True)
            self._thread.start()

    @staticmethod
    def _load_json(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def run_id(self) -> str | None:
        return self._info.get("run_id")

    # --------------------------------------------------------------- logging API ----
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        step = int(step)
        rows = []
        with self._lock:
            for k, v in metrics.items():
                if self._queued_hwm.get(k, -1) >= step:
                    continue  # re-logged after a resume: already in MLflow (or the spool)
                self._queued_hwm[k] = step
                rows.append((k, float(v), ts, step))
            self._buf.extend(rows)
            full = len(self._buf) >= MAX_BATCH
        if full:
            self._wake.set()

    def _stage(self, build: Any) -> None:
        """Write an artifact bundle atomically (tmp dir + rename): the uploader only sees
        complete bundles."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.spool / "artifacts" / f".tmp-{name}"
        tmp.mkdir(parents=True)
        build(tmp)
        os.replace(tmp, self.spool / "artifacts" / name)
        self._wake.set()

    def log_images(self, images: list[Any], captions: list[str], step: int, key: str) -> None:
        def build(d: Path) -> None:
            sub = d / "samples" / key / f"step_{int(step):06d}"
            sub.mkdir(parents=True)
            entries = []
            for i, (img, caption) in enumerate(zip(images, captions, strict=False)):
                fname = f"{i:03d}.png"
                img.save(d / fname)  # uploaded with log_image, not as a plain artifact
                entries.append({"file": fname, "image_key": image_key(key, i), "caption": caption})
            (sub / "captions.json").write_text(
                json.dumps({"step": int(step), "key": key, "images": [
                    {k: e[k] for k in ("image_key", "caption")} for e in entries]}, indent=2))
            (d / IMAGES_MANIFEST).write_text(json.dumps({"step": int(step), "images": entries}))

        self._stage(build)

    def log_checkpoint(self, manifest_path: Path, step: int) -> None:
        manifest_path = Path(manifest_path)
        ckpt = manifest_path.parent

        def build(d: Path) -> None:
            sub = d / "checkpoints" / f"step-{int(step)}"
            sub.mkdir(parents=True)
            shutil.copy2(manifest_path, sub / "manifest.json")
            lora_files = sorted(
                p for p in ckpt.rglob("*") if p.is_file() and p.parts[len(ckpt.parts)].startswith("lora")
            )
            if self.log_lora == "artifact":
                for p in lora_files:
                    dst = sub / p.relative_to(ckpt)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(p, dst)  # no copy; survives checkpoint rotation before upload
                    except OSError:
                        shutil.copy2(p, dst)
            else:
                (sub / "lora_reference.json").write_text(
                    json.dumps(
                        {
                            "step": int(step),
                            "checkpoint_dir": str(ckpt),
                            "files": [str(p.relative_to(ckpt)) for p in lora_files],
                        },
                        indent=2,
                    )
                )

        self._stage(build)

    def finish(self, status: str) -> None:
        self._status = status

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush(final=True)

    # ------------------------------------------------------------------ flushing ----
    def _loop(self) -> None:
        try:  # load mlflow now, while the trainer starts up, not in the final flush of a short run
            self._client_()
        except Exception as exc:  # pragma: no cover - the first flush reports it (and spools)
            _warn(f"MLflow client not ready: {exc}")
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if self._closed:
                break
            try:
                self.flush()
            except Exception as exc:  # pragma: no cover - never let the thread die
                _warn(f"flush failed: {exc}")

    def _client_(self) -> Any:
        if self._client is None:
            # deferred: mlflow takes 1-3 s to import; the job controller imports this module (the
            # run lifecycle closes MLflow runs) and must install its preemption-signal handlers
            # within seconds of starting, so mlflow loads only when a run is actually tracked.
            from mlflow.tracking import MlflowClient

            quiet_mlflow_links(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _ensure_run(self) -> str:
        from mlflow.entities import Param, RunTag  # deferred: see _client_

        client = self._client_()
        if not self.run_id:
            exp_id = get_or_create_experiment(client, self.experiment, self.artifact_root)
            tags = dict(self.tags)
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = client.create_run(exp_id, run_name=self.run_name, tags=tags)
            self._reopened = True  # new: nothing to reopen
            self._info = {
                "run_id": run.info.run_id,
                "experiment_id": exp_id,
                "experiment": self.experiment,
                "tracking_uri": _redact_uri(self.tracking_uri),
                "params_logged": False,
            }
            atomic_write(self._info_path, json.dumps(self._info, indent=2) + "\n")
            if self.on_run_created is not None:
                try:
                    self.on_run_created(run.info.run_id)
                except Exception as exc:
                    _warn(f"could not record the MLflow run id: {exc}")
        run_id = self._info["run_id"]
        if not self._reopened:
            # `awm rerun --resume` continues a FAILED/CANCELLED run: its MLflow run is open again
            if client.get_run(run_id).info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            self._reopened = True
        if not self._info.get("params_logged"):
            items = sorted(self.params.items())
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + MAX_PARAMS_PER_BATCH]])
            self._info["params_logged"] = True
            atomic_write(self._info_path, json.dumps(self._info, indent=2) + "\n")
        if not self._job_tags_sent and self.job_tags:
            client.log_batch(run_id, tags=[RunTag(k, v[:MAX_TAG_VALUE]) for k, v in self.job_tags.items()])
            self._job_tags_sent = True
        return run_id

    def _spool_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        if not rows:
            return
        data = "".join(
            json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n" for k, v, t, s in rows
        )
        fd = os.open(self.spool / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stats["spooled"] += len(rows)

    def _send(self, run_id: str, rows: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric  # deferred: see _client_

        for i in range(0, len(rows), MAX_BATCH):
            self._client_().log_batch(
                run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in rows[i : i + MAX_BATCH]]
            )
        self.stats["sent"] += len(rows)

    def _replay(self, run_id: str) -> None:
        live = self.spool / "metrics.jsonl"
        replaying = self.spool / "metrics.replaying.jsonl"
        if live.exists() and not replaying.exists():
            os.replace(live, replaying)  # new spooled batches go to a fresh file meanwhile
        if not replaying.exists():
            return
        rows = []
        for line in replaying.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line of a crashed writer
            rows.append((r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])))
        self._send(run_id, rows)
        replaying.unlink()
        self.stats["replayed"] += len(rows)
        if rows:
            _warn(f"replayed {len(rows)} spooled metric values to MLflow")

    def _upload_artifacts(self, run_id: str) -> None:
        root = self.spool / "artifacts"
        for bundle in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".tmp-")):
            manifest = bundle / IMAGES_MANIFEST
            if manifest.is_file():
                spec = json.loads(manifest.read_text())
                for entry in spec["images"]:
                    path = bundle / entry["file"]
                    if not path.is_file():
                        continue  # uploaded before an interrupted replay
                    with Image.open(path) as img:
                        self._client_().log_image(run_id, img.copy(), key=entry["image_key"], step=int(spec["step"]),
                                                  synchronous=True)
                    path.unlink()  # a retried upload does not log it twice
                manifest.unlink()
            self._client_().log_artifacts(run_id, str(bundle))
            shutil.rmtree(bundle, ignore_errors=True)

    def _save_hwm(self, rows: list[tuple[str, float, int, int]]) -> None:
        if not rows:
            return
        for k, _v, _t, s in rows:
            if s > self._hwm.get(k, -1):
                self._hwm[k] = s
        atomic_write(self.spool / "hwm.json", json.dumps(self._hwm))

    def pending(self) -> bool:
        return (
            (self.spool / "metrics.jsonl").exists()
            or (self.spool / "metrics.replaying.jsonl").exists()
            or any(
                p.is_dir() and not p.name.startswith(".tmp-") for p in (self.spool / "artifacts").iterdir()
            )
        )

    def flush_metrics(self) -> None:
        """Send the buffered metrics (and the spool), or spool them: the trainer's call before a
        checkpoint is final. Staged images and checkpoint artifacts are left to the background thread
        (an upload must not stall training); they are on disk already."""
        self.flush(artifacts=False)

    def flush(self, final: bool = False, *, artifacts: bool = True) -> bool:
        """Send buffered metrics (and the spool); spool them if MLflow is unreachable; then, with
        `artifacts`, upload what is staged. Returns True when everything reached MLflow."""
        with self._io_lock:
            with self._lock:
                rows, self._buf = self._buf, []
            self.stats["flushes"] += 1
            if not final and time.monotonic() < self._offline_until:
                self._spool_rows(rows)
                self._save_hwm(rows)
                return False
            sent = False
            try:
                run_id = self._ensure_run()
                self._replay(run_id)
                self._send(run_id, rows)
                sent = True
                self._save_hwm(rows)
                if artifacts:
                    self._upload_artifacts(run_id)
                if self._status is not None and final:
                    state = mlflow_status(self._status)
                    if state:
                        self._client_().set_terminated(run_id, state)
                if self._offline_warned:
                    _warn("MLflow is reachable again")
                self._offline_until, self._offline_warned = 0.0, False
                return True
            except Exception as exc:
                if not sent:
                    self._spool_rows(rows)
                    self._save_hwm(rows)
                self._offline_until = time.monotonic() + self.retry_interval_s
                if not self._offline_warned:
                    _warn(
                        f"MLflow at {_redact_uri(self.tracking_uri)} unreachable ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); spooling to {self.spool}"
                    )
                    self._offline_warned = True
                return False


def _redact_uri(uri: str) -> str:
    return str(redact(uri))


def spool_pending(run_dir: Path) -> bool:
    """Whether `run_dir/mlflow_spool` holds metrics or artifacts that never reached MLflow."""
    spool = Path(run_dir) / "mlflow_spool"
    if (spool / "metrics.jsonl").exists() or (spool / "metrics.replaying.jsonl").exists():
        return True
    try:
        return any(p.is_dir() and not p.name.startswith(".tmp-") for p in (spool / "artifacts").iterdir())
    except OSError:
        return False


def replay_spool(run_dir: Path, tracking_uri: str | None = None) -> bool:
    """Send what a finished job left in `run_dir/mlflow_spool` (server was down at its end).

    Called by `awm status` for every finished run whose spool is not empty (docs/runner.md).
    Only for runs whose job has ended: a live job replays its own spool. Concurrent callers
    are serialised by a lock file; a replay redone after a crash adds no duplicates (metrics
    keep their original timestamps, artifacts are re-uploaded to the same paths)."""
    run_dir = Path(run_dir)
    spec = JobSpec.load(run_dir)
    (run_dir / "mlflow_spool").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "mlflow_spool" / ".replay.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        logger = MlflowLogger(
            run_dir,
            tracking_uri=tracking_uri or spec.tracking_uri,
            experiment=spec.experiment,
            run_name=spec.name,
            artifact_root=spec.artifact_root,
            parent_run_id=spec.parent_run_id,
            background=False,
        )
        return logger.flush(final=True)


# --------------------------------------------------------------------- factory ----
# Set by the trainer's distributed launch: an evaluation job started from a training job must not inherit them
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
EVAL_HOOK_LOG = "eval_on_checkpoint.log"


def spawn_eval_on_checkpoint(run_dir: Path, step: int) -> subprocess.Popen[bytes]:
    """`eval.on_checkpoint`: enqueue the evaluations of the run's new checkpoint in a detached process
    (`python -m awm_platform.evals.scheduler RUN_DIR STEP`, output appended to
    `run_dir/eval_on_checkpoint.log`), so training never waits for it and nothing it does can break
    training. It ensures the evaluations and submits their job with the run's own config."""
    env = {k: v for k, v in child_env().items() if k not in _DISTRIBUTED_ENV and not k.startswith("ACCELERATE_")}
    with open(Path(run_dir) / EVAL_HOOK_LOG, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "awm_platform.evals.scheduler", str(run_dir), str(int(step))],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)


def build_logger(spec: Any, run_dir: Path) -> CompositeLogger:
    """The logger a job's rank 0 hands to the trainer: the trainer's JSONL file (authoritative),
    then the platform store and MLflow (best effort)."""
    run_dir = Path(run_dir)
    primary = JsonlMetricLogger(run_dir / "metrics.jsonl")
    cfg = spec.experiment_config()
    git = MlflowLogger._load_json(run_dir / "capsule" / "git.json")
    tags = {
        "mlflow.user": user_name(),
        "mlflow.source.name": "awm_platform.runner",
        "awm.config_hash": config_hash(cfg),
        "awm.method": cfg.method,  # the training method (also the `method` param): MLflow UI search/grouping
        "awm.run_dir": str(run_dir),
        **({"mlflow.source.git.commit": git["commit"]} if git.get("commit") else {}),
        **({"mlflow.source.git.branch": git["branch"]} if git.get("branch") else {}),
        **({"awm.git_dirty": str(bool(git["dirty"])).lower()} if git.get("dirty") is not None else {}),
        **spec.tags,
    }
    job_tags = {
        "awm.cluster": spec.cluster,
        "awm.job_id": os.environ.get("AWM_JOB_ID", ""),
        "awm.host": socket.gethostname(),
    }

    def on_run_created(run_id: str) -> None:
        with Store(spec.store_url, upgrade=False) as store:
            store.update_run(spec.name, mlflow_run_id=run_id)

    store_logger = StoreLogger(spec.store_url, spec.name,
                               on_checkpoint=spawn_eval_on_checkpoint if cfg.eval.on_checkpoint else None)
    mlflow_logger = MlflowLogger(
        run_dir,
        tracking_uri=spec.tracking_uri,
        experiment=spec.experiment,
        run_name=spec.name,
        artifact_root=spec.artifact_root,
        parent_run_id=spec.parent_run_id,
        tags=tags,
        params=run_params(resolved_config(cfg)),
        job_tags=job_tags,
        log_lora=cfg.tracking.log_lora,
        on_run_created=on_run_created,
        flush_interval_s=float(os.environ.get("AWM_MLFLOW_FLUSH_S", "2.0")),
        retry_interval_s=float(os.environ.get("AWM_MLFLOW_RETRY_S", "3.0")),
    )
    return CompositeLogger(primary, store_logger, mlflow_logger, warn=_warn)
