"""DiffusionNFT (objectives.md section 2): values by hand, loss and gradient against the section 2.2
formulas written out independently in numpy (float64), the section 2.3 first-order gradient, the
old-adapter decay schedules, the paper form of section 2.1 and the per-sample grid times (trap 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from trainers.awm.methods.nft import (
    draw_grid_times,
    grid_columns,
    implicit_policies,
    nft_loss,
    old_adapter_decay,
    optimality_probability,
)

T, B, D = 2, 3, (2, 2, 2)
ND = 8


def _random(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, *D, generator=g, dtype=dtype)
    eps = torch.randn(T, B, *D, generator=g, dtype=dtype)
    # per-sample sigmas in each column, as NFT draws them (trap 3), including 1.0
    t = torch.tensor([[1.0, 0.46, 0.0089], [0.79, 0.2, 0.6]], dtype=dtype)
    x0b = x0.unsqueeze(0).expand(T, *x0.shape)
    tt = t.reshape(T, B, 1, 1, 1)
    xt = (1 - tt) * x0b + tt * eps
    v_old = torch.randn(T, B, *D, generator=g, dtype=dtype)
    v = v_old + 0.3 * torch.randn(T, B, *D, generator=g, dtype=dtype)
    v_ref = torch.randn(T, B, *D, generator=g, dtype=dtype)
    adv = torch.tensor([0.8, -0.35, 0.0], dtype=dtype)
    return v, v_old, v_ref, xt, x0b.contiguous(), eps, t, adv


def _np_nft(v, v_old, v_ref, xt, x0, t, adv, beta, c, kl_beta, adaptive):
    """Section 2.2 written out per (t, sample) with numpy: (loss, d loss / d v)."""
    v, v_old, v_ref, xt, x0 = (a.detach().numpy().reshape(T, B, ND) for a in (v, v_old, v_ref, xt, x0))
    t, adv = t.numpy(), adv.numpy()
    loss, grad = 0.0, np.zeros_like(v)
    n = T * B
    for j in range(T):
        for i in range(B):
            s = t[j, i]
            r = min(max(adv[i] / 2 + 0.5, 0.0), 1.0)
            vp = beta * v[j, i] + (1 - beta) * v_old[j, i]
            vn = (1 + beta) * v_old[j, i] - beta * v[j, i]
            ep = xt[j, i] - s * vp - x0[j, i]
            en = xt[j, i] - s * vn - x0[j, i]
            wp = max(np.mean(np.abs(ep)), 1e-5) if adaptive else 1.0
            wn = max(np.mean(np.abs(en)), 1e-5) if adaptive else 1.0
            lp, ln = np.mean(ep**2) / wp, np.mean(en**2) / wn
            kl = np.mean((v[j, i] - v_ref[j, i]) ** 2)
            loss += (c * (r * lp / beta + (1 - r) * ln / beta) + kl_beta * kl) / n
            # d ep / d v = -s beta, d en / d v = +s beta
            grad[j, i] = (c * (r * 2 * ep * (-s * beta) / (ND * wp) + (1 - r) * 2 * en * (s * beta) / (ND * wn)) / beta
                          + kl_beta * 2 * (v[j, i] - v_ref[j, i]) / ND) / n
    return loss, grad.reshape(T, B, *D)


def test_decay_schedules_by_hand() -> None:
    assert [old_adapter_decay(s, 0) for s in (0, 10, 1000)] == [0.0, 0.0, 0.0]
    assert old_adapter_decay(0, 1) == 0.0
    assert old_adapter_decay(7, 1) == pytest.approx(0.007)
    assert old_adapter_decay(499, 1) == pytest.approx(0.499)
    assert old_adapter_decay(501, 1) == 0.5
    assert old_adapter_decay(74, 2) == 0.0  # trap 22: old = theta for the first 75 steps
    assert old_adapter_decay(75, 2) == 0.0
    assert old_adapter_decay(76, 2) == pytest.approx(0.0075)
    assert old_adapter_decay(75 + 200, 2) == 0.999
    with pytest.raises(ValueError, match="decay type"):
        old_adapter_decay(1, 3)
    with pytest.raises(ValueError, match="step"):
        old_adapter_decay(-1, 1)


def test_optimality_probability_and_implicit_policies_by_hand() -> None:
    r = optimality_probability(torch.tensor([1.0, -1.0, 0.0, 0.2, -0.6]))
    assert r.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.6, 0.2])
    v, v_old = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    vp, vn = implicit_policies(v, v_old, 0.1)
    assert vp.tolist() == pytest.approx([0.1 * 2 + 0.9 * 1, 0.1 * -1 + 0.9 * 1])  # [1.1, 0.8]
    assert vn.tolist() == pytest.approx([1.1 * 1 - 0.1 * 2, 1.1 * 1 + 0.1])  # [0.9, 1.2]
    # beta = 1: v+ = v, v- = 2 v_old - v (the reflection of v through v_old)
    vp, vn = implicit_policies(v, v_old, 1.0)
    assert vp.tolist() == [2.0, -1.0] and vn.tolist() == [0.0, 3.0]


def test_single_pair_value_by_hand() -> None:
    """One pair, D = 2: x0 = (1, -1), eps = (0, 2), t = 0.5 -> xt = (0.5, 0.5); v = (1, 0), v_old = (0, 0),
    beta = 0.5, A~ = 0.6 -> r = 0.8; v+ = (0.5, 0), v- = (-0.5, 0);
    x0+ - x0 = xt - 0.5 v+ - x0 = (-0.75, 1.5); x0- - x0 = (-0.25, 1.5).
    w+ = mean|.| = 1.125, w- = 0.875; l+ = (0.5625 + 2.25)/2/1.125 = 1.25, l- = (0.0625 + 2.25)/2/0.875 = 1.3214286
    L_pol = 5 (0.8 * 1.25 / 0.5 + 0.2 * 1.3214286 / 0.5) = 5 (2 + 0.5285714) = 12.642857;
    without adaptive weights l+ = 1.40625, l- = 1.15625 -> 5 (2.25 + 0.4625) = 13.5625."""
    x0 = torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 1, 2)
    eps = torch.tensor([0.0, 2.0], dtype=torch.float64).view(1, 1, 2)
    t = torch.tensor([[0.5]], dtype=torch.float64)
    xt = 0.5 * x0 + 0.5 * eps
    v = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    v_old = torch.zeros(1, 1, 2, dtype=torch.float64)
    adv = torch.tensor([0.6], dtype=torch.float64)
    out = nft_loss(v, v_old, xt, x0, t, adv, nft_beta=0.5)
    assert float(out["positive_loss"]) == pytest.approx(1.25)
    assert float(out["negative_loss"]) == pytest.approx(2.3125 / 2 / 0.875)
    assert float(out["loss"]) == pytest.approx(5 * (2.0 + 0.2 * (2.3125 / 2 / 0.875) / 0.5))
    out = nft_loss(v, v_old, xt, x0, t, adv, nft_beta=0.5, adaptive_weighting=False)
    assert float(out["loss"]) == pytest.approx(13.5625)
    # KL: v_ref = (0, 1) -> mean (v - v_ref)^2 = (1 + 1)/2 = 1, times kl_beta 0.25
    v_ref = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 2)
    out = nft_loss(v, v_old, xt, x0, t, adv, nft_beta=0.5, adaptive_weighting=False, kl_beta=0.25, pred_ref=v_ref)
    assert float(out["kl_loss"]) == pytest.approx(1.0)
    assert float(out["loss"]) == pytest.approx(13.5625 + 0.25)


@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("beta", [1.0, 0.1, 2.0])
def test_loss_and_gradient_against_section_2_2_float64(beta: float, adaptive: bool) -> None:
    v, v_old, v_ref, xt, x0, _, t, adv = _random(1)
    v = v.clone().requires_grad_(True)
    out = nft_loss(v, v_old, xt, x0, t, adv, nft_beta=beta, adv_clip_max=5.0, adaptive_weighting=adaptive,
                   kl_beta=1e-4, pred_ref=v_ref)
    exp_loss, exp_grad = _np_nft(v, v_old, v_ref, xt, x0, t, adv, beta, 5.0, 1e-4, adaptive)
    assert out["loss"].dtype == torch.float64
    assert float(out["loss"].detach()) == pytest.approx(exp_loss, rel=1e-12)
    out["loss"].backward()
    np.testing.assert_allclose(v.grad.numpy(), exp_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_first_order_gradient_section_2_3(beta: float) -> None:
    """At theta = theta_old the gradient is (5 A~ t / m) grad mean_D (v - u)^2 for every beta, with
    m = mean_D |v_old - u| (section 2.3, derived). On the (T, B) mean: each pair divided by T B."""
    _, v_old, _, xt, x0, eps, t, adv = _random(2)
    u = eps - x0
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, xt, x0, t, adv, nft_beta=beta)["loss"].backward()
    m = (v_old - u).abs().mean(dim=(2, 3, 4), keepdim=True)
    tt = t.reshape(T, B, 1, 1, 1)
    expected = 5 * adv.view(1, B, 1, 1, 1) * tt / m * 2 * (v_old - u) / ND / (T * B)
    torch.testing.assert_close(v.grad, expected, rtol=1e-9, atol=1e-14)
    # A~ = 0 (the third sample): a pure proximal pull, zero gradient at v = v_old (trap 12)
    assert float(v.grad[:, 2].abs().max()) < 1e-15 < float(v.grad[:, 0].abs().max())


def test_paper_form_section_2_1() -> None:
    """Without adaptive weights, l+- = t^2 mean_D (v+- - u)^2: the code form is
    adv_clip_max / beta * t^2 times the paper's r ||v+ - u||^2 + (1 - r) ||v- - u||^2 (per pair)."""
    v, v_old, _, xt, x0, eps, t, adv = _random(3)
    u = eps - x0
    beta = 0.7
    out = nft_loss(v, v_old, xt, x0, t, adv, nft_beta=beta, adaptive_weighting=False)
    vp, vn = implicit_policies(v, v_old, beta)
    r = optimality_probability(adv).view(1, B)
    paper = r * ((vp - u) ** 2).mean(dim=(2, 3, 4)) + (1 - r) * ((vn - u) ** 2).mean(dim=(2, 3, 4))
    assert float(out["policy_loss"]) == pytest.approx(float((5 / beta * t**2 * paper).mean()), rel=1e-12)


