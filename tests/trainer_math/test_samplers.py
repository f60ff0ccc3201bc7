"""Samplers (spec 1.3, 3.1) on analytic velocity fields.

Gaussian data x0 ~ N(mu, s^2) (per element) under x_t = (1-t) x0 + t eps has the exact velocity
  v(x, t) = (x - (1-t) mu) (t - (1-t) s^2) / V(t) - mu,   V(t) = (1-t)^2 s^2 + t^2,
and the exact probability-flow ODE map x_t = (1-t) mu + sqrt(V(t)) * w (w = x_1), so x_0 = mu + s w.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from trainers.awm.samplers import (
    euler_sample,
    flow_sigmas,
    flux_mu,
    flux_sigmas,
    randn_per_sample,
    sa_solver_grid,
    sa_solver_sample,
)


def gaussian_field(mu: float, s: float):
    def vel(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        tt = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        var = (1 - tt) ** 2 * s**2 + tt**2
        return (x - (1 - tt) * mu) * (tt - (1 - tt) * s**2) / var - mu

    return vel


def _z(shape=(4, 2, 3, 3), seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------- grids


def test_flow_sigmas_match_diffusers_bitwise() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0):
        for n in (1, 2, 10, 14, 40):
            sch = FlowMatchEulerDiscreteScheduler(shift=shift)
            sch.set_timesteps(n)
            assert torch.equal(flow_sigmas(n, shift), sch.sigmas), (shift, n)


def test_flow_sigmas_spec_values_n14() -> None:
    spec = [
        1.0,
        0.9731,
        0.9430,
        0.9094,
        0.8715,
        0.8283,
        0.7787,
        0.7213,
        0.6539,
        0.5738,
        0.4769,
        0.3574,
        0.2062,
        0.0089,
        0.0,
    ]
    np.testing.assert_allclose(flow_sigmas(14, 3.0).numpy(), spec, atol=6e-5)


def test_sa_grid_edit_is_a_copy() -> None:
    sig = flow_sigmas(14, 3.0)
    before = sig.clone()
    grid = sa_solver_grid(sig)
    assert torch.equal(sig, before)
    assert grid[0].item() == pytest.approx(0.999)
    assert grid[-2].item() == pytest.approx(0.2062 / 2, abs=1e-4)
    assert torch.equal(grid[1:-2], sig[1:-2])
    out = sa_solver_sample(gaussian_field(0.5, 1.0), _z(), sig, noise_level=0.0)
    assert torch.equal(sig, before) and out.sigmas is sig


# --------------------------------------------------------------------------------------- Euler


def test_euler_exact_for_constant_velocity_and_nfe() -> None:
    calls = []

    def vel(x, t):
        calls.append(t[0].item())
        return torch.full_like(x, 0.25)

    sig = flow_sigmas(7, 3.0)
    x1 = _z()
    out = euler_sample(vel, x1, sig)
    # sum of dt over the grid = -1  ->  x0 = x1 - 0.25
    torch.testing.assert_close(out.x0, x1 - 0.25)
    assert out.nfe == 7 and calls == pytest.approx(sig[:-1].tolist())


def test_euler_first_order_convergence() -> None:
    mu, s = 0.7, 0.5
    z = _z()
    errs = [
        (euler_sample(gaussian_field(mu, s), z, flow_sigmas(n, 3.0)).x0 - (mu + s * z)).abs().max().item()
        for n in (20, 40, 80)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3


def test_euler_sde_step_formula_one_step() -> None:
    """One Flow-GRPO SDE step vs the formula of spec 3.1 written out by hand."""
    a, x, v = 0.7, 0.3, -0.4
    sig = torch.tensor([0.8, 0.5, 0.0])
    g = torch.Generator().manual_seed(3)
    zval = torch.randn(1, 1, 1, 1, generator=torch.Generator().manual_seed(3)).item()
    out = euler_sample(
        lambda xx, t: torch.full_like(xx, v),
        torch.full((1, 1, 1, 1), x),
        sig,
        noise_level=a,
        sde_frac=0.5,
        generator=g,
    )
    s0, s1 = 0.8, 0.5
    dt = s1 - s0
    std = a * math.sqrt(s0 / (1 - s0))
    mean = x * (1 + std**2 / (2 * s0) * dt) + v * (1 + std**2 * (1 - s0) / (2 * s0)) * dt
    x1 = mean + std * math.sqrt(-dt) * zval
    x2 = x1 + (0.0 - s1) * v  # second step: i=1 >= 2*0.5 -> ODE
    assert out.x0.item() == pytest.approx(x2, rel=1e-5)


def test_euler_sde_frac_counts_like_upstream() -> None:
    # steps i < N * sde_frac are stochastic: N=10, frac 0.25 -> i in {0,1,2}, same as frac 0.3
    sig, z, vel = flow_sigmas(10, 3.0), _z(dtype=torch.float32), gaussian_field(0.5, 1.0)

    def run(frac):
        return euler_sample(
            vel, z, sig, noise_level=0.7, sde_frac=frac, generator=torch.Generator().manual_seed(0)
        ).x0

    assert torch.equal(run(0.25), run(0.3))
    assert not torch.equal(run(0.2), run(0.25))
    assert not torch.equal(run(0.0), run(0.2))


def test_euler_sde_preserves_marginals() -> None:
    mu, s = 0.7, 0.5
    z = _z((2, 1, 100, 100), dtype=torch.float32)
    out = euler_sample(
        gaussian_field(mu, s),
        z,
        flow_sigmas(100, 3.0),
        noise_level=0.7,
        sde_frac=1.0,
        generator=torch.Generator().manual_seed(1),
    ).x0
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() / s - 1) < 0.04
    ode = euler_sample(gaussian_field(mu, s), z, flow_sigmas(100, 3.0)).x0
    assert (out - ode).abs().mean().item() > 0.1  # noise really was injected


# ------------------------------------------------------------------------------------ SA-Solver


def _lam(t: float) -> float:
    return math.log((1 - t) / t)


def _int_pos(order: int, a: float, b: float, tau: float) -> float:
    """int_a^b exp((1+tau^2) l) l^order dl, closed form of the SA-Solver paper (monomial form)."""
    c = 1 + tau * tau
    bb, aa = c * b, c * a
    e = math.exp(-(bb - aa))
    poly = {
        0: lambda u: 1.0,
        1: lambda u: u - 1,
        2: lambda u: u * u - 2 * u + 2,
        3: lambda u: u**3 - 3 * u * u + 6 * u - 6,
    }[order]
    return math.exp(bb) * (poly(bb) - poly(aa) * e) / c ** (order + 1)


def _reference_sa(vel, x, sigmas, noise_level, p, cc, noises):
    """Independent transcription of the SA-Solver data-prediction update in the monomial form
    (paper Eq. 15/18 + the reference code's order-2 few-step terms), for cross-checking."""
    t = sa_solver_grid(sigmas).tolist()
    steps = len(t) - 1

    def d_of(xx, tt):
        return xx - tt * vel(xx, torch.full((xx.shape[0],), tt))

    def update(order, x, tau, ds, tp, z, tt, corr):
        lt, ls = _lam(tt), _lam(tp[-1])
        h = lt - ls
        nodes = ([lt] + [_lam(v) for v in tp[::-1]])[:order] if corr else [_lam(v) for v in tp[::-1]][:order]
        coeffs = []
        for i in range(order):
            basis = np.poly1d([1.0])
            den = 1.0
            for m in range(order):
                if m != i:
                    basis = basis * np.poly1d([1.0, -nodes[m]])
                    den *= nodes[i] - nodes[m]
            cf = list(basis.coeffs / den)  # descending powers
            coeffs.append(sum(cf[j] * _int_pos(order - 1 - j, ls, lt, tau) for j in range(order)))
        c = 1 + tau * tau
        if order == 2:
            g = h * c - 1 + math.exp(-c * h)
            extra = math.exp(c * lt) * (
                (h / 2 - g / (c * c * h)) if corr else (h * h / 2 - g / (c * c)) / (ls - _lam(tp[-2]))
            )
            coeffs[0] += extra
            coeffs[1] -= extra
        out = math.exp(-tau * tau * h) * (tt / tp[-1]) * x
        for i in range(order):
            out = out + c * tt * math.exp(-tau * tau * lt) * coeffs[i] * ds[-(i + 1)]
        if tau > 0:
            out = out + tt * math.sqrt(1 - math.exp(-2 * tau * tau * h)) * z
        return out

    tp, ds = [t[0]], [d_of(x, t[0])]
    warm = max(p, cc - 1)
    for step in range(1, steps + 1):
        pu, cu = (
            (min(p, step), min(cc, step + 1))
            if step < warm
            else (min(p, steps - step + 1), min(cc, steps - step + 2))
        )
        tt = t[step]
        if step == steps:
            return ds[-1]
        tau = noise_level if np.float32(0.3) <= tt <= np.float32(0.9) else 0.0
        z = noises.pop(0) if tau > 0 else None
        xp = update(pu, x, tau, ds, tp, z, tt, False)
        ds.append(d_of(xp, tt))
        x = update(cu, x, tau, ds, tp, z, tt, True) if cc > 0 and not (step < warm and step == 1) else xp
        tp.append(tt)
        if step >= warm:
            del ds[0]
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("p", "c"), [(2, 2), (1, 0), (2, 0), (3, 3), (1, 2), (3, 1)])
@pytest.mark.parametrize("noise_level", [0.0, 0.4])
def test_sa_solver_matches_monomial_reference(p: int, c: int, noise_level: float) -> None:
    sig, z = flow_sigmas(14, 3.0), _z()
    vel = gaussian_field(0.6, 0.8)
    gen = torch.Generator().manual_seed(11)
    mine = sa_solver_sample(
        vel, z, sig, noise_level=noise_level, predictor_order=p, corrector_order=c, generator=gen
    )
    g2 = torch.Generator().manual_seed(11)
    noises = [torch.randn(z.shape, generator=g2).double() for _ in range(14)]
    ref = _reference_sa(vel, z, sig, noise_level, p, c, noises)
    torch.testing.assert_close(mine.x0, ref, rtol=1e-9, atol=1e-9)
    assert mine.nfe == 14


