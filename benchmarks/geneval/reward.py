"""Trainer reward hook: ``make_reward(**reward_kwargs.geneval) -> RewardFn``.

Keyword arguments:
- ``variant``: "flowgrpo_partial" (default; Flow-GRPO / AWM reward-server ``score``) or
  "strict" (alias "official": the binary official GenEval verdict);
- reward-path flags (defaults depend on the variant, see README): ``jpeg_quality`` (75 / None),
  ``detector_channel_swap`` (True / False), ``negative_count_term`` (True),
  ``position_extra_one`` (True), ``use_exclude`` (False);
- benchmark options: ``detector_path``, ``clip_path``, ``device``, ``dtype``, ``batch_size``,
  ``detector_options``, and the scoring options ``threshold`` (0.3), ``counting_threshold``
  (0.9), ``max_objects`` (16), ``max_overlap`` (1.0), ``position_threshold`` (0.1),
  ``bgcolor`` ("#999"), ``crop`` (True).

The RewardFn returns ``{"geneval": reward of the variant, "geneval_partial": partial score,
"geneval_strict": reward-server strict_correct (0/1), "geneval_accuracy": official verdict (0/1)}``
and carries ``.version`` (e.g. "geneval-reward-flowgrpo_partial-1.0").
"""

from __future__ import annotations

from typing import Any

from benchmarks.base import RewardFn
from benchmarks.geneval.benchmark import GenEvalBenchmark

_REWARD_KEYS = (
    "variant",
    "jpeg_quality",
    "detector_channel_swap",
    "negative_count_term",
    "position_extra_one",
    "use_exclude",
)


def make_reward(**kwargs: Any) -> RewardFn:
    reward_opts = {k: kwargs.pop(k) for k in _REWARD_KEYS if k in kwargs}
    return GenEvalBenchmark(**kwargs).as_reward(**reward_opts)
