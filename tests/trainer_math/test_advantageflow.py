"""AdvantageFlow as derived in objectives.md section 3 (derived, not the paper's code): values by hand,
gradient against the section 3.2 formula in float64, the convexity guard (trap 13) and the section
3.3 identity -- DiffusionNFT without adaptive weights is AdvantageFlow with lambda_i = beta - A~_i."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.awm.methods.advantageflow import advantageflow_loss, check_lambda, time_weight
from trainers.awm.methods.nft import nft_loss

T, B, D = 2, 3, (2, 2, 2)
ND = 8


def _random(seed: int, adv: list[float]):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, *D, generator=g, dtype=torch.float64).unsqueeze(0).expand(T, B, *D).contiguous()
    eps = torch.randn(T, B, *D, generator=g, dtype=torch.float64)
    t = torch.rand(T, B, generator=g, dtype=torch.float64) * 0.98 + 0.01
    xt = (1 - t.view(T, B, 1, 1, 1)) * x0 + t.view(T, B, 1, 1, 1) * eps
    v_old = torch.randn(T, B, *D, generator=g, dtype=torch.float64)
    v = v_old + 0.5 * torch.randn(T, B, *D, generator=g, dtype=torch.float64)
    v_ref = torch.randn(T, B, *D, generator=g, dtype=torch.float64)
    return v, v_old, v_ref, xt, x0, eps - x0, t, torch.tensor(adv, dtype=torch.float64)


def test_single_pair_value_by_hand() -> None:
    """D = 2, t = 0.5: v = (1, 0), u = (0, 2), v_roll = (0, 0); A~ = -0.5, lambda = 2.
    mse(v, u) = (1 + 4)/2 = 2.5, mse(v, v_roll) = 0.5; bracket = -0.5 * 2.5 + 2 * 0.5 = -0.25.
    velocity: -0.25; x0 (t^2 = 0.25): -0.0625; nft_adaptive: mean|t (v - u)| = 0.5 (1 + 2)/2 = 0.75,
    w = 0.25 / 0.75 -> -0.25/3; KL with v_ref = (1, 1): mean = 0.5, kl_beta 0.1 adds 0.05."""
    v = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    u = torch.tensor([0.0, 2.0], dtype=torch.float64).view(1, 1, 2)
    roll = torch.zeros(1, 1, 2, dtype=torch.float64)
    t = torch.tensor([[0.5]], dtype=torch.float64)
    adv = torch.tensor([-0.5], dtype=torch.float64)
    out = advantageflow_loss(v, roll, u, t, adv, lam=2.0, weighting="velocity")
    assert float(out["loss"]) == pytest.approx(-0.25)
    assert float(out["data_loss"]) == pytest.approx(-1.25) and float(out["roll_loss"]) == pytest.approx(1.0)
    assert float(advantageflow_loss(v, roll, u, t, adv, lam=2.0, weighting="x0")["loss"]) == pytest.approx(-0.0625)
    assert float(advantageflow_loss(v, roll, u, t, adv, lam=2.0, weighting="nft_adaptive")["loss"]) == \
        pytest.approx(-0.25 / 3)
    ref = torch.ones(1, 1, 2, dtype=torch.float64)
    out = advantageflow_loss(v, roll, u, t, adv, lam=2.0, weighting="velocity", kl_beta=0.1, pred_ref=ref)
    assert float(out["kl_loss"]) == pytest.approx(0.5)
    assert float(out["loss"]) == pytest.approx(-0.25 + 0.05)


@pytest.mark.parametrize("weighting", ["velocity", "x0", "nft_adaptive"])
def test_gradient_against_section_3_2_float64(weighting: str) -> None:
    """d/dv of w [A~ mean (v - u)^2 + lambda mean (v - v_roll)^2] = w (2/D) [A~ (v - u) + lambda (v - v_roll)]."""
    v, v_old, v_ref, _, _, u, t, adv = _random(5, [0.9, -0.8, 0.0])
    v = v.clone().requires_grad_(True)
    lam, kl_beta = 1.25, 1e-4
    out = advantageflow_loss(v, v_old, u, t, adv, lam=lam, weighting=weighting, kl_beta=kl_beta, pred_ref=v_ref)
    out["loss"].backward()
    vn, on, rn, un, tn, an = (a.detach().numpy() for a in (v, v_old, v_ref, u, t, adv))
    loss, grad = 0.0, np.zeros_like(vn)
    for j in range(T):
        for i in range(B):
            s = tn[j, i]
            w = {"velocity": 1.0, "x0": s * s,
                 "nft_adaptive": s * s / max(np.mean(np.abs(s * (vn[j, i] - un[j, i]))), 1e-5)}[weighting]
            loss += (w * (an[i] * np.mean((vn[j, i] - un[j, i]) ** 2) + lam * np.mean((vn[j, i] - on[j, i]) ** 2))
                     + kl_beta * np.mean((vn[j, i] - rn[j, i]) ** 2)) / (T * B)
            grad[j, i] = (w * 2 / ND * (an[i] * (vn[j, i] - un[j, i]) + lam * (vn[j, i] - on[j, i]))
                          + kl_beta * 2 / ND * (vn[j, i] - rn[j, i])) / (T * B)
    assert float(out["loss"].detach()) == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(v.grad.numpy(), grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_nft_is_a_special_case_section_3_3(beta: float) -> None:
    """grad L_NFT(adaptive off) / adv_clip_max == grad L_AF(x0 weighting, lambda_i = beta - A~_i), and the
    two losses differ by a constant in v (the t^2 (a^2/beta - A~ a^2) terms, a = v_old - u)."""
    adv = [-0.8, 0.2, 0.9]
    v, v_old, _, xt, x0, u, t, a_t = _random(6, adv)
    lam = beta - a_t
    grads, values = [], []
    for shift in (0.0, 0.37):
        v1 = (v + shift).clone().requires_grad_(True)
        v2 = (v + shift).clone().requires_grad_(True)
        l_nft = nft_loss(v1, v_old, xt, x0, t, a_t, nft_beta=beta, adv_clip_max=5.0, adaptive_weighting=False)["loss"]
        l_af = advantageflow_loss(v2, v_old, u, t, a_t, lam=lam, weighting="x0")["loss"]
        (l_nft / 5.0).backward()
        l_af.backward()
        torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-9, atol=1e-14)
        grads.append(v1.grad.abs().max().item())
        values.append(float(l_nft.detach()) / 5.0 - float(l_af.detach()))
    assert grads[0] > 1e-6  # a non-trivial gradient was compared
    assert values[0] == pytest.approx(values[1], rel=1e-10, abs=1e-12)  # constant offset in v
    # the curvature A~_i + lambda_i is beta for every sample (section 3.3)
    assert torch.allclose(a_t + lam, torch.full_like(a_t, beta))


def test_convexity_guard_trap_13() -> None:
    v, v_old, _, _, _, u, t, _ = _random(7, [0.0, 0.0, 0.0])
    adv = torch.tensor([0.5, -0.95, 0.1], dtype=torch.float64)
    check_lambda(adv, 1.0)  # -0.95 + 1 > 0
    with pytest.raises(ValueError, match="lambda \\+ A~ > 0"):
        check_lambda(adv, 0.9)
    with pytest.raises(ValueError, match="A~ = -0.95"):
        advantageflow_loss(v, v_old, u, t, adv, lam=0.95)  # exactly 0 is refused too (not strictly convex)
    with pytest.raises(ValueError, match="lambda \\+ A~ > 0"):
        advantageflow_loss(v, v_old, u, t, adv, lam=torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64))
    # lambda > max |A~| (here 1.0 > 0.95): the loss is convex in v, so far along a ray it grows (bounded below)
    direction = torch.randn(v.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    vals = [float(advantageflow_loss(v + k * direction, v_old, u, t, adv, lam=1.0, weighting="velocity")["loss"])
            for k in (10.0, 100.0, 1000.0)]
    assert vals[0] < vals[1] < vals[2]


def test_time_weight_and_bad_input() -> None:
    t = torch.tensor([[0.5, 0.1]])
    assert time_weight(t, "velocity").tolist() == [[1.0, 1.0]]
    assert time_weight(t, "x0")[0].tolist() == pytest.approx([0.25, 0.01])
    with pytest.raises(ValueError, match="weighting"):
        time_weight(t, "t**2")
    with pytest.raises(ValueError, match="abs_x0_err"):
        time_weight(t, "nft_adaptive")
    v, v_old, _, _, _, u, t, adv = _random(8, [0.1, 0.2, -0.3])
    with pytest.raises(ValueError, match="pred_ref"):
        advantageflow_loss(v, v_old, u, t, adv, lam=2.0, kl_beta=1e-4)
    with pytest.raises(ValueError, match="lam must"):
        advantageflow_loss(v, v_old, u, t, adv, lam=torch.ones(2, dtype=torch.float64) * 2)
    with pytest.raises(ValueError, match="target"):
        advantageflow_loss(v, v_old, u[:1], t, adv, lam=2.0)