def test_sa_solver_nfe_and_evaluation_times() -> None:
    calls: list[float] = []
    base = gaussian_field(0.5, 1.0)

    def vel(x, t):
        calls.append(t[0].item())
        return base(x, t)

    sig = flow_sigmas(14, 3.0)
    out = sa_solver_sample(
        vel, _z(dtype=torch.float32), sig, noise_level=0.4, generator=torch.Generator().manual_seed(0)
    )
    assert out.nfe == 14 == len(calls)
    assert calls == sa_solver_grid(sig)[:-1].tolist()  # 0.999, .9731, ..., .2062, .1031; never t = 0
    assert out.x0.dtype == torch.float32 and out.x0.shape == (4, 2, 3, 3)
    calls.clear()
    out = sa_solver_sample(vel, _z(), sig, noise_level=0.0, pc_mode="PECE")
    assert out.nfe == len(calls) == 14 + 12  # re-evaluation after the corrector of steps 2..13


def test_sa_solver_denoise_to_zero_returns_last_data_prediction() -> None:
    sig = flow_sigmas(6, 3.0)
    grid = sa_solver_grid(sig).tolist()
    seen = {}
    base = gaussian_field(0.3, 0.6)

    def vel(x, t):
        v = base(x, t)
        seen[t[0].item()] = x - t[0].item() * v
        return v

    out = sa_solver_sample(vel, _z(), sig, noise_level=0.0)
    assert torch.equal(out.x0, seen[grid[-2]])


