"""The FLUX family on the tiny random FLUX pipeline (objectives.md section 4): the seam against
diffusers' own FluxPipeline, `make-tiny --family flux`, family detection, LoRA targets, learning.
The trained-run tests (resume after a kill, LoRA exports, the evaluation service) are in
test_flux_run.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import small_config


def _family(model_dir: Path, **kw):
    from trainers.awm.model import load_family

    return load_family("auto", str(model_dir), **kw)


def test_make_tiny_cli_and_family_detection(tiny_flux_dir, tiny_dir, tmp_path):
    """`awm model make-tiny DIR --family flux` writes a FluxPipeline folder; `pretrained.family: auto`
    reads model_index.json; a wrong explicit family and a guidance the model has no embedding for are
    one clear error each; bad CLI input exits 2."""
    from diffusers import FluxPipeline
    from typer.testing import CliRunner

    from awm_platform.cli.main import app
    from trainers.awm.config import TrainerConfig
    from trainers.awm.model import FluxFamily, ModelLoadError, SD3Family, resolve_family

    res = CliRunner().invoke(app, ["model", "make-tiny", str(tmp_path / "f"), "--family", "flux"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "f" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert FluxPipeline.from_pretrained(tmp_path / "f").transformer.config.guidance_embeds
    for bad, msg in ((["--family", "flux9"], "--family 'flux9'"), (["--family", "flux", "--dual-attention"], "attn2"),
                     (["--family", "flux", "--preset", "huge"], "unknown preset 'huge'")):
        res = CliRunner().invoke(app, ["model", "make-tiny", str(tmp_path / "g"), *bad])
        assert res.exit_code == 2 and "error: " in res.output and msg in res.output, res.output
        assert not (tmp_path / "g").exists()

    assert TrainerConfig().pretrained.family == "auto"
    assert resolve_family("auto", str(tiny_flux_dir)) == "flux" and resolve_family("auto", str(tiny_dir)) == "sd3"
    assert isinstance(_family(tiny_flux_dir), FluxFamily) and isinstance(_family(tiny_dir), SD3Family)
    with pytest.raises(ModelLoadError, match="pretrained.family='sd3' but .* is a FluxPipeline .*family 'flux'"):
        resolve_family("sd3", str(tiny_flux_dir))
    with pytest.raises(ModelLoadError, match="pretrained.guidance=2.0 .* SD3 pipeline"):
        _family(tiny_dir, guidance=2.0)
    with pytest.raises(ModelLoadError, match="no such directory"):
        _family(tmp_path / "nope")


def test_flux_family_is_fluxpipeline(tiny_flux_dir):
    """Text encoding, the dynamic-shift grid, packed latents + ids, timestep = sigma, guidance, the Euler
    ODE and VAE decode (scale + shift, unpacking) give FluxPipeline's own latents and pixels; the eval
    service's ImageGenerator makes the same images from its per-image seeds."""
    import numpy as np
    import torch
    from diffusers import FluxPipeline

    from trainers.awm.generate import ImageGenerator, image_seed
    from trainers.awm.samplers import euler_sample, randn_per_sample

    fam = _family(tiny_flux_dir)
    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cube", "a cat on a mat"]
    cond = fam.encode_prompts(prompts, max_sequence_length=8)
    with torch.no_grad():
        pe, pooled, txt_ids = pipe.encode_prompt(prompts, None, max_sequence_length=8)
    assert torch.equal(cond.prompt_embeds, pe) and torch.equal(cond.pooled, pooled)
    assert pooled.shape == (2, 16) and txt_ids.shape == (8, 3)  # CLIPTextModel pooler_output; 2-D ids

    assert fam.latent_shape(64) == (256, 16) and fam.time_shift_mu(64) == pytest.approx(0.5)
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 4, 4), mu=fam.time_shift_mu(64))
    assert torch.equal(fam.sigmas(4, 64), pipe.scheduler.sigmas)
    seeds = [image_seed(0, i, 0) for i in range(2)]
    lat = randn_per_sample((2, *fam.latent_shape(64)), [torch.Generator().manual_seed(s) for s in seeds],
                           device=torch.device("cpu"), dtype=torch.float32)
    unpacked = fam.unpack(lat)
    assert unpacked.shape == (2, 4, 32, 32) and torch.equal(fam.pack(unpacked), lat)
    with torch.no_grad():
        ours = euler_sample(lambda x, t: fam.velocity(fam.transformer, x, t, cond), lat, fam.sigmas(4, 64)).x0
    kw = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled, "num_inference_steps": 4, "guidance_scale": 3.5,
          "height": 64, "width": 64}
    theirs = pipe(latents=lat.clone(), output_type="latent", **kw).images
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    want = [np.asarray(im, dtype=np.int16) for im in pipe(latents=lat.clone(), output_type="pil", **kw).images]
    got = [np.asarray(im, dtype=np.int16) for im in fam.decode(ours)]
    assert all(np.abs(g - w).max() <= 1 for g, w in zip(got, want, strict=True))

    gen = ImageGenerator.load(str(tiny_flux_dir), revision=None, family="auto", precision="fp32", device="cpu")
    imgs = gen.generate(prompts, seeds, num_steps=4, guidance_scale=1.0, resolution=64, max_sequence_length=8)
    assert all(np.abs(np.asarray(i, dtype=np.int16) - w).max() <= 1 for i, w in zip(imgs, want, strict=True))
    # the distilled guidance is pretrained.guidance (default 3.5) and reaches the transformer
    x, t = lat[:1], torch.tensor([0.6])
    with torch.no_grad():
        g5 = _family(tiny_flux_dir, guidance=5.0)
        v5 = g5.velocity(g5.transformer, x, t, cond.index(slice(0, 1)))
        direct = fam.transformer(hidden_states=x, timestep=t, guidance=torch.tensor([5.0]),
                                 pooled_projections=pooled[:1], encoder_hidden_states=pe[:1], txt_ids=txt_ids,
                                 img_ids=fam.img_ids(256, "cpu"), return_dict=False)[0]
        v35 = fam.velocity(fam.transformer, x, t, cond.index(slice(0, 1)))
    assert torch.equal(v5, direct) and not torch.allclose(v5, v35)


