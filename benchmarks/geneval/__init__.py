"""GenEval benchmark (official metric) and the Flow-GRPO / AWM GenEval reward.

The package holds the versions only, so importing it (or its prompt module) loads no model code;
the scorer is ``benchmarks.geneval.benchmark`` (``make_benchmark``, ``score_detections_file``),
the training-prompt grammar ``benchmarks.geneval.prompts``. See ``benchmarks/geneval/README.md``
for semantics, variants and options.
"""

from __future__ import annotations

#: Bump whenever the OFFICIAL metric's semantics change (rules, thresholds, aggregation,
#: colour crops/prompts, detector pre/post-processing). Non-default scoring options are
#: appended by the benchmark as ``+opts-<hash>`` so numbers never mix silently.
VERSION = "geneval-official-1.0"

#: Reward variants have their own versions (bump when that variant's values change).
REWARD_VERSIONS: dict[str, str] = {
    "flowgrpo_partial": "geneval-reward-flowgrpo_partial-1.0",
    "strict": "geneval-reward-strict-1.0",
}

