"""Rank intervals and tie groups for leaderboard rows, from ONE joint paired bootstrap.

The rows are evaluations in one comparable group (equal `compare_hash`: same prompts, seeds and
sampler), so their per-sample scores are paired. Every bootstrap replicate resamples the units
(prompts, or prompt texts; within strata = tags for GenEval) ONCE and applies that resample to
every row: the difference of two rows' replicate scores is exactly the paired bootstrap of
`awm_platform.evals.stats.paired_comparison` (same units, same draws from the same seed: the
shared `stats.group_units` / `stats.resample_indices`), so each pairwise verdict here equals
`paired_comparison(...).tied`.

For each row: `low = 1 + #rows significantly better` (the (1 - alpha) CI of the difference
excludes 0), `high = #rows - #rows significantly worse`, `rank` = position by score, and `group`:
consecutive rows by score share a tie group while their `low` is equal (LMSYS Arena's
"Rank (UB)" grouping).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from awm_platform.evals.stats import group_units, resample_indices, statistic


@dataclass(frozen=True)
class UnitScores:
    """One row's per-sample scores with the prompts' strata (tags) and resampling units (texts)."""

    scores: Mapping[tuple[int, int], float]  # (prompt_index, sample_index) -> score
    strata: Mapping[int, str] | None = None
    units: Mapping[int, Hashable] | None = None
    score: float | None = None  # the score the row shows (its rank follows it); None: the scores' statistic


@dataclass(frozen=True)
class RankInterval:
    rank: int  # 1 = best score
    low: int  # best rank the data allow
    high: int  # worst rank the data allow
    group: int  # tie group, 1 = the top group


def bootstrap_scores(rows: Mapping[str, UnitScores], *, n_boot: int = 1000,
                     seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(row keys, their scores on the shared pairs, replicate scores of shape (rows, n_boot))."""
    keys = list(rows)
    strata: dict[int, str] = {}
    units: dict[int, Hashable] = {}
    for r in rows.values():  # the rows of one group agree on them; merged as compare_evaluations does
        strata.update(r.strata or {})
        units.update(r.units or {})
    g = group_units([rows[k].scores for k in keys], strata or None, units or None)
    point = np.array([statistic(s, g.count, g.weighted) for s in g.sums])
    boot = np.zeros((len(keys), n_boot), dtype=np.float64)
    rng = np.random.default_rng(seed)
    start = 0
    for draws in resample_indices([c.size for c in g.count], n_boot, rng):
        size = draws[0].shape[0]
        for stratum, idx in enumerate(draws):
            count = g.count[stratum]
            for i, sums in enumerate(g.sums):
                s = sums[stratum]
                boot[i, start:start + size] += (s[idx].sum(axis=1) / count[idx].sum(axis=1) if g.weighted
                                                else (s / count)[idx].mean(axis=1))
        start += size
    boot /= len(g.count)
    return keys, point, boot


def significance(point: np.ndarray, boot: np.ndarray, alpha: float) -> np.ndarray:
    """better[i, j]: row j is significantly better than row i (CI of j - i above 0)."""
    n = point.size
    better = np.zeros((n, n), dtype=bool)
    for i in range(n):
        diffs = boot - boot[i]  # (rows, n_boot): every row minus row i, replicate by replicate
        better[i] = np.quantile(diffs, alpha / 2, axis=1) > 0.0
        better[i, i] = False
    return better


def rank_intervals(rows: Mapping[str, UnitScores], *, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> dict[str, RankInterval]:
    """Rank intervals of `rows` (module docstring); higher scores are better."""
    if not rows:
        return {}
    if len(rows) == 1:
        return {next(iter(rows)): RankInterval(rank=1, low=1, high=1, group=1)}
    keys, point, boot = bootstrap_scores(rows, n_boot=n_boot, seed=seed)
    better = significance(point, boot, alpha)
    n = len(keys)
    shown = [rows[k].score if rows[k].score is not None else float(point[i]) for i, k in enumerate(keys)]
    order = sorted(range(n), key=lambda i: (-shown[i], keys[i]))
    out: dict[str, RankInterval] = {}
    group, last_low = 0, None
    for position, i in enumerate(order, start=1):
        low = 1 + int(better[i].sum())
        high = n - int(better[:, i].sum())
        if low != last_low:
            group, last_low = group + 1, low
        out[keys[i]] = RankInterval(rank=position, low=low, high=high, group=group)
    return out
