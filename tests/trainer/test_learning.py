"""AWM actually learns on the tiny model, and a large KL-to-reference keeps it near the base."""

from __future__ import annotations

import pytest

from tests.trainer.conftest import small_config

LEARN = {
    "seed": 0, "num_epochs": 20, "save_freq": 100, "eval_freq": 100, "eval": {"at_start": True, "max_prompts": 8},
    "lora": {"rank": 16, "alpha": 32, "target_modules": [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out",
        "pos_embed.proj"]},
    "sample": {"num_steps": 6, "eval_num_steps": 6, "num_image_per_prompt": 8, "prompts_per_epoch": 4,
            "max_batch_size_per_gpu": 32, "test_batch_size": 8, "max_sequence_length": 16},
    "train": {"batch_size": 16, "train_timesteps": 3, "learning_rate": 2e-2, "timestep_fraction": 0.9},
}


@pytest.mark.slow
def test_awm_raises_jpeg_compressibility(tiny_dir, tmp_path):
    import numpy as np

    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    res = train(small_config(tiny_dir, **LEARN), tmp_path / "run")
    assert res.status == "completed"
    rows = read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")
    ev = {r["step"]: r["eval/jpeg_compressibility"] for r in rows if "eval/jpeg_compressibility" in r}
    tr = [r["train/reward_jpeg_compressibility"] for r in rows if "train/reward_jpeg_compressibility" in r]
    print("eval", ev, "train", [round(x, 3) for x in tr])
    # fixed eval seeds: same prompts and noise at step 0 and step 20
    assert ev[20] - ev[0] > 0.03, ev
    assert np.mean(tr[-5:]) - np.mean(tr[:5]) > 0.02, tr


def _output_shift(cfg, ck):
    """RMS of v_policy - v_reference on a fixed batch, from the saved training state."""
    import torch

    from trainers.awm import checkpoint as C
    from trainers.awm import lora as L
    from trainers.awm.model import SD3Family

    fam = SD3Family.load(cfg.pretrained.model)
    L.add_policy_adapters(fam.transformer, L.make_lora_config(
        rank=cfg.lora.rank, alpha=cfg.lora.alpha, init="gaussian",
        target_modules=fam.lora_target_modules("attn", False)), with_ema=False)
    state = C.load_tensors(ck / "state" / "adapters.safetensors")
    with torch.no_grad():
        for n, p in fam.transformer.named_parameters():
            if n in state:
                p.copy_(state[n])
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, *fam.latent_shape(64), generator=g)
        t = torch.tensor([0.2, 0.5, 0.7, 0.95])
        cond = fam.encode_prompts(["a red cube", "a cat", "a tall tree", "a black car"], max_sequence_length=8)
        v = fam.velocity(fam.transformer, x, t, cond)
        with L.adapters_disabled(fam.transformer):
            v0 = fam.velocity(fam.transformer, x, t, cond)
    return float((v - v0).pow(2).mean().sqrt())


@pytest.mark.slow
def test_large_beta_stays_near_reference(tiny_dir, tmp_path):
    from trainers.awm.recipe import train

    shifts = {}
    for beta in (0.0, 1e4):
        cfg = small_config(tiny_dir, num_epochs=8, save_freq=100,
                           train={"beta": beta, "ema_beta": 0.0, "learning_rate": 1e-2})
        res = train(cfg, tmp_path / f"b{beta}")
        shifts[beta] = _output_shift(cfg, res.last_checkpoint)
    print("shifts", shifts)
    assert shifts[0.0] > 0 and shifts[1e4] < 0.25 * shifts[0.0], shifts