def test_flux_lora_targets_are_flow_grpos(tiny_flux_dir):
    """objectives.md 4.3: attn_ffn adapts all 12 linear layers of each double block and only attn.to_q/k/v
    of each single block (proj_mlp, proj_out, norm.linear stay frozen)."""
    from trainers.awm import lora as L

    fam = _family(tiny_flux_dir)
    L.add_policy_adapters(fam.transformer, L.make_lora_config(
        rank=2, alpha=4, init="gaussian", target_modules=fam.lora_target_modules("attn_ffn", False)), with_ema=False)
    mods = {n.split(".lora_A")[0] for n in L.adapter_params(fam.transformer, L.POLICY) if ".lora_A." in n}
    double = {m.removeprefix("transformer_blocks.0.") for m in mods if m.startswith("transformer_blocks.0.")}
    single = {m.removeprefix("single_transformer_blocks.0.") for m in mods if m.startswith("single_transformer_blocks.0.")}
    assert len(double) == 12 and {"attn.to_q", "attn.add_k_proj", "attn.to_add_out", "ff_context.net.2"} <= double
    assert single == {"attn.to_q", "attn.to_k", "attn.to_v"}


@pytest.mark.slow
def test_awm_on_flux_raises_jpeg_compressibility(tiny_flux_dir, tmp_path):
    """The quickstart reward learns on FLUX as on SD3 (test_learning.py): fixed eval seeds, 10 epochs.
    Measured: eval -3.79 -> -3.69 (+0.10), train +0.07 (seeds 0 and 1)."""
    import numpy as np

    from tests.trainer.test_learning import LEARN
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    # FLUX has no pos_embed.proj: its patch embedding is x_embedder (quickstart's reach otherwise)
    targets = [t for t in LEARN["lora"]["target_modules"] if t != "pos_embed.proj"] + ["x_embedder"]
    res = train(small_config(tiny_flux_dir, **{**LEARN, "num_epochs": 10, "lora": {**LEARN["lora"], "target_modules": targets}}),
                tmp_path / "run")
    assert res.status == "completed"
    rows = read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")
    ev = {r["step"]: r["eval/jpeg_compressibility"] for r in rows if "eval/jpeg_compressibility" in r}
    tr = [r["train/reward_jpeg_compressibility"] for r in rows if "train/reward_jpeg_compressibility" in r]
    print("eval", ev, "train", [round(x, 3) for x in tr])
    assert ev[10] - ev[0] > 0.04, ev
    assert np.mean(tr[-3:]) - np.mean(tr[:3]) > 0.03, tr




