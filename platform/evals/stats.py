"""Paired comparison of two evaluations of one benchmark and spec (`awm eval compare`, the
leaderboard's "statistically tied").

Two evaluations with the same spec generate the image of (prompt, sample) from the same seed
(`trainers.awm.generate.image_seed`), so their scores are PAIRED: the comparison uses only the
(prompt, sample) keys present in both and looks at the differences.

* Unit of resampling: the prompt. The samples of one prompt are correlated (same text, same
  tag), so they move together: each unit carries the sum of its shared samples' differences
  B - A and their count. `units` can merge prompt indices into one unit (GenEval's test file
  holds every prompt text 4 times: its aggregate resamples by text, and so does
  `compare_evaluations`).
* Statistic: the benchmark's own score difference on the shared pairs, `diff = B - A`:
  - no strata (OCR, PickScore: score = mean over prompts of the per-prompt mean): the mean over
    units of the per-unit mean difference;
  - strata (GenEval: score = unweighted mean over tags of the per-tag IMAGE accuracy): the mean
    over strata of (sum of differences / number of shared samples) within the stratum.
  Both are linear in the scores, so `diff == mean_b - mean_a` exactly.
* CI: paired percentile bootstrap: units resampled with replacement (within each stratum when
  stratified), `n_boot` resamples, numpy's PCG64 seeded with `seed` (deterministic), the
  `alpha/2` and `1 - alpha/2` quantiles of the resampled differences.
* p-value: two-sided sign-flip permutation test. Under "A and B are exchangeable" each unit's
  difference is as likely to be negated; p = share of sign patterns whose |statistic| reaches the
  observed |statistic|. Exact enumeration of all 2^n patterns when there are at most
  `EXACT_MAX_UNITS` units, else `n_perm` random patterns with the +1 correction
  ((count + 1) / (n_perm + 1)), never 0.
* `tied`: the (1 - alpha) CI of the difference contains 0, i.e. the data do not tell the two
  apart at that level. That is what the leaderboard calls "statistically tied".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from awm_platform.store import EvalStatus, Store
from awm_platform.store.models import COMPARABLE_ACROSS

EXACT_MAX_UNITS = 16  # 2^16 sign patterns: exact enumeration is cheaper than 10000 random ones
_CHUNK = 1000  # resamples per vectorised block (bounded memory with ~2000 units)


class ComparisonError(ValueError):
    """Two evaluations (or score maps) that cannot be compared; the message is one line."""


@dataclass(frozen=True)
class PairedComparison:
    """Result of `paired_comparison`; `diff = mean_b - mean_a` (B minus A)."""

    n_pairs: int  # shared (prompt, sample) keys
    n_prompts: int  # distinct prompt indices among them
    n_units: int  # resampling units (prompts, or prompt texts when `units` merges indices)
    n_strata: int  # 1 when not stratified
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    tied: bool
    alpha: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Units:
    """Per-unit sums of several score maps over their shared pairs, grouped by stratum (sorted, so
    record order and dict order never change a number)."""

    sums: list[list[np.ndarray]]  # per score map, per stratum: sum of its scores per unit
    count: list[np.ndarray]  # per stratum: shared samples per unit
    weighted: bool  # strata: ratio of sums within the stratum; else: mean of per-unit means
    n_pairs: int  # shared (prompt, sample) keys
    n_prompts: int


def statistic(values: list[np.ndarray], counts: list[np.ndarray], weighted: bool) -> float:
    """The benchmark's score from per-unit sums (module docstring, "Statistic")."""
    parts = [v.sum() / c.sum() if weighted else (v / c).mean() for v, c in zip(values, counts)]
    return float(np.mean(parts))


