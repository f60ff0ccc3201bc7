"""GenEval benchmark (official metric) and the Flow-GRPO / AWM GenEval reward.

Import-light: torch / transformers load lazily inside the detector / colour classifier.
See ``benchmarks/geneval/README.md`` for semantics, variants and options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Bump whenever the OFFICIAL metric's semantics change (rules, thresholds, aggregation,
#: colour crops/prompts, detector pre/post-processing). Non-default scoring options are
#: appended by the benchmark as ``+opts-<hash>`` so numbers never mix silently.
VERSION = "geneval-official-1.0"

#: Reward variants have their own versions (bump when that variant's values change).
REWARD_VERSIONS: dict[str, str] = {
    "flowgrpo_partial": "geneval-reward-flowgrpo_partial-1.0",
    "strict": "geneval-reward-strict-1.0",
}


def make_benchmark(**options: Any):
    """Registry factory. Options: ``detector_path``, ``clip_path``, ``device``, ``dtype``,
    ``batch_size``, scoring options (``threshold``, ``counting_threshold``, ``max_objects``,
    ``max_overlap``, ``position_threshold``, ``bgcolor``, ``crop``), ``engine`` ("hf"), ``workers``."""
    from benchmarks.geneval.benchmark import GenEvalBenchmark

    return GenEvalBenchmark(**options)


def score_detections_file(
    detections_jsonl: str | Path, metadata_jsonl: str | Path | None = None, **kwargs: Any
):
    """Score precomputed detections without any model -> ``(records, summary)``.

    See :func:`benchmarks.geneval.benchmark.score_detections_file`.
    """
    from benchmarks.geneval.benchmark import score_detections_file as _impl

    return _impl(detections_jsonl, metadata_jsonl, **kwargs)


def generate_train_prompts(n: int = 50_000, seed: int = 0, out_path: str | Path | None = None, **kwargs: Any):
    """GenEval-grammar training prompts (Flow-GRPO task mix, de-duplicated against the test sets)."""
    from benchmarks.geneval.prompts import generate_train_prompts as _impl

    return _impl(n, seed, out_path, **kwargs)
