"""Paired comparison of two evaluations (platform/evals/stats.py): the statistic is the benchmark's
own score difference on the shared (prompt, sample) pairs, the CI a paired bootstrap over prompts
(stratified by tag for GenEval), the p-value a sign-flip permutation test; checked by hand, against
scipy.stats and against GenEval's own aggregate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from awm_platform.evals.stats import ComparisonError, compare_evaluations, paired_comparison
from awm_platform.store import Store
from benchmarks.base import SampleRecord
from benchmarks.geneval.benchmark import aggregate_records
from benchmarks.geneval.rules import overall_score, per_tag_accuracy

Scores = dict[tuple[int, int], float]


def _one_per_prompt(values: np.ndarray) -> Scores:
    return {(i, 0): float(v) for i, v in enumerate(values)}


def test_identical_evaluations_give_zero_difference_and_p_one() -> None:
    rng = np.random.default_rng(3)
    a = {(p, s): float(rng.random()) for p in range(40) for s in range(2)}
    r = paired_comparison(a, dict(a), n_boot=500, n_perm=500)
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.tied and r.n_pairs == 80 and r.n_prompts == 40 and r.mean_a == r.mean_b


def test_constant_shift_excludes_zero_with_small_p() -> None:
    rng = np.random.default_rng(4)
    a = {(p, s): float(rng.random()) for p in range(30) for s in range(3)}
    b = {k: v + 0.25 for k, v in a.items()}
    r = paired_comparison(a, b, n_boot=1000, n_perm=2000)
    assert r.diff == pytest.approx(0.25) and r.mean_b - r.mean_a == pytest.approx(0.25)
    assert r.ci_low == pytest.approx(0.25) and r.ci_high == pytest.approx(0.25) and not r.tied
    # 30 units all positive: only "no flip" reaches it -> the smallest p the +1 rule gives
    assert r.p_value == pytest.approx(1 / 2001) and "random sign patterns" in r.method
    # B worse than A: the same evidence, the other sign
    r2 = paired_comparison(b, a, n_boot=1000, n_perm=2000)
    assert r2.diff == pytest.approx(-0.25) and r2.ci_high < 0 and r2.p_value == r.p_value


def test_exact_enumeration_by_hand() -> None:
    # per-prompt mean differences 1, 2, 3 (prompt 0 has two shared samples: diffs 0 and 2 -> mean 1;
    # prompt 3's sample in A only and prompt 4's in B only are not pairs)
    a = {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 0.0, (2, 0): 1.0, (3, 0): 5.0}
    b = {(0, 0): 0.0, (0, 1): 2.0, (1, 0): 2.0, (2, 0): 4.0, (4, 0): 9.0}
    r = paired_comparison(a, b, n_boot=2000)
    assert r.n_pairs == 4 and r.n_prompts == 3 and r.diff == pytest.approx(2.0)
    assert r.mean_a == pytest.approx(1 / 3) and r.mean_b == pytest.approx(7 / 3)
    # sign patterns of (1, 2, 3): sums 6, 0, 2, 4, -4, -2, 0, -6 -> |sum| >= 6 twice in 8
    assert r.p_value == pytest.approx(2 / 8) and "exact over 2^3" in r.method
    # the bootstrap means of three values lie in [1, 3]; with 2000 resamples both ends are reached
    assert (r.ci_low, r.ci_high) == (pytest.approx(1.0), pytest.approx(3.0)) and not r.tied
    # (1, 1, 1, -1): |sum| >= 2 for patterns with sum +-2 or +-4: 1+4+4+1 = 10 of 16
    r4 = paired_comparison(_one_per_prompt(np.zeros(4)), _one_per_prompt(np.array([1.0, 1.0, 1.0, -1.0])))
    assert r4.p_value == pytest.approx(10 / 16)


def test_agrees_with_scipy_permutation_test_and_bootstrap() -> None:
    rng = np.random.default_rng(11)
    # 60 prompts x 3 samples; scipy sees the per-prompt mean differences (the unit of resampling)
    base = rng.normal(0.5, 0.2, size=(60, 3))
    other = base + 0.015 + rng.normal(0, 0.15, size=(60, 3))
    a = {(p, s): float(base[p, s]) for p in range(60) for s in range(3)}
    b = {(p, s): float(other[p, s]) for p in range(60) for s in range(3)}
    r = paired_comparison(a, b, n_boot=10000, n_perm=10000, seed=1)
    x, y = base.mean(axis=1), other.mean(axis=1)
    assert r.diff == pytest.approx(float(np.mean(y - x)))

    perm = sps.permutation_test((x, y), lambda u, v, axis: np.mean(v - u, axis=axis), vectorized=True,
                                permutation_type="samples", n_resamples=10000, alternative="two-sided",
                                random_state=np.random.default_rng(2))
    assert 0.005 < perm.pvalue < 0.5  # an example where the p-value is not degenerate
    assert r.p_value == pytest.approx(perm.pvalue, abs=0.03)  # Monte-Carlo error ~0.005 each

    boot = sps.bootstrap((y - x,), np.mean, method="percentile", n_resamples=10000,
                         random_state=np.random.default_rng(3))
    se = float(boot.standard_error)
    assert r.ci_low == pytest.approx(boot.confidence_interval.low, abs=0.15 * se)
    assert r.ci_high == pytest.approx(boot.confidence_interval.high, abs=0.15 * se)


def test_exact_p_equals_scipy_exact() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(0, 1, 12), rng.normal(0.4, 1, 12)
    r = paired_comparison(_one_per_prompt(x), _one_per_prompt(y))
    perm = sps.permutation_test((x, y), lambda u, v, axis: np.mean(v - u, axis=axis), vectorized=True,
                                permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert "exact over 2^12" in r.method
    assert r.p_value == pytest.approx(perm.pvalue, abs=1e-9)


def _geneval_like(rng: np.random.Generator, p_correct: dict[str, float]) -> tuple[list[SampleRecord], dict]:
    """Prompts with unequal counts per tag, each prompt text twice in the file (as test_metadata's 4
    copies), 4 samples each; returns GenEval records and their score map."""
    tags = [t for t, n in (("counting", 7), ("colors", 11), ("position", 5)) for _ in range(n)]
    texts = [f"prompt {i // 2}" for i in range(len(tags))]
    tags = [tags[i // 2 * 2] for i in range(len(tags))]  # the two copies of a text share its tag
    records = [SampleRecord(p, s, float(rng.random() < p_correct[tags[p]]), {"tag": tags[p], "prompt": texts[p]})
               for p in range(len(tags)) for s in range(4)]
    return records, {(r.prompt_index, r.sample_index): r.score for r in records}


def _overall(records: list[SampleRecord], keep: set[tuple[int, int]]) -> float:
    kept = [r for r in records if (r.prompt_index, r.sample_index) in keep]
    return overall_score(per_tag_accuracy([r.extra["tag"] for r in kept], [r.score for r in kept]))


def test_stratified_statistic_is_the_geneval_score_difference() -> None:
    rng = np.random.default_rng(7)
    rec_a, a = _geneval_like(rng, {"counting": 0.3, "colors": 0.6, "position": 0.2})
    rec_b, b = _geneval_like(rng, {"counting": 0.5, "colors": 0.7, "position": 0.4})
    # a few images missing from B (a shard of B lost them, say): only shared pairs count
    for key in [(0, 3), (5, 1), (5, 2), (20, 0)]:
        del b[key]
    strata = {r.prompt_index: r.extra["tag"] for r in rec_a}
    units = {r.prompt_index: r.extra["prompt"] for r in rec_a}
    r = paired_comparison(a, b, strata=strata, units=units, n_boot=2000, n_perm=2000)
    shared = set(a) & set(b)
    assert r.n_strata == 3 and r.n_units == len(set(units.values())) and r.n_pairs == len(shared)
    assert r.mean_a == pytest.approx(_overall(rec_a, shared))
    assert r.mean_b == pytest.approx(_overall(rec_b, shared))
    assert r.diff == pytest.approx(_overall(rec_b, shared) - _overall(rec_a, shared))
    assert "stratified by 3 strata" in r.method


def test_stratified_bootstrap_matches_genevals_own_ci() -> None:
    """Against an all-zero A the difference is B's score; its CI must be GenEval's aggregate CI
    (the same stratified bootstrap over prompt texts), up to Monte-Carlo error."""
    rng = np.random.default_rng(8)
    rec_b, b = _geneval_like(rng, {"counting": 0.4, "colors": 0.8, "position": 0.3})
    zeros = dict.fromkeys(b, 0.0)
    r = paired_comparison(zeros, b, strata={r.prompt_index: r.extra["tag"] for r in rec_b},
                          units={r.prompt_index: r.extra["prompt"] for r in rec_b}, n_boot=10000, n_perm=100)
    summary = aggregate_records(rec_b, name="geneval", version="v", engine="e", n_boot=10000, seed=1)
    assert r.diff == pytest.approx(summary.score)
    width = summary.ci_high - summary.ci_low
    assert r.ci_low == pytest.approx(summary.ci_low, abs=0.06 * width)
    assert r.ci_high == pytest.approx(summary.ci_high, abs=0.06 * width)


def test_deterministic_and_independent_of_order() -> None:
    rng = np.random.default_rng(9)
    a = _one_per_prompt(rng.random(50))
    b = _one_per_prompt(rng.random(50))
    r1 = paired_comparison(a, b, n_boot=800, n_perm=800, seed=4)
    r2 = paired_comparison(dict(reversed(a.items())), dict(reversed(b.items())), n_boot=800, n_perm=800, seed=4)
    assert r1 == r2
    assert paired_comparison(a, b, n_boot=800, n_perm=800, seed=5).ci_low != r1.ci_low


@pytest.mark.parametrize(
    ("a", "b", "kw", "message"),
    [
        ({(0, 0): 1.0}, {(1, 0): 1.0}, {}, "no shared (prompt, sample) pairs"),
        ({(0, 0): 1.0, (1, 0): 0.0}, {(0, 0): 1.0, (1, 0): 1.0}, {"strata": {0: "colors"}},
         "strata has no entry for prompt 1"),
        ({(0, 0): 1.0, (1, 0): 0.0}, {(0, 0): 1.0, (1, 0): 1.0},
         {"strata": {0: "colors", 1: "position"}, "units": {0: "same text", 1: "same text"}},
         "a resampling unit must lie in one stratum"),
        ({(0, 0): float("nan")}, {(0, 0): 1.0}, {}, "non-finite score for prompt 0 sample 0"),
        ({(0, 0): 1.0}, {(0, 0): 1.0}, {"alpha": 1.5}, "alpha must be in (0, 1)"),
    ],
)
def test_refuses_with_one_line(a: Scores, b: Scores, kw: dict, message: str) -> None:
    with pytest.raises(ComparisonError) as exc:
        paired_comparison(a, b, **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError)


# ------------------------------------------------------------------ from the store ----
def _stored(store: Store, scores: Scores, *, sha: str, benchmark: str = "geneval", version: str = "1.0+abc",
            spec: dict | None = None, partial: bool = False, complete: bool = True,
            tags: dict[int, str] | None = None) -> int:
    spec = spec or {"seed": 0, "weights": "policy"}
    ev, created = store.ensure_evaluation(checkpoint_sha256=sha, benchmark=benchmark, benchmark_version=version,
                                          spec_hash=str(sorted(spec.items())), spec=spec, target=f"dir:/{sha[:6]}",
                                          num_shards=1, partial=partial)
    assert created
    if not complete:
        return ev.id
    shard = store.claim_shard(ev.id, "w", lease_s=60)
    assert shard is not None
    rows = [{"prompt_index": p, "sample_index": s, "score": v,
             "extra": {"tag": tags[p], "prompt": f"text {p // 2}"} if tags else {}}
            for (p, s), v in scores.items()]
    assert store.commit_shard(shard.id, "w", rows)
    assert store.complete_evaluation(ev.id, score=0.0, ci_low=0.0, ci_high=0.0, sub_scores={},
                                     num_samples=len(rows))
    return ev.id


def test_compare_evaluations_from_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    rec_a, a = _geneval_like(rng, {"counting": 0.3, "colors": 0.6, "position": 0.2})
    rec_b, b = _geneval_like(rng, {"counting": 0.6, "colors": 0.9, "position": 0.5})
    tags = {r.prompt_index: r.extra["tag"] for r in rec_a}
    with Store(f"sqlite:///{tmp_path / 'awm.db'}") as store:
        ia, ib = _stored(store, a, sha="a" * 64, tags=tags), _stored(store, b, sha="b" * 64, tags=tags)
        r = compare_evaluations(store, ia, ib, n_boot=2000, n_perm=2000)
    # strata from the rows' tags, units from their prompt texts: the GenEval score difference
    expected = paired_comparison(a, b, strata=tags, units={r.prompt_index: r.extra["prompt"] for r in rec_a},
                                 n_boot=2000, n_perm=2000)
    assert r == expected and r.n_strata == 3
    assert r.diff == pytest.approx(_overall(rec_b, set(b)) - _overall(rec_a, set(a)))


def test_base_and_ema_are_compared_with_the_policy(tmp_path: Path) -> None:
    """Specs that differ only in the weights evaluated (base model, policy, EMA) are paired."""
    a, b = {(0, 0): 0.0, (1, 0): 0.5, (2, 0): 0.25}, {(0, 0): 1.0, (1, 0): 1.0, (2, 0): 0.5}
    with Store(f"sqlite:///{tmp_path / 'awm.db'}") as store:
        base = _stored(store, a, sha="a" * 64, spec={"seed": 0, "weights": "base"})
        tuned = _stored(store, b, sha="b" * 64, spec={"seed": 0, "weights": "policy"})
        r = compare_evaluations(store, base, tuned, n_boot=200)
    assert r.diff == pytest.approx(0.5833333333) and r.n_pairs == 3


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"spec": {"seed": 1, "weights": "policy"}},
         "not comparable: the specs differ in seed: seed=0 (evaluation 1) vs seed=1 (evaluation 2)"),
        ({"version": "1.0+def"}, "not comparable: benchmark versions differ: 1.0+abc (evaluation 1) vs 1.0+def"),
        ({"benchmark": "ocr"}, "not comparable: benchmarks differ: geneval (evaluation 1) vs ocr"),
        ({"partial": True}, "not comparable: evaluation 2 is partial (--limit) and evaluation 1 is full"),
        ({"complete": False}, "evaluation 2 is PENDING: only COMPLETED evaluations are compared"),
    ],
)
def test_compare_evaluations_refuses_what_is_not_comparable(tmp_path: Path, other: dict, message: str) -> None:
    scores = {(0, 0): 1.0, (1, 0): 0.0}
    with Store(f"sqlite:///{tmp_path / 'awm.db'}") as store:
        ia = _stored(store, scores, sha="a" * 64)
        ib = _stored(store, scores, sha="b" * 64, **other)
        with pytest.raises(ComparisonError) as exc:
            compare_evaluations(store, ia, ib)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