def group_units(maps: list[Mapping[tuple[int, int], float]], strata: Mapping[int, str] | None,
                units: Mapping[int, Hashable] | None) -> Units:
    """Sum each score map per resampling unit on the keys ALL maps share (`paired_comparison`
    with two maps; the leaderboard's joint rank intervals with one per row)."""
    shared = sorted(set.intersection(*(set(m) for m in maps)))
    if not shared:
        raise ComparisonError("no shared (prompt, sample) pairs: the evaluations scored different prompts")
    sums: dict[tuple[str, str], list[float]] = {}  # (stratum, unit) -> [sum per map..., count]
    unit_stratum: dict[str, str] = {}
    prompts: set[int] = set()
    for key in shared:
        prompt = int(key[0])
        values = [float(m[key]) for m in maps]
        if not all(math.isfinite(v) for v in values):
            raise ComparisonError(f"non-finite score for prompt {prompt} sample {key[1]}")
        stratum = ""
        if strata is not None:
            if prompt not in strata:
                raise ComparisonError(f"strata has no entry for prompt {prompt}")
            stratum = str(strata[prompt])
        unit = f"{units[prompt]!r}" if units is not None and prompt in units else f"#{prompt:09d}"
        if unit_stratum.setdefault(unit, stratum) != stratum:
            raise ComparisonError(f"prompt {prompt} is in stratum {stratum!r} but its unit {unit} is in "
                                  f"{unit_stratum[unit]!r}: a resampling unit must lie in one stratum")
        acc = sums.setdefault((stratum, unit), [0.0] * (len(maps) + 1))
        for i, v in enumerate(values):
            acc[i] += v
        acc[-1] += 1.0
        prompts.add(prompt)
    by_stratum: dict[str, list[list[float]]] = {}
    for (stratum, _unit), acc in sorted(sums.items()):
        by_stratum.setdefault(stratum, []).append(acc)
    cols = [np.asarray(rows, dtype=np.float64) for _s, rows in sorted(by_stratum.items())]
    return Units(sums=[[c[:, i] for c in cols] for i in range(len(maps))], count=[c[:, -1] for c in cols],
                 weighted=strata is not None, n_pairs=len(shared), n_prompts=len(prompts))


def resample_indices(sizes: list[int], n_boot: int, rng: np.random.Generator) -> Iterator[list[np.ndarray]]:
    """The bootstrap's draws, in blocks of at most `_CHUNK` resamples: per stratum (units of sizes
    `sizes`, in order) a (block, size) array of unit indices drawn with replacement. One
    definition, so `paired_comparison` and the leaderboard's joint rank intervals
    (awm_platform.ui.ranking) resample identically from the same seed."""
    for start in range(0, n_boot, _CHUNK):
        block = min(_CHUNK, n_boot - start)
        yield [rng.integers(0, n, size=(block, n)) for n in sizes]


def _bootstrap(diffs: list[np.ndarray], counts: list[np.ndarray], weighted: bool, n_boot: int,
               rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n_boot, dtype=np.float64)
    start = 0
    for draws in resample_indices([d.size for d in diffs], n_boot, rng):
        size = draws[0].shape[0]
        acc = np.zeros(size, dtype=np.float64)
        for d, c, idx in zip(diffs, counts, draws):
            acc += d[idx].sum(axis=1) / c[idx].sum(axis=1) if weighted else (d / c)[idx].mean(axis=1)
        out[start:start + size] = acc / len(diffs)
        start += size
    return out


def _sign_flip_p(diffs: list[np.ndarray], counts: list[np.ndarray], weighted: bool, observed: float, n_perm: int,
                 rng: np.random.Generator) -> tuple[float, bool]:
    """(two-sided p, exact?). Each unit's summed difference keeps its weight and flips its sign."""
    # per unit: its contribution to the statistic is sign * coef (linear statistic)
    coefs = [d / c.sum() if weighted else (d / c) / d.size for d, c in zip(diffs, counts)]
    coef = np.concatenate(coefs) / len(diffs)
    n = coef.size
    # values equal up to rounding must count as reaching the observed one (identical A and B: p = 1)
    tol = 1e-9 * max(1.0, float(np.abs(coef).sum()))
    target = abs(observed) - tol
    if n <= EXACT_MAX_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)), dtype=np.float64).reshape(-1, n)
        hits = int((np.abs(signs @ coef) >= target).sum())
        return hits / signs.shape[0], True
    hits = 0
    for start in range(0, n_perm, _CHUNK):
        size = min(_CHUNK, n_perm - start)
        signs = rng.integers(0, 2, size=(size, n)).astype(np.float64) * 2.0 - 1.0
        hits += int((np.abs(signs @ coef) >= target).sum())
    return (hits + 1) / (n_perm + 1), False


