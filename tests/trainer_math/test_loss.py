"""AWM loss (spec 2.3-2.6): values and gradients against hand formulas (numpy / python floats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainers.awm.loss import (
    awm_loss,
    compute_awm_loss,
    flow_matching_target,
    noised_latents,
    per_sample_log_prob,
    policy_loss,
    std_dev_t,
    velocity_kl,
)

T, B, C, H, W = 2, 3, 2, 2, 2
CHW = C * H * W


def _fixture():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(T, B, C, H, W, generator=g)
    target = torch.randn(T, B, C, H, W, generator=g, dtype=torch.float64)
    t = torch.tensor([[0.9, 0.9, 0.9], [0.35, 0.35, 0.35]], dtype=torch.float32)
    return pred, target, t


def _np_mse(pred, target):
    p = pred.double().numpy().reshape(T, B, -1)
    q = target.numpy().reshape(T, B, -1)
    return [[sum((a - b) ** 2 for a, b in zip(p[i, j], q[i, j])) / CHW for j in range(B)] for i in range(T)]


def _hand_lp_and_weight(weighting: str, mse: float, t: float, p: float = 0.25) -> tuple[float, float]:
    """(lp, w) with d(-lp)/d mse = w (the table's gradient column)."""
    if weighting == "Uniform":
        return -mse, 1.0
    if weighting == "t":
        return -t * mse, t
    if weighting == "t**2":
        return -t * t * mse, t * t
    if weighting == "huber":
        return -t * (math.sqrt(mse + 1e-10) - 1e-5), t / (2 * math.sqrt(mse + 1e-10))
    if weighting == "ghuber":
        return -(t / p) * ((mse + 1e-10) ** p - 1e-10**p), t * (mse + 1e-10) ** (p - 1)
    raise AssertionError(weighting)


@pytest.mark.parametrize("weighting", ["Uniform", "t", "t**2", "huber", "ghuber"])
def test_log_prob_values_and_gradients(weighting: str) -> None:
    pred, target, t = _fixture()
    pred = pred.requires_grad_(True)
    lp, mse = per_sample_log_prob(pred, target, t, weighting=weighting, ghuber_power=0.25)
    assert lp.dtype == torch.float64 and lp.shape == (T, B)
    hand_mse = _np_mse(pred.detach(), target)
    t32 = [[float(np.float32(v)) for v in row] for row in t.tolist()]
    for i in range(T):
        for j in range(B):
            assert mse[i, j].item() == pytest.approx(hand_mse[i][j], rel=1e-12)
            exp_lp, _ = _hand_lp_and_weight(weighting, hand_mse[i][j], t32[i][j])
            assert lp[i, j].item() == pytest.approx(exp_lp, rel=1e-10)
    # gradient of -sum(lp): w_ij * d mse_ij / d pred = w_ij * 2 (pred - target) / CHW
    (-lp.sum()).backward()
    diff = pred.detach().double() - target
    for i in range(T):
        for j in range(B):
            _, w = _hand_lp_and_weight(weighting, hand_mse[i][j], t32[i][j])
            expected = w * 2 * diff[i, j] / CHW
            torch.testing.assert_close(pred.grad[i, j].double(), expected, rtol=1e-5, atol=1e-9)


def test_ghuber_zero_at_zero_error_and_downweights_large_errors() -> None:
    x = torch.zeros(1, 2, 1, 1, 1, dtype=torch.float64)
    tgt = torch.tensor([0.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1, 1)
    lp, _ = per_sample_log_prob(x, tgt, torch.ones(1, 2), weighting="ghuber", ghuber_power=0.25)
    assert lp[0, 0].item() == 0.0
    assert lp[0, 1].item() == pytest.approx(-4 * ((9 + 1e-10) ** 0.25 - 10**-2.5), rel=1e-12)
    # p = 1 reduces to t * mse (up to the 1e-10 constants)
    lp1, _ = per_sample_log_prob(x, tgt, torch.ones(1, 2), weighting="ghuber", ghuber_power=1.0)
    assert lp1[0, 1].item() == pytest.approx(-9.0, rel=1e-9)


def test_target_and_noising_helpers() -> None:
    x0 = torch.tensor([[1.0, 2.0]])
    eps = torch.tensor([[0.5, -1.0]])
    assert flow_matching_target(eps, x0).tolist() == [[-0.5, -3.0]]
    xt = noised_latents(x0, eps, torch.tensor([0.25]))
    assert xt.tolist() == [[0.75 * 1 + 0.25 * 0.5, 0.75 * 2 - 0.25]]


def test_std_dev_t_values() -> None:
    t = torch.tensor([0.5, 1.0, 0.995, 0.1])
    got = std_dev_t(t).tolist()
    exp = [0.7, 0.7 * math.sqrt(1 / 0.01), 0.7 * math.sqrt(0.995 / 0.01), 0.7 * math.sqrt(0.1 / 0.9)]
    assert got == pytest.approx(exp, rel=1e-6)


# ------------------------------------------------------------------------------------ policy loss


def _lp_of(theta: torch.Tensor) -> torch.Tensor:
    """A smooth (T, B) function of theta with distinct per-element gradients."""
    coeff = torch.arange(1, T * B + 1, dtype=torch.float64).view(T, B)
    return -((coeff * theta) ** 2) / 10


@pytest.mark.parametrize("clip_range", [1.0, 1e-4, 0.0])
@pytest.mark.parametrize("loss_type", ["exp_first", "sum_first"])
def test_on_policy_gradient_is_advantage_weighted(loss_type: str, clip_range: float) -> None:
    """rho == 1 ties both max() branches; the full gradient must still flow, whatever the clip."""
    adv = torch.tensor([0.2, -0.5, 0.0])
    theta = torch.full((T, B), 0.3, dtype=torch.float64, requires_grad=True)
    lp = _lp_of(theta)
    loss, info = policy_loss(lp, lp.detach(), adv, clip_range=clip_range, loss_type=loss_type)
    loss.backward()
    # hand: d/dtheta [-mean_{t,i} A_i lp_ti] = -A_i * dlp_ti/dtheta / (T*B), dlp/dtheta = -2 c^2 theta / 10
    coeff = np.arange(1, T * B + 1, dtype=np.float64).reshape(T, B)
    expected = -np.array([0.2, -0.5, 0.0])[None, :] * (-2 * coeff**2 * 0.3 / 10) / (T * B)
    np.testing.assert_allclose(theta.grad.numpy(), expected, rtol=1e-6, atol=1e-12)
    assert loss.item() == pytest.approx(-float(adv.double().mean()), rel=1e-6)
    assert info["clipfrac"].item() == 0.0 and info["approx_kl"].item() == 0.0
    assert info["ratio_mean"].item() == 1.0


def test_exp_first_and_sum_first_equal_on_policy_differ_off_policy() -> None:
    adv = torch.tensor([0.7, -0.3, 0.4])

    def grads(loss_type: str, delta: float):
        theta = torch.full((T, B), 0.3, dtype=torch.float64, requires_grad=True)
        lp = _lp_of(theta)
        old = lp.detach() + delta * torch.tensor(
            [[0.1, -0.05, 0.02], [-0.08, 0.03, 0.06]], dtype=torch.float64
        )
        loss, _ = policy_loss(lp, old, adv, clip_range=10.0, loss_type=loss_type)
        loss.backward()
        return loss.detach(), theta.grad

    l_e, g_e = grads("exp_first", 0.0)
    l_s, g_s = grads("sum_first", 0.0)
    torch.testing.assert_close(g_e, g_s)
    torch.testing.assert_close(l_e, l_s)
    l_e, g_e = grads("exp_first", 1.0)
    l_s, g_s = grads("sum_first", 1.0)
    assert not torch.allclose(g_e, g_s) and not torch.allclose(l_e, l_s)
    # sum_first ratio is exp(mean_t lp - mean_t lp_old): hand-check one loss value
    theta = torch.full((T, B), 0.3, dtype=torch.float64)
    lp = _lp_of(theta)
    old = lp + torch.tensor([[0.1, -0.05, 0.02], [-0.08, 0.03, 0.06]], dtype=torch.float64)
    rho = [math.exp((lp[:, i] - old[:, i]).mean().item()) for i in range(B)]
    hand = sum(-a * r for a, r in zip(adv.tolist(), rho)) / B
    assert l_s.item() == pytest.approx(hand, rel=1e-6)


def test_ratio_clipping_off_policy() -> None:
    c = 0.2
    # one sample, T=1 each: ratios 1.5 (A>0), 1.5 (A<0), 0.5 (A>0), 0.5 (A<0), 1.1 (A>0)
    log_r = torch.tensor(
        [[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.1)]], dtype=torch.float64
    )
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    lp = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    loss, info = policy_loss(lp, (lp - log_r).detach(), adv, clip_range=c, loss_type="exp_first")
    loss.backward()
    # element losses: max(-A r, -A clip(r, 0.8, 1.2))
    hand = [
        max(-a * r, -a * min(max(r, 1 - c), 1 + c)) for a, r in zip(adv.tolist(), [1.5, 1.5, 0.5, 0.5, 1.1])
    ]
    assert loss.item() == pytest.approx(sum(hand) / 5, rel=1e-9)
    # gradient flows only where the unclipped branch wins: d(-A r)/dlp = -A r / 5
    exp_grad = [0.0, 1.5 / 5, -0.5 / 5, 0.0, -1.1 / 5]
    np.testing.assert_allclose(lp.grad[0].numpy(), exp_grad, atol=1e-12)
    assert info["clipfrac"].item() == pytest.approx(4 / 5)
    assert info["approx_kl"].item() == pytest.approx(0.5 * float((log_r**2).mean()), rel=1e-9)


def test_policy_loss_validation() -> None:
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, lp, torch.zeros(2), clip_range=1.0, loss_type="exp_first")
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(lp, lp, torch.zeros(3), clip_range=1.0, loss_type="mean_first")