@pytest.mark.parametrize(("mu", "s"), [(0.5, 1.0), (0.7, 0.5)])
def test_sa_solver_second_order_convergence(mu: float, s: float) -> None:
    """Against the exact ODE solution from the solver's own start/end times (t0 = 0.999 start,
    final data prediction at t[N-1] = t[N-2]/2), the error falls ~4x per doubling of steps."""
    z, vel = _z(), gaussian_field(mu, s)

    def var(t):
        return (1 - t) ** 2 * s**2 + t**2

    errs = []
    for n in (40, 80, 160, 320):
        sig = flow_sigmas(n, 3.0)
        grid = sa_solver_grid(sig).double().tolist()
        t0, tl = grid[0], grid[-2]
        w = (z - (1 - t0) * mu) / math.sqrt(var(t0))
        x_tl = (1 - tl) * mu + math.sqrt(var(tl)) * w
        d_exact = mu + (1 - tl) * s**2 * (x_tl - (1 - tl) * mu) / var(tl)
        errs.append((sa_solver_sample(vel, z, sig, noise_level=0.0).x0 - d_exact).abs().max().item())
    ratios = [a / b for a, b in itertools.pairwise(errs)]
    assert all(r > 3.0 for r in ratios), (errs, ratios)


@pytest.mark.parametrize(("mu", "s"), [(0.5, 1.0), (0.7, 0.5), (1.0, 0.3)])
def test_sa_solver_beats_euler_at_same_nfe(mu: float, s: float) -> None:
    z, vel = _z(), gaussian_field(mu, s)
    exact = mu + s * z
    prev = None
    for n in (10, 14, 20, 40, 80):
        sig = flow_sigmas(n, 3.0)
        e_euler = (euler_sample(vel, z, sig).x0 - exact).abs().max().item()
        e_sa = (sa_solver_sample(vel, z, sig, noise_level=0.0).x0 - exact).abs().max().item()
        assert e_sa < e_euler, (n, e_sa, e_euler)
        prev = e_sa
    assert prev < 0.03  # converges to the ODE solution


