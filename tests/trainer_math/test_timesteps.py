"""Training-time sampling (spec 2.1). Strata written out by hand; indices recovered from values."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.awm.samplers import flow_sigmas
from trainers.awm.timesteps import exponential_shift_time, sample_training_times, shift_time, stratum_bounds

GRID = flow_sigmas(14, 3.0)[:-1]  # (14,) = scheduler.timesteps / 1000 for N = 14


def _indices(t_col: torch.Tensor) -> list[int]:
    grid = GRID.tolist()
    return [grid.index(v) for v in t_col.tolist()]


def _draw(kind: str, n_draws: int, *, t_count: int = 6, b: int = 3, frac: float = 0.9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        sample_training_times(
            kind,
            grid=GRID,
            num_train_timesteps=t_count,
            timestep_fraction=frac,
            batch_size=b,
            time_shift=3.0,
            generator=g,
        )
        for _ in range(n_draws)
    ]


@pytest.mark.parametrize(
    ("kind", "strata"),
    [
        # N=14, frac=0.9 -> M=12; floor(linspace(1, 12, 7)) = [1, 2, 4, 6, 8, 10, 12]
        ("discrete_wo_init", [{1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}]),
        # floor(linspace(0, 12, 7)) = [0, 2, ..., 12]
        ("discrete", [{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}]),
        # 0, then floor(linspace(1, 12, 6)) = floor([1, 3.2, 5.4, 7.6, 9.8, 12]) = [1, 3, 5, 7, 9, 12]
        ("discrete_with_init", [{0}, {1, 2}, {3, 4}, {5, 6}, {7, 8}, {9, 10, 11}]),
    ],
)
def test_discrete_strata(kind: str, strata: list[set[int]]) -> None:
    draws = _draw(kind, 400)
    hits = [set() for _ in strata]
    for t in draws:
        assert t.shape == (6, 3) and t.dtype == torch.float32
        assert torch.equal(t, t[:, :1].expand(6, 3))  # shared by the B samples
        for k, idx in enumerate(_indices(t[:, 0])):
            assert idx in strata[k], (k, idx)
            hits[k].add(idx)
    assert hits == strata  # every index of every stratum is reached


def test_discrete_wo_init_values_are_grid_sigmas() -> None:
    t = _draw("discrete_wo_init", 1)[0]
    assert t.max().item() < 1.0  # index 0 (t = 1) never trained
    assert t[0, 0].item() == GRID[1].item()  # stratum {1} is deterministic: sigma = .9731
    assert t[0, 0].item() == pytest.approx(0.9731, abs=1e-4)


def test_uniform_is_per_sample_stratified_and_shifted() -> None:
    s, t_count = 3.0, 6
    for t in _draw("uniform", 50, b=5):
        assert t.shape == (t_count, 5)
        u = t.double() / (s - (s - 1) * t.double())  # invert s*u/(1+(s-1)u)
        assert ((u >= 0.2 - 1e-6) & (u <= 1.0 + 1e-6)).all()
        strata = torch.floor((u - 0.2) / 0.8 * t_count).long().clamp(max=t_count - 1)
        for col in range(5):
            assert sorted(strata[:, col].tolist()) == list(range(t_count))
    t = _draw("uniform", 1, b=5)[0]
    assert not torch.equal(t[:, 0], t[:, 1])


def test_logit_normal_stratified_shared_and_clamped() -> None:
    s, t_count = 3.0, 6
    floor_t = s * (1 / (1 + math.exp(5.199337582))) / (1 + (s - 1) / (1 + math.exp(5.199337582)))
    seen_orders = set()
    for t in _draw("logit_normal", 200, b=2):
        assert torch.equal(t[:, 0], t[:, 1])
        assert torch.isfinite(t).all() and (t >= 0.01).all() and (t < 1).all()
        # clamped Phi^-1 input (bug fix): t >= shift(sigmoid(Phi^-1(1e-7))) ~ 0.0164
        assert (t.double() >= floor_t * (1 - 1e-4)).all()
        u = t.double() / (s - (s - 1) * t.double())
        phi = 0.5 * (1 + torch.erf(torch.logit(u) / math.sqrt(2)))
        strata = torch.floor(phi * t_count).long()
        assert sorted(strata[:, 0].tolist()) == list(range(t_count))
        seen_orders.add(tuple(strata[:, 0].tolist()))
    assert len(seen_orders) > 20  # the strata are shuffled


def test_reproducible_with_generator() -> None:
    for kind in ("discrete_wo_init", "uniform", "logit_normal"):
        a = _draw(kind, 3, seed=7)
        b = _draw(kind, 3, seed=7)
        c = _draw(kind, 3, seed=8)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_flatten_matches_upstream_layout() -> None:
    t = _draw("uniform", 1, b=4)[0]
    flat = t.reshape(-1)  # upstream: timestep-major (T*B,)
    assert flat[4].item() == t[1, 0].item() and flat[3].item() == t[0, 3].item()


def test_stratum_bounds_match_float_linspace_for_shipped_configs() -> None:
    for start, m, t_count in [(1, 12, 6), (0, 12, 6), (1, 12, 5), (1, 36, 6), (0, 9, 3)]:
        ref = torch.linspace(start, m, t_count + 1).long().tolist()
        got = stratum_bounds(start, m, t_count)
        assert [lo for lo, _ in got] + [got[-1][1]] == ref


@pytest.mark.parametrize(
    ("kind", "t_count", "frac", "match"),
    [
        ("discrete_wo_init", 12, 0.9, "too small"),  # M-1 = 11 strata for 12 times
        ("discrete", 13, 0.9, "too small"),
        ("discrete_with_init", 13, 0.9, "too small"),
        ("discrete", 6, 1.5, "<= 1"),
        ("bogus", 6, 0.9, "unknown time_type"),
        ("uniform", 0, 0.9, "num_train_timesteps"),
    ],
)
def test_impossible_combinations_raise(kind: str, t_count: int, frac: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_training_times(
            kind,
            grid=GRID,
            num_train_timesteps=t_count,
            timestep_fraction=frac,
            batch_size=2,
            time_shift=3.0,
            generator=torch.Generator().manual_seed(0),
        )


def test_exact_fit_is_allowed() -> None:
    # M-1 == T: every stratum has exactly one index -> deterministic 1..T
    t = sample_training_times(
        "discrete_wo_init",
        grid=GRID,
        num_train_timesteps=11,
        timestep_fraction=0.9,
        batch_size=1,
        time_shift=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert _indices(t[:, 0]) == list(range(1, 12))


def test_grid_with_terminal_zero_is_rejected() -> None:
    with pytest.raises(ValueError, match="terminal 0"):
        sample_training_times(
            "discrete_wo_init",
            grid=flow_sigmas(14, 3.0),  # scheduler.sigmas (15 values) instead of timesteps / 1000
            num_train_timesteps=6,
            timestep_fraction=0.9,
            batch_size=1,
            time_shift=3.0,
            generator=torch.Generator().manual_seed(0),
        )


def test_flux_exponential_shift_is_diffusers_dynamic_shift_and_used_by_continuous_time_types() -> None:
    """objectives.md 4.4: with FLUX, uniform / logit_normal use the model's own mu-shift, not time_shift=3."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float32)
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for mu in (0.5, 0.63, 1.15):
        torch.testing.assert_close(exponential_shift_time(t, mu), sch.time_shift(mu, 1.0, t))
        torch.testing.assert_close(exponential_shift_time(t, mu), shift_time(t, math.exp(mu)))
    for kind in ("uniform", "logit_normal"):
        kw = {"grid": GRID, "num_train_timesteps": 6, "timestep_fraction": 0.9, "batch_size": 3, "time_shift": 3.0}
        sd3 = sample_training_times(kind, generator=torch.Generator().manual_seed(5), **kw)
        flux = sample_training_times(kind, generator=torch.Generator().manual_seed(5), mu=0.63, **kw)
        # same draws, other shift: map SD3's times back through shift 3, forward through e^0.63
        unshifted = sd3 / (3.0 - 2.0 * sd3)
        want = torch.clamp(shift_time(unshifted, math.exp(0.63)), min=0.01 if kind == "logit_normal" else 0.0)
        torch.testing.assert_close(flux, want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(flux, sd3)
    disc = {"grid": GRID, "num_train_timesteps": 6, "timestep_fraction": 0.9, "batch_size": 3, "time_shift": 3.0}
    assert torch.equal(sample_training_times("discrete_wo_init", generator=torch.Generator().manual_seed(1), **disc),
                       sample_training_times("discrete_wo_init", generator=torch.Generator().manual_seed(1), mu=0.63,
                                             **disc))  # discrete types index the rollout grid: mu plays no part
