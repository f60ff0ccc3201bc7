"""Flow-GRPO's math (objectives.md section 1) against hand-computed values and, on random float64
tensors, against the section 1 formulas: the SDE/CPS step and log-prob, the clipped ratio loss, the
KL term, their gradients; and the rollout's bookkeeping (stored transitions, window, sigma indices)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trainers.awm.config import trained_steps
from trainers.awm.methods.flow_grpo import (
    FlowGRPOMethod,
    clipped_policy_loss,
    cps_step_with_logprob,
    kl_to_reference,
    sde_std,
    sde_step_with_logprob,
)
from trainers.awm.samplers import flow_sigmas

D64 = torch.float64


def _t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D64)


# ------------------------------------------------------------------------------ hand values
def test_sde_step_hand_values():
    # x = 1, v = 0.5, sigma = 0.5 -> 0.25, a = 0.7: s = 0.7 sqrt(0.5 / 0.5) = 0.7, dt = -0.25
    # mu = 1 (1 - 0.49 * 0.25 / 1) + 0.5 (1 + 0.49 * 0.5 / 1)(-0.25) = 0.8775 - 0.155625 = 0.721875
    # std of the step = 0.7 * 0.5 = 0.35; x' = mu + 0.35 (z = 1)
    # log p = -1/2 - log 0.35 - log sqrt(2 pi) = -0.369116...
    x, v = torch.ones(1, 1, dtype=D64), torch.full((1, 1), 0.5, dtype=D64)
    prev, lp, mean, s = sde_step_with_logprob(x, v, _t(0.5), _t(0.25), 0.9, 0.7, noise=torch.ones(1, 1, dtype=D64))
    assert float(s) == pytest.approx(0.7, abs=1e-15)
    assert float(mean) == pytest.approx(0.721875, abs=1e-15)
    assert float(prev) == pytest.approx(0.721875 + 0.35, abs=1e-15)
    assert float(lp) == pytest.approx(-0.5 - math.log(0.35) - 0.5 * math.log(2 * math.pi), abs=1e-14)


def test_sigma_one_uses_the_second_grid_value():
    # trap 2: at sigma = 1 the denominator is 1 - grid[1], not 1 - 1
    s = sde_std(_t(1.0, 0.5), 0.96, 0.7)
    assert s[0] == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.96)), rel=1e-14)
    assert s[1] == pytest.approx(0.7, rel=1e-14)


def test_per_step_noise_std_table_n10():
    # objectives.md 1.1: N = 10, a = 0.7, shift 3 -> s_k sqrt(-dt) per step
    want = [.70, .74, .54, .45, .39, .35, .32, .28, .23, .0063]
    sig = flow_sigmas(10, 3.0).to(D64)
    s = sde_std(sig[:-1], sig[1], 0.7)
    got = (s * torch.sqrt(sig[:-1] - sig[1:])).tolist()
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=0.006 if w > 0.01 else 1e-4)


def test_trained_steps():
    assert trained_steps(10, 0.99, 0) == 9  # the last transition (0.0089 -> 0) is never trained (trap 1)
    assert trained_steps(6, 0.99, 0) == 5
    assert trained_steps(10, 0.99, 3) == 3  # Fast: the window


def test_clipped_loss_hand_values():
    # A = [1, -1, 2], log-ratio = [log 1.5, log 0.5, 0]; c = 0.2
    # sample 0: max(-1.5, -1.2) = -1.2 (clipped); sample 1: max(0.5, 0.8) = 0.8 (clipped); sample 2: -2
    out = clipped_policy_loss(_t(math.log(1.5), math.log(0.5), 0.0), _t(0, 0, 0), _t(1, -1, 2), 0.2)
    assert float(out["policy_loss"]) == pytest.approx((-1.2 + 0.8 - 2.0) / 3, abs=1e-14)
    assert float(out["clipfrac"]) == pytest.approx(2 / 3)
    assert float(out["approx_kl"]) == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3, abs=1e-14)


def test_kl_hand_values():
    # two samples of 2 elements: mean_D (d^2) / (2 s^2) = [(1 + 0)/2 / (2 * 0.25), (4 + 4)/2 / (2 * 1)] = [1, 2]
    kl = kl_to_reference(_t(1, 0, 2, 2).view(2, 2), torch.zeros(2, 2, dtype=D64), _t(0.5, 1.0))
    assert float(kl) == pytest.approx(1.5, abs=1e-15)


# ------------------------------------------------------------------- formulas on random tensors
def _rand(seed: int, shape=(5, 4, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=D64)
    v = torch.randn(shape, generator=g, dtype=D64)
    sigma = torch.rand(shape[0], generator=g, dtype=D64) * 0.8 + 0.15
    sigma_next = sigma * torch.rand(shape[0], generator=g, dtype=D64) * 0.9
    z = torch.randn(shape, generator=g, dtype=D64)
    return x, v, sigma, sigma_next, z


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (3, 16, 8)])  # SD3 4-D and packed FLUX 3-D latents
def test_sde_step_matches_the_paper_sde_and_the_gaussian_log_prob(shape):
    x, v, sigma, sigma_next, z = _rand(0, shape)
    a = 0.7
    prev, lp, mean, s = sde_step_with_logprob(x, v, sigma, sigma_next, 0.97, a, noise=z)
    b = (-1,) + (1,) * (len(shape) - 1)
    t, dt = sigma.view(b), (sigma_next - sigma).view(b)
    st = (a * torch.sqrt(sigma / (1 - sigma))).view(b)  # sigma_t = a sqrt(t / (1 - t)) (no sigma = 1 here)
    assert torch.allclose(s, st.flatten(), rtol=1e-14)
    # paper: dx = [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt + sigma_t dw, Euler-Maruyama in decreasing t
    drift = v + st**2 / (2 * t) * (x + (1 - t) * v)
    assert torch.allclose(mean, x + drift * dt, rtol=1e-13, atol=1e-13)
    assert torch.allclose(prev, mean + st * torch.sqrt(-dt) * z, rtol=1e-13, atol=1e-13)
    # log-prob: the per-element MEAN of the Gaussian log-density (trap 8)
    normal = torch.distributions.Normal(mean, st * torch.sqrt(-dt))
    want = normal.log_prob(prev).mean(dim=tuple(range(1, len(shape))))
    assert torch.allclose(lp, want, rtol=1e-13, atol=1e-13)
    # noise_level 0: the same formula is the Euler ODE step
    p0, *_ = sde_step_with_logprob(x, v, sigma, sigma_next, 0.97, 0.0, noise=z)
    assert torch.allclose(p0, x + dt * v, rtol=1e-14, atol=1e-14)


def test_log_prob_gradient_wrt_velocity():
    x, v, sigma, sigma_next, z = _rand(1)
    a = 0.7
    prev, *_ = sde_step_with_logprob(x, v, sigma, sigma_next, 0.97, a, noise=z)
    vv = v.clone().requires_grad_(True)
    _, lp, mean, s = sde_step_with_logprob(x, vv, sigma, sigma_next, 0.97, a, prev_sample=prev)
    w = torch.randn(len(lp), generator=torch.Generator().manual_seed(2), dtype=D64)
    (lp * w).sum().backward()
    b = (-1, 1, 1, 1)
    dt = (sigma_next - sigma).view(b)
    scale2 = (s.view(b) ** 2) * (-dt)
    dmu_dv = (1 + s.view(b) ** 2 * (1 - sigma.view(b)) / (2 * sigma.view(b))) * dt
    d = x[0].numel()
    want = w.view(b) * (prev - mean.detach()) / scale2 * dmu_dv / d
    assert torch.allclose(vv.grad, want, rtol=1e-12, atol=1e-14)


def test_cps_step_matches_its_formula():
    x, v, sigma, sigma_next, z = _rand(3)
    a = 0.8
    prev, lp, mean, s = cps_step_with_logprob(x, v, sigma, sigma_next, a, noise=z)
    b = (-1, 1, 1, 1)
    sn = sigma_next.view(b)
    std = sn * math.sin(a * math.pi / 2)
    x0, x1 = x - sigma.view(b) * v, x + (1 - sigma.view(b)) * v
    want_mean = (1 - sn) * x0 + torch.sqrt(sn**2 - std**2) * x1
    assert torch.allclose(mean, want_mean, rtol=1e-13, atol=1e-13)
    assert torch.allclose(prev, want_mean + std * z, rtol=1e-13, atol=1e-13)
    assert torch.allclose(lp, -((prev - want_mean) ** 2).mean(dim=(1, 2, 3)), rtol=1e-13, atol=1e-13)
    assert torch.allclose(s, sigma_next * math.sin(a * math.pi / 2), rtol=1e-14)
    p0, *_ = cps_step_with_logprob(x, v, sigma, sigma_next, 0.0, noise=z)  # a = 0: Euler
    assert torch.allclose(p0, x + (sigma_next - sigma).view(b) * v, rtol=1e-13, atol=1e-13)


def test_clipped_loss_and_gradient_against_the_formula():
    g = torch.Generator().manual_seed(4)
    n, c = 64, 0.05
    old = torch.randn(n, generator=g, dtype=D64)
    lp = (old + 0.1 * torch.randn(n, generator=g, dtype=D64)).requires_grad_(True)
    adv = torch.clamp(2 * torch.randn(n, generator=g, dtype=D64), -5, 5)
    out = clipped_policy_loss(lp, old, adv, c)
    rho = torch.exp(lp.detach() - old)
    want = torch.mean(torch.maximum(-adv * rho, -adv * torch.clamp(rho, 1 - c, 1 + c)))
    assert float(out["policy_loss"].detach()) == pytest.approx(float(want), abs=1e-14)
    out["policy_loss"].backward()
    # d/d lp: -A rho / n where the unclipped branch is the max (rho inside [1-c, 1+c] or the clip does not bind)
    active = (-adv * rho) >= (-adv * torch.clamp(rho, 1 - c, 1 + c))
    inside = (rho > 1 - c) & (rho < 1 + c)
    grad_want = torch.where(active | inside, -adv * rho / n, torch.zeros_like(rho))
    assert torch.allclose(lp.grad, grad_want, rtol=1e-12, atol=1e-15)
    assert 0 < float(out["clipfrac"]) < 1


def test_on_policy_ratio_is_one_and_kl_gradient():
    g = torch.Generator().manual_seed(5)
    lp = torch.randn(8, generator=g, dtype=D64)
    adv = torch.randn(8, generator=g, dtype=D64)
    out = clipped_policy_loss(lp, lp.clone(), adv, 1e-4)
    assert torch.equal(out["ratio"], torch.ones_like(lp)) and float(out["clipfrac"]) == 0.0
    assert float(out["policy_loss"]) == pytest.approx(float(-adv.mean()), abs=1e-15)
    mean = torch.randn(8, 2, 3, generator=g, dtype=D64).requires_grad_(True)
    ref = torch.randn(8, 2, 3, generator=g, dtype=D64)
    s = torch.rand(8, generator=g, dtype=D64) + 0.1
    kl = kl_to_reference(mean, ref, s)
    kl.backward()
    assert torch.allclose(mean.grad, (mean.detach() - ref) / (s.view(-1, 1, 1) ** 2) / (8 * 6), rtol=1e-13)


# -------------------------------------------------------------------- the rollout's bookkeeping
def _method(num_steps: int, window: int = 0, window_range=None, sde_type: str = "sde") -> FlowGRPOMethod:
    cfg = SimpleNamespace(
        sample=SimpleNamespace(num_steps=num_steps, noise_level=0.7, sde_type=sde_type, sde_window_size=window,
                               sde_window_range=window_range, guidance_scale=1.0),
        train=SimpleNamespace(timestep_fraction=0.99, adv_clip_max=5.0, clip_range=1e-4, beta=0.0, cfg=False))
    return FlowGRPOMethod(cfg)


def _velocity(x, t):  # a smooth stand-in for a transformer: v depends on x and t
    return 0.3 * x - t.view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("window,window_range", [(0, None), (3, (0, 5)), (2, None)])
def test_rollout_keeps_each_trained_transition_and_its_log_prob(window, window_range):
    n = 6
    m = _method(n, window, window_range)
    tr = SimpleNamespace(sigmas=flow_sigmas(n, 3.0))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    lat = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = m.sample(tr, _velocity, lat, gens)
    ex = out.extras
    J = m.J
    assert out.nfe == n and ex["latents"].shape == (4, J + 1, 2, 4, 4) and ex["log_probs"].shape == (4, J)
    assert ex["log_probs"].dtype == torch.float32 and ex["step_index"].dtype == torch.long
    steps = ex["step_index"]
    lo, hi = window_range if window_range is not None else (0, n - 1)
    if window:
        assert bool(((steps[:, 0] >= lo) & (steps[:, -1] <= hi - 1)).all())  # inclusive start bounds (trap 4)
        assert torch.equal(steps - steps[:, :1], torch.arange(J).expand(4, J))
    else:
        assert torch.equal(steps, torch.arange(J).expand(4, J))  # steps 0..J-1, the last never (trap 1)
    if not window:  # the last kept state of the full window is x_J, before the untrained last step(s)
        assert not torch.equal(ex["latents"][:, -1], out.x0)
    # the stored log-prob is the one training recomputes on the stored transition with the same policy
    sig = tr.sigmas.float()
    for j in range(J):
        k = steps[:, j]
        x = ex["latents"][:, j]
        _, lp, _, _ = sde_step_with_logprob(x, _velocity(x, sig[k]), sig[k], sig[k + 1], sig[1], 0.7,
                                            prev_sample=ex["latents"][:, j + 1])
        assert torch.allclose(lp, ex["log_probs"][:, j], rtol=1e-6, atol=1e-6)
    # deterministic from the per-sample generators
    again = m.sample(tr, _velocity, lat, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    assert torch.equal(again.x0, out.x0) and torch.equal(again.extras["log_probs"], ex["log_probs"])


def test_fast_window_is_ode_outside():
    n = 6
    m = _method(n, 2, (2, 4))  # the window is always steps 2-3
    tr = SimpleNamespace(sigmas=flow_sigmas(n, 3.0))
    lat = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = m.sample(tr, _velocity, lat, [torch.Generator().manual_seed(i) for i in range(2)])
    assert torch.equal(out.extras["step_index"], torch.tensor([[2, 3], [2, 3]]))
    # steps 0, 1 are Euler: x_2 is the deterministic ODE state
    sig = tr.sigmas.float()
    x = lat.float()
    for k in range(2):
        x = x + (sig[k + 1] - sig[k]) * _velocity(x, sig[k].expand(2))
    assert torch.allclose(out.extras["latents"][:, 0], x, rtol=1e-6, atol=1e-6)


def test_advantages_are_clamped_not_rescaled():
    from trainers.awm.advantages import compute_advantages

    m = _method(4)
    res = compute_advantages(torch.tensor([0.0, 1.0, 0.0, 100.0], dtype=D64), [0, 0, 1, 1],
                             per_prompt_stat_tracking=True, global_std=True, adv_clip_max=5.0, advantage_max=1.0)
    a = m.advantages(res)
    assert torch.equal(a, torch.clamp(res.raw_advantages, -5, 5))
    assert float(a.abs().max()) > 1.0  # AWM's A' would be in [-1, 1]
