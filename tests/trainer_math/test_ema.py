"""Weight EMA and KL-EMA adapter (spec 1.9, 2.6) against float64 hand loops."""

from __future__ import annotations

import pytest
import torch

from trainers.awm.ema import WeightEMA, kl_ema_mixing, update_ema_adapter_, weight_ema_decay


def test_weight_ema_decay_schedule() -> None:
    assert weight_ema_decay(0, 0.99) == pytest.approx(0.1)
    assert weight_ema_decay(1, 0.99) == pytest.approx(2 / 11)
    assert weight_ema_decay(89, 0.99) == pytest.approx(90 / 99)
    assert weight_ema_decay(890, 0.99) == 0.99  # (891/900 = 0.99) capped
    assert weight_ema_decay(10_000, 0.99) == 0.99
    assert weight_ema_decay(5, 0.3) == 0.3


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "blk.lora_A.weight": torch.randn(4, 3, generator=g),
        "blk.lora_B.weight": torch.randn(3, 4, generator=g),
    }


def test_update_matches_hand_loop_and_interval() -> None:
    live = _params()
    ema = WeightEMA(live, max_decay=0.99, update_interval=2)
    hand = {k: v.double().clone() for k, v in live.items()}
    for step in range(1, 9):
        for v in live.values():
            v.add_(0.1 * step)  # "optimizer step"
        decay = ema.update(live, step)
        if (step + 1) % 2 == 0:
            d = min((1 + step) / (10 + step), 0.99)
            assert decay == pytest.approx(d)
            for k, h in hand.items():
                hand[k] = h + (1 - d) * (live[k].double() - h)
        else:
            assert decay is None
    for k, h in hand.items():
        assert ema.shadow[k].dtype == torch.float32
        torch.testing.assert_close(ema.shadow[k].double(), h, rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 4


def test_positional_and_named_parameter_forms() -> None:
    live = _params()
    by_pos = WeightEMA(list(live.values()))
    by_name = WeightEMA(list(live.items()))
    for v in live.values():
        v.mul_(2)
    by_pos.update(list(live.values()), 3)
    by_name.update(live, 3)
    for a, b in zip(by_pos.shadow.values(), by_name.shadow.values()):
        assert torch.equal(a, b)
    with pytest.raises(KeyError):
        by_name.update({"other": torch.zeros(4, 3), "blk.lora_B.weight": torch.zeros(3, 4)}, 3)
    with pytest.raises(ValueError, match="shape"):
        by_pos.update([torch.zeros(4, 3), torch.zeros(4, 4)], 3)


def test_state_dict_roundtrip_is_bitwise(tmp_path) -> None:
    live = _params()
    ema = WeightEMA(live, max_decay=0.99)
    for step in range(1, 4):
        for v in live.values():
            v.add_(torch.randn(v.shape, generator=torch.Generator().manual_seed(step)))
        ema.update(live, step)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    resumed = WeightEMA(_params(seed=5), max_decay=0.5)  # different init and config
    resumed.load_state_dict(torch.load(tmp_path / "ema.pt"))
    assert resumed.max_decay == 0.99 and resumed.num_updates == 3
    for step in range(4, 7):
        for v in live.values():
            v.add_(0.01)
        ema.update(live, step)
        resumed.update(live, step)
    for k in ema.shadow:
        assert torch.equal(ema.shadow[k], resumed.shadow[k])
    bad = ema.state_dict()
    bad["shadow"].pop("blk.lora_A.weight")
    with pytest.raises(KeyError, match="missing"):
        resumed.load_state_dict(bad)


def test_swapped_in_restores_bit_exactly_even_on_error() -> None:
    live = {k: v.to(torch.bfloat16) for k, v in _params().items()}
    ema = WeightEMA(live)
    before = {k: v.clone() for k, v in live.items()}
    for v in live.values():
        v.add_(1.0)
    ema.update(live, 5)
    after_step = {k: v.clone() for k, v in live.items()}
    with ema.swapped_in(live):
        for k, v in live.items():
            assert torch.equal(v, ema.shadow[k].to(torch.bfloat16))
            assert not torch.equal(v, after_step[k])
    for k, v in live.items():
        assert torch.equal(v, after_step[k])
    with pytest.raises(RuntimeError, match="boom"), ema.swapped_in(live):
        raise RuntimeError("boom")
    for k, v in live.items():
        assert torch.equal(v, after_step[k])
    assert not torch.equal(live["blk.lora_A.weight"], before["blk.lora_A.weight"])


def test_copy_to() -> None:
    live = _params()
    ema = WeightEMA(live)
    target = {k: torch.zeros_like(v) for k, v in live.items()}
    ema.copy_to(target)
    for k, v in live.items():
        assert torch.equal(target[k], v)


def test_kl_ema_mixing() -> None:
    assert kl_ema_mixing(0, 0.3, "linear") == 0.0
    assert kl_ema_mixing(1, 0.3, "linear") == pytest.approx(0.001)
    assert kl_ema_mixing(150, 0.3, "linear") == pytest.approx(0.15)
    assert kl_ema_mixing(300, 0.3, "linear") == pytest.approx(0.3)
    assert kl_ema_mixing(5000, 0.3, "linear") == 0.3
    assert kl_ema_mixing(3, 0.3, "constant") == 0.3
    with pytest.raises(ValueError, match="kl_ema_decay_type"):
        kl_ema_mixing(3, 0.3, "cosine")
    with pytest.raises(ValueError, match="kl_ema_decay"):
        kl_ema_mixing(3, 1.3, "linear")


def test_update_ema_adapter_factorwise() -> None:
    a_ema, b_ema = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]])
    a_pol, b_pol = torch.tensor([[5.0, -2.0]]), torch.tensor([[1.0], [0.0]])
    update_ema_adapter_([a_ema, b_ema], [a_pol, b_pol], 0.25)
    assert a_ema.tolist() == [[0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * -2]]
    assert b_ema.tolist() == [[0.25 * 3 + 0.75 * 1], [0.25 * 4 + 0.75 * 0]]
    # factor-wise: EMA(B) EMA(A) != EMA(BA) in general (trap 9.18)
    prod_of_ema = b_ema @ a_ema
    ema_of_prod = 0.25 * (torch.tensor([[3.0], [4.0]]) @ torch.tensor([[1.0, 2.0]])) + 0.75 * (b_pol @ a_pol)
    assert not torch.allclose(prod_of_ema, ema_of_prod)
    # d = 0 copies the policy (early training), d = 1 freezes
    x, p = torch.ones(3), torch.arange(3.0)
    update_ema_adapter_([x], [p], 0.0)
    assert torch.equal(x, p)
    update_ema_adapter_([x], [torch.zeros(3)], 1.0)
    assert torch.equal(x, p)
    with pytest.raises(ValueError, match="shape"):
        update_ema_adapter_([torch.ones(2)], [torch.ones(3)], 0.5)
    with pytest.raises(ValueError, match="2 EMA-adapter tensors vs 1"):
        update_ema_adapter_([torch.ones(2), torch.ones(2)], [torch.ones(2)], 0.5)


def test_update_ema_adapter_on_parameters_keeps_them_leaf() -> None:
    e = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    p = torch.nn.Parameter(torch.zeros(2))
    update_ema_adapter_([e], [p], 0.3)
    assert e.is_leaf and e.grad_fn is None
    assert e.tolist() == pytest.approx([0.3, 0.3])