def test_sa_solver_stochastic_preserves_marginals() -> None:
    mu, s = 0.7, 0.5
    z = _z((2, 1, 100, 100), dtype=torch.float32)
    sig = flow_sigmas(60, 3.0)
    out = sa_solver_sample(
        gaussian_field(mu, s), z, sig, noise_level=0.4, generator=torch.Generator().manual_seed(1)
    ).x0
    ode = sa_solver_sample(gaussian_field(mu, s), z, sig, noise_level=0.0).x0
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() / s - 1) < 0.05
    assert abs(out.std().item() / ode.std().item() - 1) < 0.02
    assert (out - ode).abs().mean().item() > 0.1  # noise injected inside the window


def test_noise_only_inside_window() -> None:
    sig, z, vel = flow_sigmas(14, 3.0), _z(dtype=torch.float32), gaussian_field(0.5, 1.0)
    # no grid point inside the window -> identical to the ODE and no generator use
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a = sa_solver_sample(vel, z, sig, noise_level=0.4, noise_window=(0.95, 0.96), generator=g).x0
    assert torch.equal(g.get_state(), state)
    assert torch.equal(a, sa_solver_sample(vel, z, sig, noise_level=0.0).x0)


# ---------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("sampler", ["sa", "euler_sde"])
def test_per_sample_generators_are_batch_independent(sampler: str) -> None:
    sig, vel = flow_sigmas(14, 3.0), gaussian_field(0.5, 1.0)
    seeds = [10, 11, 12, 13]
    x1 = torch.stack([torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(100 + s)) for s in seeds])

    def run(x, gens):
        if sampler == "sa":
            return sa_solver_sample(vel, x, sig, noise_level=0.4, generator=gens).x0
        return euler_sample(vel, x, sig, noise_level=0.7, sde_frac=0.5, generator=gens).x0

    batch = run(x1, [torch.Generator().manual_seed(s) for s in seeds])
    alone = run(x1[2:3], [torch.Generator().manual_seed(12)])
    torch.testing.assert_close(batch[2:3], alone, rtol=0, atol=1e-6)
    alone_single = run(x1[2:3], torch.Generator().manual_seed(12))  # a bare generator, batch of 1
    torch.testing.assert_close(alone, alone_single, rtol=0, atol=0)
    # reproducible, and different seeds give different rollouts
    again = run(x1, [torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(batch, again)
    other = run(x1, [torch.Generator().manual_seed(s + 1) for s in seeds])
    assert not torch.allclose(batch, other)


def test_randn_per_sample_validation() -> None:
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_per_sample(
            (3, 2), [torch.Generator(), torch.Generator()], device=torch.device("cpu"), dtype=torch.float32
        )


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        (torch.tensor([1.0, 0.5, 0.2]), "end in 0"),
        (torch.tensor([1.0, 0.2, 0.5, 0.0]), "strictly decreasing"),
        (torch.tensor([1.0, 0.0]), "at least 3"),
    ],
)
def test_sa_solver_validation(sigmas, match) -> None:
    with pytest.raises(ValueError, match=match):
        sa_solver_sample(gaussian_field(0.5, 1.0), _z(), sigmas, noise_level=0.0)


def test_sa_solver_rejects_grids_too_dense_at_t1() -> None:
    # with shift 3 and N >= ~335 the second sigma exceeds the edited t[0] = 0.999
    with pytest.raises(ValueError, match="not strictly decreasing"):
        sa_solver_sample(gaussian_field(0.5, 1.0), _z(), flow_sigmas(400, 3.0), noise_level=0.0)