def test_gradient_checkpointing_is_exact_and_a_bf16_base_trains_fp32_lora(tiny_flux_dir, tmp_path):
    """The configs' memory settings: train.gradient_checkpointing changes nothing but memory (bitwise
    equal LoRA after an epoch); pretrained.transformer_dtype=bf16 stores the base in bf16 while the
    LoRA (and so the optimizer) stays fp32; it needs bf16 mixed precision (one clear config error)."""
    import torch

    from trainers.awm import checkpoint as C
    from trainers.awm.recipe import AWMTrainer, train

    states = []
    for over in ({}, {"train": {"gradient_checkpointing": True}}):
        res = train(small_config(tiny_flux_dir, num_epochs=1, **over), tmp_path / f"run{len(states)}")
        states.append(C.load_tensors(res.last_checkpoint / "state" / "adapters.safetensors"))
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(v.abs().sum() > 0 for k, v in states[0].items() if "lora_B" in k)  # it did train

    cfg = small_config(tiny_flux_dir, num_epochs=1, mixed_precision="bf16",
                       pretrained={"transformer_dtype": "bf16"}, train={"gradient_checkpointing": True})
    tr = AWMTrainer(cfg, tmp_path / "bf16")
    try:
        tr.setup()
        res = tr.run()
        dtypes = {n: p.dtype for n, p in tr.unwrapped.named_parameters()}
    finally:
        tr.close()
    assert res.status == "completed" and torch.isfinite(torch.tensor(res.final_metrics["train/loss"]))
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    with pytest.raises(ValueError, match="transformer_dtype=bf16 needs mixed_precision=bf16"):
        small_config(tiny_flux_dir, pretrained={"transformer_dtype": "bf16"})


@pytest.mark.parametrize("name", ["flux_geneval_8gpu", "flux_ocr_8gpu", "flux_pickscore_8gpu", "sd35l_geneval_8gpu"])
def test_flux_and_sd35l_configs_validate_and_show_at_8_gpus(name, repo_root):
    """The shipped 8-GPU configs: `awm config show --world-size 8` derives their topology, and their
    training times fit the rollout grid they will sample (strata are checked only when training starts)."""
    import torch
    from typer.testing import CliRunner

    from awm_platform.cli.main import app
    from awm_platform.config import load_config
    from trainers.awm.samplers import flow_sigmas, flux_mu, flux_sigmas
    from trainers.awm.timesteps import sample_training_times

    path = repo_root / "configs" / f"{name}.yaml"
    res = CliRunner().invoke(app, ["config", "show", str(path), "--world-size", "8"])
    assert res.exit_code == 0, res.output
    assert "world_size: 8" in res.output and "gradient_accumulation_steps:" in res.output
    cfg = load_config(path)
    assert cfg.train.gradient_checkpointing
    if name.startswith("flux"):
        assert (cfg.pretrained.family, cfg.mixed_precision, cfg.pretrained.transformer_dtype) == ("flux", "bf16", "bf16")
        assert (cfg.lora.type, cfg.lora.rank, cfg.lora.alpha, cfg.sample.num_steps) == ("attn_ffn", 64, 128, 6)
        grid = flux_sigmas(cfg.sample.num_steps, flux_mu((cfg.resolution // 16) ** 2))  # FLUX.1: VAE /8, 2x2 packing
    else:
        assert cfg.pretrained.model.endswith("stable-diffusion-3.5-large")
        grid = flow_sigmas(cfg.sample.num_steps, 3.0)
    t = sample_training_times(cfg.time_type, grid=grid[:-1], num_train_timesteps=cfg.train.train_timesteps,
                              timestep_fraction=cfg.train.timestep_fraction, batch_size=cfg.train.batch_size,
                              time_shift=cfg.time_shift, generator=torch.Generator().manual_seed(0))
    assert t.shape == (cfg.train.train_timesteps, cfg.train.batch_size)
