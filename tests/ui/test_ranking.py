"""Rank intervals from one joint paired bootstrap agree with the pairwise paired tests of the
evaluation service (stats.paired_comparison), pair by pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from awm_platform.evals.stats import paired_comparison
from awm_platform.ui.ranking import RankInterval, UnitScores, bootstrap_scores, rank_intervals

N_BOOT = 2000


def _rows(means: dict[str, float], *, n_prompts: int = 40, samples: int = 2, noise: float = 0.15, seed: int = 0,
          binary: bool = False) -> dict[str, dict[tuple[int, int], float]]:
    rng = np.random.default_rng(seed)
    prompt_effect = rng.normal(0, 0.2, n_prompts)  # shared by every row: why pairing matters
    out = {}
    for name, mean in means.items():
        scores = {}
        for p in range(n_prompts):
            for s in range(samples):
                v = mean + prompt_effect[p] + rng.normal(0, noise)
                scores[(p, s)] = float(rng.random() < min(1.0, max(0.0, v))) if binary else float(v)
        out[name] = scores
    return out


def _check_pairwise(rows: dict[str, UnitScores], strata: dict[int, str] | None = None,
                    units: dict[int, str] | None = None) -> dict[str, RankInterval]:
    ranks = rank_intervals(rows, n_boot=N_BOOT, seed=3)
    keys, _point, boot = bootstrap_scores(rows, n_boot=N_BOOT, seed=3)
    n_better = dict.fromkeys(rows, 0)
    n_worse = dict.fromkeys(rows, 0)
    for a, b in itertools.combinations(rows, 2):
        ref = paired_comparison(rows[a].scores, rows[b].scores, strata=strata, units=units, n_boot=N_BOOT,
                                n_perm=10, seed=3)
        # the joint bootstrap's b - a is the pairwise bootstrap itself: same draws, same units
        diff = boot[keys.index(b)] - boot[keys.index(a)]
        lo, hi = np.quantile(diff, [0.025, 0.975])
        assert (lo, hi) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)
        if not ref.tied:
            better, worse = (b, a) if ref.ci_low > 0 else (a, b)
            n_better[worse] += 1
            n_worse[better] += 1
    for k, r in ranks.items():
        assert (r.low, r.high) == (1 + n_better[k], len(rows) - n_worse[k]), k
    return ranks


def test_clear_cut_rows_get_single_ranks() -> None:
    scores = _rows({"a": 0.2, "b": 0.5, "c": 0.8, "d": 1.1}, noise=0.05)
    ranks = _check_pairwise({k: UnitScores(v) for k, v in scores.items()})
    assert ranks == {"d": RankInterval(1, 1, 1, 1), "c": RankInterval(2, 2, 2, 2), "b": RankInterval(3, 3, 3, 3),
                     "a": RankInterval(4, 4, 4, 4)}


def test_close_rows_tie_and_share_a_group() -> None:
    scores = _rows({"a": 0.50, "b": 0.51, "c": 0.52, "z": 1.5}, noise=0.3)
    ranks = _check_pairwise({k: UnitScores(v) for k, v in scores.items()})
    assert ranks["z"] == RankInterval(1, 1, 1, 1)
    assert {ranks[k].group for k in "abc"} == {2} and {ranks[k].low for k in "abc"} == {2}
    assert {ranks[k].high for k in "abc"} == {4}


def test_stratified_units_as_geneval() -> None:
    """GenEval: 0/1 scores, strata = tags, units = prompt texts repeated in the prompt file."""
    n_prompts = 48
    scores = _rows({"a": 0.3, "b": 0.35, "c": 0.8}, n_prompts=n_prompts, samples=4, binary=True, noise=0.1)
    strata = {p: ("colors", "counting", "position")[p % 3] for p in range(n_prompts)}
    units = {p: f"text {p % 24}" for p in range(n_prompts)}  # p and p + 24: one text, same tag
    rows = {k: UnitScores(v, strata, units) for k, v in scores.items()}
    ranks = _check_pairwise(rows, strata, units)
    assert ranks["c"].rank == 1 and ranks["c"].low == 1


def test_identical_scores_tie() -> None:
    base = _rows({"x": 0.6})["x"]
    rows = {"x": UnitScores(base), "y": UnitScores(dict(base)), "w": UnitScores({k: v - 0.5 for k, v in base.items()})}
    ranks = _check_pairwise(rows)
    assert ranks["x"].group == ranks["y"].group == 1 and (ranks["x"].low, ranks["x"].high) == (1, 2)
    assert ranks["w"] == RankInterval(3, 3, 3, 2)


def test_one_row_and_shown_scores() -> None:
    assert rank_intervals({"only": UnitScores({(0, 0): 1.0})}) == {"only": RankInterval(1, 1, 1, 1)}
    assert rank_intervals({}) == {}
    scores = _rows({"a": 0.5, "b": 0.5}, noise=0.3)
    ranks = rank_intervals({"a": UnitScores(scores["a"], score=0.1), "b": UnitScores(scores["b"], score=0.9)})
    assert (ranks["b"].rank, ranks["a"].rank) == (1, 2)  # the rank follows the score the row shows
