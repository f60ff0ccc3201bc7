"""Tiny pipeline, loading, LoRA targets and export formats."""

from __future__ import annotations

import pytest


def test_tiny_pipeline_generates():
    import numpy as np
    import torch

    from trainers.awm.tiny import make_tiny_pipeline, transformer_num_params

    pipe = make_tiny_pipeline()
    assert transformer_num_params(pipe) < 150_000
    out = pipe(["a red cube", "a cat"], num_inference_steps=2, guidance_scale=1.0, height=64, width=64,
               max_sequence_length=8, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all()


def test_make_tiny_dir_loads(tiny_dir):
    import torch
    from diffusers import StableDiffusion3Pipeline

    from trainers.awm.model import SD3Family

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dir)
    assert pipe.vae_scale_factor == 2 and pipe.scheduler.config.shift == 3.0
    fam = SD3Family.load(str(tiny_dir))
    assert fam.latent_shape(64) == (4, 32, 32) and fam.flow_shift == 3.0
    cond = fam.encode_prompts(["a red cube"], max_sequence_length=8)
    v = fam.velocity(fam.transformer, torch.zeros(1, 4, 32, 32), torch.tensor([0.5]), cond)
    assert v.shape == (1, 4, 32, 32)
    assert fam.decode(torch.zeros(1, 4, 32, 32))[0].size == (64, 64)


def test_missing_model_gives_clear_error(tmp_path):
    from trainers.awm.model import ModelLoadError, SD3Family

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as ei:
        SD3Family.load(str(missing))
    msg = str(ei.value)
    assert str(missing) in msg and "make-tiny" in msg and "huggingface-cli download" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        SD3Family.load(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="some-org/some-model"):  # hub id, offline in tests
        SD3Family.load("some-org/some-model")


def test_cli_make_tiny_dual_attention_and_attn2_targets(tmp_path):
    from typer.testing import CliRunner

    from awm_platform.cli.main import app
    from trainers.awm import lora as L
    from trainers.awm.model import SD3Family

    res = CliRunner().invoke(app, ["model", "make-tiny", str(tmp_path / "dual"), "--dual-attention"])
    assert res.exit_code == 0, res.output
    fam = SD3Family.load(str(tmp_path / "dual"))
    assert fam.has_dual_attention()
    for include, expect in ((False, False), (True, True)):
        fam = SD3Family.load(str(tmp_path / "dual"))
        cfg = L.make_lora_config(rank=2, alpha=4, init="gaussian",
                                 target_modules=fam.lora_target_modules("attn", include))
        L.add_policy_adapters(fam.transformer, cfg)
        names = list(L.adapter_params(fam.transformer, L.POLICY))
        assert any(".attn.to_q." in n for n in names)
        assert any(".attn2." in n for n in names) is expect


def test_lora_adapters_reference_and_export_roundtrip(tmp_path):
    """alpha != r survives the diffusers export (metadata); PEFT export loads with peft;
    adapters disabled == base model; the "ema" adapter starts as a copy of "default"."""
    import torch
    from peft import PeftModel

    from trainers.awm import lora as L
    from trainers.awm.model import SD3Family
    from trainers.awm.tiny import make_tiny_pipeline

    fam = SD3Family(make_tiny_pipeline())
    tr = fam.transformer
    L.add_policy_adapters(tr, L.make_lora_config(rank=4, alpha=16, init="gaussian",
                                                 target_modules=fam.lora_target_modules("attn", False)))
    x, t = torch.randn(2, *fam.latent_shape(64)), torch.tensor([0.3, 0.8])
    cond = fam.encode_prompts(["a", "b"], max_sequence_length=8)
    with torch.no_grad():
        base = fam.velocity(tr, x, t, cond)
        for p in L.adapter_params(tr, L.POLICY).values():
            p.add_(0.05 * torch.randn_like(p))
        live = fam.velocity(tr, x, t, cond)
        with L.adapters_disabled(tr):
            ref = fam.velocity(tr, x, t, cond)
        with L.using_adapter(tr, L.EMA):
            ema = fam.velocity(tr, x, t, cond)
    assert torch.equal(ref, base) and torch.equal(ema, base) and not torch.allclose(live, base)
    assert all(p.requires_grad for p in L.adapter_params(tr, L.POLICY).values())
    assert not any(p.requires_grad for p in L.adapter_params(tr, L.EMA).values())

    sd = L.peft_state_dict(tr)
    L.save_diffusers(tmp_path / "lora", sd, L.adapter_metadata(tr))
    L.save_peft(tmp_path / "peft", sd, tr.peft_config[L.POLICY])
    p2 = make_tiny_pipeline()
    p2.load_lora_weights(str(tmp_path / "lora"))
    assert p2.transformer.peft_config["default_0"].lora_alpha == 16
    p3 = make_tiny_pipeline()
    pm = PeftModel.from_pretrained(p3.transformer, str(tmp_path / "peft"))
    with torch.no_grad():
        assert torch.equal(fam.velocity(p2.transformer, x, t, cond), live)
        assert torch.equal(fam.velocity(pm, x, t, cond), live)
    # and back into an adapter (train.lora_path)
    fam4 = SD3Family(make_tiny_pipeline())
    L.add_policy_adapters(fam4.transformer, L.make_lora_config(rank=4, alpha=16, init="gaussian",
                                                               target_modules=fam.lora_target_modules("attn", False)))
    for src in (tmp_path / "lora", tmp_path / "peft"):
        L.load_into_adapter_(fam4.transformer, src)
        with torch.no_grad():
            assert torch.equal(fam.velocity(fam4.transformer, x, t, cond), live)
    bad = L.make_lora_config(rank=4, alpha=8, init="gaussian", target_modules=fam.lora_target_modules("attn", False))
    fam5 = SD3Family(make_tiny_pipeline())
    L.add_policy_adapters(fam5.transformer, bad)
    with pytest.raises(ValueError, match="lora_alpha"):
        L.load_into_adapter_(fam5.transformer, tmp_path / "lora")