def paired_comparison(
    a: Mapping[tuple[int, int], float],
    b: Mapping[tuple[int, int], float],
    *,
    strata: Mapping[int, str] | None = None,
    units: Mapping[int, Hashable] | None = None,
    n_boot: int = 10000,
    n_perm: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedComparison:
    """Compare B against A on their shared (prompt_index, sample_index) keys (module docstring).

    `strata`: prompt index -> stratum (GenEval: its tag); every shared prompt needs one.
    `units`: prompt index -> resampling unit (prompts mapped to one value move together;
    default: each prompt index is its own unit)."""
    if n_boot < 1 or n_perm < 1:
        raise ComparisonError(f"n_boot and n_perm must be >= 1 (got {n_boot}, {n_perm})")
    if not 0.0 < alpha < 1.0:
        raise ComparisonError(f"alpha must be in (0, 1) (got {alpha})")
    g = group_units([a, b], strata, units)
    n_pairs, n_prompts = g.n_pairs, g.n_prompts
    sum_a, sum_b = g.sums
    mean_a = statistic(sum_a, g.count, g.weighted)
    mean_b = statistic(sum_b, g.count, g.weighted)
    diffs = [sb - sa for sa, sb in zip(sum_a, sum_b)]
    diff = statistic(diffs, g.count, g.weighted)
    rng = np.random.default_rng(seed)
    n_units = sum(d.size for d in diffs)
    if n_units < 2:
        ci_low = ci_high = diff  # one unit: nothing to resample
    else:
        boot = _bootstrap(diffs, g.count, g.weighted, n_boot, rng)
        ci_low, ci_high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    p_value, exact = _sign_flip_p(diffs, g.count, g.weighted, diff, n_perm, rng)
    unit_word = "prompts" if units is None else "prompt units"
    strat = f", stratified by {len(diffs)} strata" if strata is not None else ""
    perm = f"exact over 2^{n_units} sign patterns" if exact else f"{n_perm} random sign patterns, (k+1)/(n+1)"
    method = (f"paired percentile bootstrap ({n_boot} resamples of {unit_word}{strat}, seed {seed}); "
              f"two-sided sign-flip permutation test ({perm})")
    return PairedComparison(
        n_pairs=n_pairs, n_prompts=n_prompts, n_units=n_units, n_strata=len(diffs),
        mean_a=mean_a, mean_b=mean_b, diff=diff, ci_low=ci_low, ci_high=ci_high, p_value=float(min(1.0, p_value)), tied=bool(ci_low <= 0.0 <= ci_high), alpha=alpha,
        method=method,
    )


def compare_evaluations(store: Store, a_id: int, b_id: int, **kw: Any) -> PairedComparison:
    """`paired_comparison` of two COMPLETED evaluations from the store: same benchmark, benchmark
    version and spec except the weights (`COMPARABLE_ACROSS`), both full or both partial (equal
    `evaluations.compare_hash`, `awm_platform.store.compare_hash`). Strata are the samples' `extra["tag"]`
    (GenEval: its score is the mean over tags); units are the samples' `extra["prompt"]` text
    when the rows carry it (a prompt text repeated in the prompt file resamples as one)."""
    ev_a, ev_b = store.get_evaluation(a_id), store.get_evaluation(b_id)
    for ev in (ev_a, ev_b):
        if ev.status != EvalStatus.COMPLETED:
            raise ComparisonError(f"evaluation {ev.id} is {ev.status}: only COMPLETED evaluations are compared")
    for field, label in (("benchmark", "benchmarks"), ("benchmark_version", "benchmark versions")):
        va, vb = getattr(ev_a, field), getattr(ev_b, field)
        if va != vb:
            raise ComparisonError(f"not comparable: {label} differ: {va} (evaluation {ev_a.id}) vs {vb} "
                                  f"(evaluation {ev_b.id})")
    # the specs must agree on everything but the weights evaluated: base vs tuned and policy vs EMA
    # are the comparisons a leaderboard makes (same prompts, seeds and sampler: paired samples)
    spec_a, spec_b = dict(ev_a.spec or {}), dict(ev_b.spec or {})
    differing = sorted(k for k in set(spec_a) | set(spec_b)
                       if k not in COMPARABLE_ACROSS and spec_a.get(k) != spec_b.get(k))
    if differing:
        k = differing[0]
        raise ComparisonError(f"not comparable: the specs differ in {', '.join(differing)}: {k}={spec_a.get(k)!r} "
                              f"(evaluation {ev_a.id}) vs {k}={spec_b.get(k)!r} (evaluation {ev_b.id})")
    if bool(ev_a.partial) != bool(ev_b.partial):
        part, full = (ev_a, ev_b) if ev_a.partial else (ev_b, ev_a)
        raise ComparisonError(f"not comparable: evaluation {part.id} is partial (--limit) and evaluation {full.id} "
                              "is full")
    rows_a, rows_b = store.get_sample_scores(ev_a.id), store.get_sample_scores(ev_b.id)
    scores_a = {(r.prompt_index, r.sample_index): r.score for r in rows_a}
    scores_b = {(r.prompt_index, r.sample_index): r.score for r in rows_b}
    strata: dict[int, str] = {}
    units: dict[int, str] = {}
    for r in (*rows_a, *rows_b):
        extra = r.extra or {}
        if isinstance(extra.get("tag"), str):
            strata.setdefault(r.prompt_index, extra["tag"])
        if isinstance(extra.get("prompt"), str):
            units.setdefault(r.prompt_index, extra["prompt"])
    return paired_comparison(scores_a, scores_b, strata=strata or None, units=units or None, **kw)