# ------------------------------------------------------------------------------------ KL terms


def test_velocity_kl_uniform_and_elbo() -> None:
    pred, other, t = _fixture()
    other = other.float()
    mse = _np_mse(pred, other.double())
    uni = velocity_kl(pred, other, t, weighting="Uniform")
    assert uni.dtype == torch.float64
    assert uni.item() == pytest.approx(sum(sum(r) for r in mse) / (T * B), rel=1e-10)
    elbo = velocity_kl(pred, other, t, weighting="ELBO")
    hand = 0.0
    for i in range(T):
        for j in range(B):
            tt = float(np.float32(t[i, j].item()))
            sd = 0.7 * math.sqrt(tt / (1 - min(tt, 0.99)))
            hand += mse[i][j] / (2 * sd * sd)
    assert elbo.item() == pytest.approx(hand / (T * B), rel=1e-6)


def test_velocity_kl_gradient_only_through_pred() -> None:
    pred, other, t = _fixture()
    pred.requires_grad_(True)
    other = other.float().requires_grad_(True)
    velocity_kl(pred, other, t).backward()
    assert other.grad is None
    expected = 2 * (pred.detach().double() - other.detach().double()) / (T * B * CHW)
    torch.testing.assert_close(pred.grad.double(), expected, rtol=1e-6, atol=1e-9)