# ------------------------------------------------------------------------- FLUX grid (trap 6)


def test_flux_mu_and_sigmas_match_diffusers_bitwise() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq_len in (256, 1024, 4096):
        assert flux_mu(seq_len) == calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    for mu in (0.5, flux_mu(1024), 1.15):
        for n in (1, 2, 4, 6, 10, 28):
            sch = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096)
            sch.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)  # as FluxPipeline calls it
            assert torch.equal(flux_sigmas(n, mu), sch.sigmas), (mu, n)


def test_flux_sigmas_spec_values() -> None:
    """objectives.md 4.2 / 4.5: 512 px (L = 1024, mu = 0.63) and the tiny 64 px model (L = 256, mu = 0.5)."""
    assert flux_mu(1024) == pytest.approx(0.63) and flux_mu(256) == pytest.approx(0.5)
    np.testing.assert_allclose(flux_sigmas(6, flux_mu(1024)).numpy(), [1, .9037, .7897, .6525, .4842, .2730, 0],
                               atol=6e-5)
    np.testing.assert_allclose(flux_sigmas(10, flux_mu(1024)).numpy(),
                               [1, .9441, .8825, .8142, .7380, .6525, .5559, .4459, .3195, .1726, 0], atol=6e-5)
    np.testing.assert_allclose(flux_sigmas(4, 0.5).numpy(), [1, .8318, .6225, .3547, 0], atol=6e-5)
    assert flux_sigmas(28, flux_mu(1024))[-2].item() == pytest.approx(0.0650, abs=6e-5)


def test_sa_solver_grid_tail_rule_is_upstreams_edit_on_sd3_and_keeps_flux_grids() -> None:
    """Trap 6: upstream's t[-2] = t[-3]/2 assumes SD3's tiny tail (0.0089). The rule max(t[-2], t[-3]/2)
    is bit-identical to it on SD3 grids up to N = 330 and leaves every FLUX grid's tail alone."""
    for n in range(2, 331):
        sig = flow_sigmas(n, 3.0)
        upstream = sig.clone()
        upstream[-2] = upstream[-3] / 2
        upstream[0] = 1 - 1e-3
        assert torch.equal(sa_solver_grid(sig), upstream), n
    for mu in (0.5, flux_mu(1024), flux_mu(4096)):
        for n in range(3, 41):
            sig = flux_sigmas(n, mu)
            got = sa_solver_grid(sig)
            assert torch.equal(got[1:], sig[1:]) and got[0].item() == pytest.approx(0.999), (mu, n)
    sig = flux_sigmas(6, flux_mu(1024))
    assert sig[-2].item() > sig[-3].item() / 2  # .2730 > .2421: upstream's edit would lower the tail


def test_sa_solver_on_flux_grid_evaluates_the_grid_and_first_order_is_fluxs_euler() -> None:
    """On FLUX's grid the model is evaluated at the grid's own times (0.999 for 1, never an edited tail),
    the returned x0 is the data prediction at the last nonzero sigma (= an Euler step from it to 0, as
    FluxPipeline's last step), and first-order SA-Solver without noise is the Euler sampler step for step
    (DDIM = Euler in the flow-matching parameterisation). Packed (B, L, 4C) latents go through as any shape."""
    sig = flux_sigmas(6, flux_mu(1024))
    grid = sa_solver_grid(sig)
    calls: list[float] = []
    base = gaussian_field(0.3, 0.7)
    seen = {}

    def vel(x, t):
        calls.append(t[0].item())
        v = base(x, t)
        seen[t[0].item()] = x - t[0].item() * v
        return v

    z = _z(shape=(3, 16, 8))  # packed latents: (B, L, 4C)
    out = sa_solver_sample(vel, z, sig, noise_level=0.4, generator=torch.Generator().manual_seed(0))
    assert calls == grid[:-1].tolist() and calls[-1] == sig[-2].item()
    assert out.x0.shape == z.shape
    calls.clear()
    out = sa_solver_sample(vel, z, sig, noise_level=0.0)
    assert torch.equal(out.x0, seen[sig[-2].item()])
    sa1 = sa_solver_sample(base, z, sig, noise_level=0.0, predictor_order=1, corrector_order=0).x0
    euler = euler_sample(base, z, grid).x0  # the same times: 0.999, then the FLUX grid to 0
    torch.testing.assert_close(sa1, euler, rtol=1e-12, atol=1e-12)
