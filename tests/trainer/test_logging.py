"""The one logger stack (trainers/awm/logging.py): the composite logger the runner's worker builds
(JSONL authoritative, store and MLflow best effort) forwards every call and the optional hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainers.awm.logging import CompositeLogger, JsonlMetricLogger, NullLogger, read_jsonl_metrics


class Recording(NullLogger):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_metrics(self, metrics, step) -> None:
        self.calls.append(("log_metrics", dict(metrics), step))

    def on_resume(self, step) -> None:
        self.calls.append(("on_resume", step))

    def finish(self, status) -> None:
        self.calls.append(("finish", status))

    def close(self) -> None:
        self.calls.append(("close",))


class Broken(NullLogger):
    def log_metrics(self, metrics, step) -> None:
        raise ConnectionError("tracking server down")


def test_secondary_failures_are_warned_not_raised(tmp_path: Path) -> None:
    warnings: list[str] = []
    recording = Recording()
    logger = CompositeLogger(JsonlMetricLogger(tmp_path / "metrics.jsonl"), Broken(), recording,
                             warn=warnings.append)
    logger.on_resume(None)
    logger.log_metrics({"train/loss": 0.5}, 1)
    logger.finish("completed")
    logger.close()
    assert read_jsonl_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 0.5}]
    assert warnings == ["Broken.log_metrics failed: tracking server down"]
    assert recording.calls == [("on_resume", None), ("log_metrics", {"train/loss": 0.5}, 1),
                               ("finish", "completed"), ("close",)]


def test_the_primary_logger_is_authoritative(tmp_path: Path) -> None:
    recording = Recording()
    logger = CompositeLogger(Broken(), recording, warn=lambda _msg: None)
    with pytest.raises(ConnectionError):
        logger.log_metrics({"train/loss": 0.5}, 1)