def test_awm_loss_combination_and_zero_coefficients() -> None:
    pg, kl, ekl = (
        torch.tensor(0.5, dtype=torch.float64),
        torch.tensor(2.0, dtype=torch.float64),
        torch.tensor(3.0, dtype=torch.float64),
    )
    out = awm_loss(pg, kl, ekl, beta=0.1, ema_beta=1.0)
    assert out["loss"].item() == pytest.approx(0.5 + 0.2 + 3.0)
    assert set(out) == {"policy_loss", "kl_loss", "ema_kl_loss", "loss"}
    # trap 9.7: beta = 0 with no reference pass; the EMA term is still applied
    out = awm_loss(pg, None, ekl, beta=0.0, ema_beta=1.0)
    assert out["loss"].item() == pytest.approx(3.5) and out["kl_loss"].item() == 0.0
    out = awm_loss(pg, kl, None, beta=0.1, ema_beta=0.0)
    assert out["loss"].item() == pytest.approx(0.7) and out["ema_kl_loss"].item() == 0.0
    out = awm_loss(pg, torch.tensor(float("nan")), None, beta=0.0, ema_beta=0.0)
    assert out["loss"].item() == 0.5  # a KL computed only for logging is never added
    with pytest.raises(ValueError, match="beta"):
        awm_loss(pg, None, None, beta=0.1, ema_beta=0.0)
    with pytest.raises(ValueError, match="ema_beta"):
        awm_loss(pg, None, None, beta=0.0, ema_beta=1.0)


def test_compute_awm_loss_gradient_matches_hand_formula() -> None:
    """Full on-policy objective, ghuber: grad = mean A t (mse+1e-10)^(p-1) grad mse + beta grad KL."""
    pred, target, t = _fixture()
    ref = pred.detach() + 0.1
    ema = pred.detach() - 0.2
    adv = torch.tensor([0.4, -0.2, 0.1])
    pred.requires_grad_(True)
    out = compute_awm_loss(
        pred,
        target,
        t,
        adv,
        weighting="ghuber",
        ghuber_power=0.25,
        clip_range=1.0,
        loss_type="exp_first",
        beta=0.01,
        ema_beta=1.0,
        pred_ref=ref,
        pred_ema=ema,
    )
    out["loss"].backward()
    mse = _np_mse(pred.detach(), target)
    diff = pred.detach().double() - target
    expected = torch.zeros_like(diff)
    for i in range(T):
        for j in range(B):
            tt = float(np.float32(t[i, j].item()))
            w = tt * (mse[i][j] + 1e-10) ** (0.25 - 1)
            expected[i, j] = adv[j].item() * w * 2 * diff[i, j] / CHW / (T * B)
    expected += 0.01 * 2 * (pred.detach().double() - ref.double()) / (T * B * CHW)
    expected += 1.0 * 2 * (pred.detach().double() - ema.double()) / (T * B * CHW)
    torch.testing.assert_close(pred.grad.double(), expected, rtol=1e-5, atol=1e-10)
    assert out["kl_loss"].item() == pytest.approx(0.01, rel=1e-5)
    assert out["ema_kl_loss"].item() == pytest.approx(0.04, rel=1e-5)
