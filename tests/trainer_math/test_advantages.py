"""Advantages (spec 1.5) against hand computations with the `statistics` module (other code path)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.awm.advantages import compute_advantages

# 5 groups: a (3, varied), b (2, varied), c (2, const 4.0), d (2, const 1.0 "all correct"),
# e (2, const 0.0 "all wrong")
REWARDS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 4.0, 1.0, 1.0, 0.0, 0.0]
GROUPS = ["a", "b", "a", "c", "b", "a", "c", "d", "d", "e", "e"]


def _by_group():
    groups: dict[str, list[float]] = {}
    for r, g in zip(REWARDS, GROUPS):
        groups.setdefault(g, []).append(r)
    return groups


def _clamp_rescale(a: float, clip: float, amax: float) -> float:
    return max(-clip, min(clip, a)) / clip * amax


@pytest.mark.parametrize("global_std", [True, False])
def test_per_prompt_values(global_std: bool) -> None:
    groups = _by_group()
    gstd = statistics.pstdev(REWARDS) + 1e-4
    expected = []
    for r, g in zip(REWARDS, GROUPS):
        mean = statistics.fmean(groups[g])
        std = gstd if global_std else statistics.pstdev(groups[g]) + 1e-4
        expected.append((r - mean) / std)
    res = compute_advantages(
        torch.tensor(REWARDS),
        GROUPS,
        per_prompt_stat_tracking=True,
        global_std=global_std,
        adv_clip_max=0.8,
        advantage_max=0.7,
    )
    assert res.raw_advantages.dtype == torch.float32 and res.advantages.dtype == torch.float32
    for got, exp in zip(res.raw_advantages.tolist(), expected):
        assert got == pytest.approx(exp, rel=1e-6, abs=1e-6)
    for got, exp in zip(res.advantages.tolist(), expected):
        assert got == pytest.approx(_clamp_rescale(exp, 0.8, 0.7), rel=1e-6, abs=1e-6)
    # the clamp must actually have been exercised by this data set
    assert any(abs(e) > 0.8 for e in expected)
    assert res.keep.all()


def test_per_prompt_std_is_population_std() -> None:
    # group b = [2, 5]: pstdev = 1.5 (sample std would be 2.12)
    res = compute_advantages(
        torch.tensor(REWARDS),
        GROUPS,
        per_prompt_stat_tracking=True,
        global_std=False,
        adv_clip_max=100.0,
        advantage_max=100.0,
    )
    assert res.raw_advantages[1].item() == pytest.approx((2.0 - 3.5) / (1.5 + 1e-4), rel=1e-6)


def test_no_per_prompt_tracking_uses_batch_mean() -> None:
    mean = statistics.fmean(REWARDS)
    std = statistics.pstdev(REWARDS)
    res = compute_advantages(
        torch.tensor(REWARDS),
        GROUPS,
        per_prompt_stat_tracking=False,
        global_std=True,
        adv_clip_max=5.0,
        advantage_max=1.0,
        zero_std_policy="drop",
    )
    for got, r in zip(res.raw_advantages.tolist(), REWARDS):
        assert got == pytest.approx((r - mean) / (std + 1e-4), rel=1e-6)
    # constant groups have a non-zero advantage against the batch mean: nothing dropped
    assert res.keep.all()


def test_upstream_default_rescale_divides_by_five() -> None:
    # adv_clip_max=5, advantage_max=1: A' = clamp(A, -5, 5) / 5 (trap 9.1)
    rewards = torch.tensor([0.0] * 9 + [1.0, 0.0, 0.0])
    groups = ["p"] * 10 + ["q"] * 2
    res = compute_advantages(
        rewards, groups, per_prompt_stat_tracking=True, global_std=True, adv_clip_max=5.0, advantage_max=1.0
    )
    raw = res.raw_advantages[9].item()
    gstd = statistics.pstdev(rewards.tolist()) + 1e-4
    assert raw == pytest.approx((1.0 - 0.1) / gstd, rel=1e-6)
    assert raw < 5  # not clipped: rescaled only
    assert res.advantages[9].item() == pytest.approx(raw / 5, rel=1e-6)


def test_zero_std_keep_and_drop_and_stats() -> None:
    kw = {"per_prompt_stat_tracking": True, "global_std": True, "adv_clip_max": 5.0, "advantage_max": 1.0}
    keep = compute_advantages(torch.tensor(REWARDS), GROUPS, zero_std_policy="keep", **kw)
    drop = compute_advantages(torch.tensor(REWARDS), GROUPS, zero_std_policy="drop", **kw)
    const_idx = [i for i, g in enumerate(GROUPS) if g in ("c", "d", "e")]
    for i in const_idx:
        assert keep.raw_advantages[i].item() == 0.0
        assert keep.keep[i] and not drop.keep[i]
    assert torch.equal(keep.advantages, drop.advantages)
    assert drop.keep.sum().item() == len(REWARDS) - len(const_idx)

    s = keep.stats
    groups = _by_group()
    assert s["num_groups"] == 5
    assert s["zero_std_ratio"] == pytest.approx(3 / 5)
    assert s["positive_zero_std_ratio"] == pytest.approx(1 / 5)  # d: all 1.0
    assert s["negative_zero_std_ratio"] == pytest.approx(1 / 5)  # e: all 0.0
    assert s["reward_std_mean"] == pytest.approx(
        statistics.fmean(statistics.pstdev(v) for v in groups.values())
    )
    assert (s["group_size_min"], s["group_size_max"]) == (2, 3)
    assert s["group_size_mean"] == pytest.approx(len(REWARDS) / 5)
    assert s["kept_ratio"] == 1.0 and drop.stats["kept_ratio"] == pytest.approx(5 / 11)
    assert s["adv_abs_mean"] == pytest.approx(keep.advantages.abs().mean().item(), rel=1e-6)


def test_group_ids_can_be_any_hashable() -> None:
    ids = [("x", 1), ("y", 2), ("x", 1), ("y", 2)]
    res = compute_advantages(
        torch.tensor([1.0, 2.0, 3.0, 6.0]),
        ids,
        per_prompt_stat_tracking=True,
        global_std=False,
        adv_clip_max=5.0,
        advantage_max=1.0,
    )
    assert res.raw_advantages[0].item() == pytest.approx(-1 / (1 + 1e-4), rel=1e-6)
    assert res.raw_advantages[3].item() == pytest.approx(2 / (2 + 1e-4), rel=1e-6)


@pytest.mark.parametrize(
    ("rewards", "groups", "kwargs", "match"),
    [
        ([1.0, 2.0, 3.0], ["a", "a", "lonely"], {}, "lonely"),
        ([1.0, 2.0], ["a"], {}, "group_ids has 1"),
        ([1.0, float("nan")], ["a", "a"], {}, "non-finite"),
        ([1.0, 2.0], ["a", "a"], {"adv_clip_max": 0.0}, "adv_clip_max"),
        ([1.0, 2.0], ["a", "a"], {"zero_std_policy": "skip"}, "zero_std_policy"),
        ([], [], {}, "empty"),
    ],
)
def test_validation(rewards, groups, kwargs, match) -> None:
    args = {"per_prompt_stat_tracking": True, "global_std": True, "adv_clip_max": 5.0, "advantage_max": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compute_advantages(torch.tensor(rewards), groups, **args)


def test_single_sample_groups_allowed_without_tracking() -> None:
    res = compute_advantages(
        torch.tensor([1.0, 2.0, 3.0]),
        ["a", "b", "c"],
        per_prompt_stat_tracking=False,
        global_std=True,
        adv_clip_max=5.0,
        advantage_max=1.0,
    )
    assert res.raw_advantages.sum().item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 4), st.floats(-3, 3, allow_nan=False, width=32)), min_size=2, max_size=40
    ),
    global_std=st.booleans(),
    clip=st.floats(0.1, 6.0),
    amax=st.floats(0.0, 3.0),
)
def test_invariants(data, global_std, clip, amax) -> None:
    groups = [g for g, _ in data]
    # make every group have >= 2 members
    counts = {g: groups.count(g) for g in groups}
    data = [(g, r) for g, r in data if counts[g] >= 2]
    if len(data) < 2:
        return
    groups = [g for g, _ in data]
    rewards = torch.tensor([r for _, r in data], dtype=torch.float32)
    res = compute_advantages(
        rewards,
        groups,
        per_prompt_stat_tracking=True,
        global_std=global_std,
        adv_clip_max=clip,
        advantage_max=amax,
        zero_std_policy="drop",
    )
    raw = res.raw_advantages.double()
    scale = max(1.0, raw.abs().max().item())
    for g in set(groups):
        idx = [i for i, gg in enumerate(groups) if gg == g]
        assert math.isclose(raw[idx].mean().item(), 0.0, abs_tol=1e-5 * scale)
        all_equal = len({rewards[i].item() for i in idx}) == 1
        assert all(bool(res.keep[i]) != all_equal for i in idx)
    assert (res.advantages.abs() <= amax * (1 + 1e-6) + 1e-7).all()
    # A' is monotone in A (clamp + positive rescale preserves order)
    order = torch.argsort(raw)
    assert (res.advantages[order].diff() >= -1e-6).all()