def test_reference_kl_does_not_reach_old_and_rejects_bad_input() -> None:
    v, v_old, v_ref, xt, x0, _, t, adv = _random(4)
    v = v.clone().requires_grad_(True)
    v_old = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, xt, x0, t, adv, nft_beta=1.0, kl_beta=1e-4, pred_ref=v_ref)["loss"].backward()
    assert v_old.grad is None  # v_old is detached: only the trained adapter learns
    with pytest.raises(ValueError, match="nft_beta"):
        nft_loss(v, v_old, xt, x0, t, adv, nft_beta=0.0)
    with pytest.raises(ValueError, match="pred_ref"):
        nft_loss(v, v_old, xt, x0, t, adv, nft_beta=1.0, kl_beta=1e-4)
    with pytest.raises(ValueError, match="t must"):
        nft_loss(v, v_old, xt, x0, t[0], adv, nft_beta=1.0)
    with pytest.raises(ValueError, match="advantages"):
        nft_loss(v, v_old, xt, x0, t, adv[:2], nft_beta=1.0)


def test_adaptive_weight_floor() -> None:
    """A pair whose x0 prediction is exact gets weight 1e-5 (not a division by zero)."""
    x0 = torch.zeros(1, 1, 2, dtype=torch.float64)
    t = torch.tensor([[0.5]], dtype=torch.float64)
    v = torch.zeros(1, 1, 2, dtype=torch.float64, requires_grad=True)
    out = nft_loss(v, v.detach(), x0.clone(), x0, t, torch.tensor([0.2], dtype=torch.float64), nft_beta=1.0)
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    assert torch.isfinite(v.grad).all()


