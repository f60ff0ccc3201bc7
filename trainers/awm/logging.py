"""The trainer's metric loggers (one stack: the platform builds its MLflow and store loggers on
these) + a rich progress-bar helper.

``MetricLogger`` is the protocol a logger implements; the trainer's default is
:class:`JsonlMetricLogger` (``<run_dir>/metrics.jsonl``); :class:`CompositeLogger` fans out to
several (the runner's worker: JSONL + platform store + MLflow).

Optional hooks, called when a logger has them:

* ``on_resume(step)``: no duplicates across a resume (contract). Every metric of optimizer step
  ``S`` (``train/*``, ``time/*``, and ``eval*/*`` of an evaluation at ``S``) is logged *before*
  checkpoint ``S`` is written, and a run resumed from checkpoint ``S`` logs only steps ``> S``.
  Records written by a crashed attempt after its last checkpoint would still be present, so at
  start the trainer calls ``logger.on_resume(S)`` (``S = None`` for a fresh start): loggers that
  can (the JSONL logger does) drop records with ``step > S`` (all records when ``S is None``).
* ``finish(status)``: the training entry point reports how the run ended ("completed",
  "interrupted" or "failed") before it closes the logger (MLflow records the run's status).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from benchmarks.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = getLogger("trainers.awm.logging")


@runtime_checkable
class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_images(self, images: list[Image.Image], captions: list[str], step: int, key: str) -> None: ...

    def log_checkpoint(self, manifest_path: Path, step: int) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    """Logs nothing (other ranks than 0); the base of loggers that implement only some methods."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_images(self, images: list[Any], captions: list[str], step: int, key: str) -> None: ...
    def log_checkpoint(self, manifest_path: Path, step: int) -> None: ...
    def close(self) -> None: ...


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class JsonlMetricLogger:
    """One JSON object per line: ``{"type": "metrics"|"images"|"checkpoint", "step", "time", ...}``.

    Metrics: ``{"type": "metrics", "step": S, "time": t, "metrics": {name: float|null}}``
    (non-finite values are written as null). Images are written as PNG files under
    ``<dir>/images/<key>/step-<S>-<i>.png`` and referenced from an ``images`` record.
    """

    def __init__(self, path: str | Path, *, images: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.images = images
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends

    def _write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._write({"type": "metrics", "step": int(step), "time": time.time(),
                     "metrics": {k: _num(v) for k, v in metrics.items()}})

    def log_images(self, images, captions, step, key) -> None:
        if not self.images:
            return
        d = self.path.parent / "images" / key.replace("/", "_")
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for i, im in enumerate(images):
            p = d / f"step-{int(step)}-{i}.png"
            im.save(p)
            files.append(str(p.relative_to(self.path.parent)))
        self._write({"type": "images", "step": int(step), "time": time.time(), "key": key,
                     "files": files, "captions": list(captions)})

    def log_checkpoint(self, manifest_path: Path, step: int) -> None:
        self._write({"type": "checkpoint", "step": int(step), "time": time.time(), "manifest": str(manifest_path)})

    def on_resume(self, step: int | None) -> None:
        """Drop records beyond the resumed step (all records on a fresh start)."""
        self._f.close()
        kept = []
        if step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash
                if int(rec.get("step", -1)) <= step:
                    kept.append(line)
        atomic_write(self.path, "".join(k + "\n" for k in kept))
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_jsonl_metrics(path: str | Path) -> list[dict]:
    """``[{"step": S, **metrics}]`` for every metrics record (handy in tests and notebooks)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("type") == "metrics":
            out.append({"step": rec["step"], **rec["metrics"]})
    return out


class CompositeLogger:
    """Fan-out. The first logger (JSONL) is authoritative and may raise; the others are
    best-effort: a database or tracking hiccup must never stop training (``warn`` reports it)."""

    def __init__(self, primary: Any, *others: Any, warn: Callable[[str], None] | None = None) -> None:
        self.primary = primary
        self.others = [lg for lg in others if lg is not None]
        self.warn = warn if warn is not None else log.warning

    def _each(self, method: str, *args: Any) -> None:
        fn = getattr(self.primary, method, None)
        if fn is not None:
            fn(*args)
        for sink in self.others:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - best effort: never stop training
                self.warn(f"{type(sink).__name__}.{method} failed: {exc}")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_images(self, images: list[Any], captions: list[str], step: int, key: str) -> None:
        self._each("log_images", images, captions, step, key)

    def log_checkpoint(self, manifest_path: Path, step: int) -> None:
        self._each("log_checkpoint", manifest_path, step)

    def on_resume(self, step: int | None) -> None:
        # the JSONL logger drops records past the resumed checkpoint; MLflow drops re-logged
        # steps with its high-water marks; the store upserts on (run, key, step)
        self._each("on_resume", step)

    def finish(self, status: str) -> None:
        self._each("finish", status)

    def flush_metrics(self) -> None:
        """Make the metrics logged so far durable in every sink that buffers them (the trainer calls
        it before a checkpoint is final)."""
        self._each("flush_metrics")

    def close(self) -> None:
        self._each("close")


# ------------------------------------------------------------------ progress
class Progress:
    """A rich progress bar that is a no-op when disabled (not a TTY, not the main process)."""

    def __init__(self, enabled: bool | None = None):
        if enabled is None:
            enabled = sys.stderr.isatty() and os.environ.get("AWM_NO_PROGRESS", "") in ("", "0")
        self.enabled = enabled
        self._p = None
        if enabled:
            self._p = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TimeElapsedColumn(), transient=True)

    def __enter__(self) -> Progress:  # noqa: PYI034
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.stop()

    def task(self, description: str, total: int):
        if self._p is None:
            return None
        return self._p.add_task(description, total=total)

    def advance(self, task, n: int = 1) -> None:
        if self._p is not None and task is not None:
            self._p.advance(task, n)

    def remove(self, task) -> None:
        if self._p is not None and task is not None:
            self._p.remove_task(task)
