"""The benchmarks' exception types. Standard library only: the registry (read by config
validation at every `awm` command that loads a config) and the OCR pool workers (which pin their
thread pools before numpy loads) raise and catch them without importing numpy or PIL."""

from __future__ import annotations


class BenchmarkError(Exception):
    """Any benchmark failure (bad input, bad metadata, scoring failure). Message says what and where."""


class ModelUnavailableError(BenchmarkError):
    """Model weights / engine not available. Message names the missing path or id and how to provide it."""


class RewardError(RuntimeError):
    """A reward that cannot be built (unknown name, bad options) or returned malformed scores."""