def test_grid_times_per_sample_and_the_per_sigma_advantage_balance() -> None:
    """Each sample draws its own permutation of the grid (trap 3; J = int(N * fraction) columns). With J = N
    every sample is trained once at every grid sigma, so at each sigma the trained samples' advantages sum to
    zero like the whole batch's: a loss term shared by the samples at one sigma (sigma-weighted, as NFT's
    and AdvantageFlow's are) cancels. With J = N - 1 each sample drops one sigma and the per-sigma sums are
    minus the advantages of the samples that dropped it: not zero. (Why perf/method_compare.py trains NFT
    and AdvantageFlow with J = N at 32 images per step; trainers/awm/README.md, Compute comparison.)"""
    grid = torch.tensor([1.0, 0.9231, 0.8182, 0.6667, 0.4286, 0.0089])
    n, b = len(grid), 8
    adv = torch.tensor([0.9, -0.3, 0.2, -0.8, 0.5, -0.1, -0.6, 0.2], dtype=torch.float64)
    assert abs(float(adv.sum())) < 1e-12
    assert (grid_columns(n, 1.0), grid_columns(n, 0.99), grid_columns(10, 0.99), grid_columns(n, 0.01)) == (6, 5, 9, 1)

    def per_sigma_sums(t: Tensor) -> Tensor:
        hits = (t.T.unsqueeze(-1) == grid).double()  # (B, J, N): sample i trained at grid sigma k in column j
        return (adv[:, None] * hits.sum(dim=1)).sum(dim=0)  # (N,)

    t_all = draw_grid_times(grid, b, n, torch.Generator().manual_seed(0))
    assert t_all.shape == (n, b)
    for i in range(b):
        assert sorted(t_all[:, i].tolist()) == sorted(grid.tolist())
    assert not all(torch.equal(t_all[:, 0], t_all[:, i]) for i in range(1, b))  # per sample, not shared
    assert torch.allclose(per_sigma_sums(t_all), torch.zeros(n, dtype=torch.float64), atol=1e-12)
    # the x0 weighting's total: sum over (column, sample) of A~_i sigma^2 is 0 with J = N
    assert abs(float((adv[None, :] * t_all.double() ** 2).sum())) < 1e-12

    t_drop = draw_grid_times(grid, b, n - 1, torch.Generator().manual_seed(0))
    assert t_drop.shape == (n - 1, b)
    dropped = [next(k for k in range(n) if grid[k] not in t_drop[:, i]) for i in range(b)]
    want = torch.zeros(n, dtype=torch.float64)
    for i, k in enumerate(dropped):
        want[k] -= adv[i]
    assert torch.allclose(per_sigma_sums(t_drop), want, atol=1e-12)
    assert float(per_sigma_sums(t_drop).abs().max()) > 0.1
