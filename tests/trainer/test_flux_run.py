"""A tiny FLUX training run (Flow-GRPO's FLUX LoRA set, a non-default distilled guidance): bitwise
resume after `kill -9`, its LoRA exports in FluxPipeline and PEFT, and the evaluation service
generating and scoring its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import yaml

from tests.trainer.conftest import small_config, small_config_dict
from tests.trainer.test_flux import _family
from tests.trainer.test_train import BASE, _final_state, sigkill_then_resume, trained_policy
from trainers.awm.config import MethodName

# every consumer must carry pretrained.guidance (5.0, not the default 3.5) through
FLUX_RUN = {**BASE, "pretrained": {"guidance": 5.0}, "lora": {"type": "attn_ffn"}}


@pytest.fixture(scope="module")
def flux_baseline(tiny_flux_dir, tmp_path_factory):
    import torch

    from trainers.awm.recipe import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("flux-baseline") / "run"
    cfg = small_config(tiny_flux_dir, **FLUX_RUN)
    res = train(cfg, run)
    assert res.status == "completed" and res.global_step == 3
    return cfg, run, res


@pytest.mark.slow
def test_flux_sigkill_mid_run_then_resume_is_bitwise(flux_baseline, tiny_flux_dir, tmp_path):
    _, run0, _ = flux_baseline
    sigkill_then_resume(small_config_dict(tiny_flux_dir, **FLUX_RUN), run0, tmp_path)


def test_flux_lora_exports_load_in_fluxpipeline_and_peft(flux_baseline):
    """The checkpoint's diffusers LoRA loads with FluxPipeline.load_lora_weights and reproduces the trained
    policy's samples; the PEFT export loads with PeftModel; lora_ema differs (weight EMA)."""
    import torch
    from diffusers import FluxPipeline
    from peft import PeftModel

    cfg, run, _ = flux_baseline
    ck = run / "checkpoints" / "step-3"
    fam = trained_policy(cfg, ck, _family(cfg.pretrained.model, guidance=5.0), lora_type="attn_ffn", with_ema=False)
    kw = {"prompt": ["a red cube", "a cat"], "num_inference_steps": 3, "guidance_scale": 5.0, "height": 64,
          "width": 64, "max_sequence_length": 8, "output_type": "latent"}

    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe(generator=torch.Generator().manual_seed(0), **kw).images

    pipe = FluxPipeline.from_pretrained(cfg.pretrained.model)
    pipe.load_lora_weights(str(ck / "lora"))
    got = sample(pipe)
    assert torch.equal(got, sample(fam.pipe))
    assert not torch.allclose(got, sample(FluxPipeline.from_pretrained(cfg.pretrained.model)))
    base = FluxPipeline.from_pretrained(cfg.pretrained.model)
    pm = PeftModel.from_pretrained(base.transformer, str(ck / "lora_peft"))
    x, t = torch.randn(2, *fam.latent_shape(64)), torch.tensor([0.4, 0.9])
    cond = fam.encode_prompts(["a", "b"], max_sequence_length=8)
    with torch.no_grad():
        assert torch.equal(fam.velocity(pm, x, t, cond), fam.velocity(fam.transformer, x, t, cond))
    pe = FluxPipeline.from_pretrained(cfg.pretrained.model)
    pe.load_lora_weights(str(ck / "lora_ema"))
    assert not torch.equal(sample(pe), got)
    assert _final_state(run)[0].path == ck


def test_eval_service_generates_and_scores_a_flux_checkpoint(flux_baseline, isolated_awm_home):
    """`awm eval run <flux checkpoint dir> --benchmarks ocr` (debug executor, real RapidOCR): the run's
    config (its capsule) gives family auto, which the spec records resolved (flux), and the distilled guidance 5.0."""
    import shutil

    from tests.evals.test_cli import TINY, awm_here, ok_json

    cfg, run0, _ = flux_baseline
    run = isolated_awm_home.parent / "flux-run"
    shutil.copytree(run0 / "checkpoints" / "step-3", run / "checkpoints" / "step-3")
    (run / "capsule").mkdir()
    (run / "capsule" / "config.yaml").write_text(yaml.safe_dump(small_config_dict(cfg.pretrained.model, **FLUX_RUN)))
    ckpt = run / "checkpoints" / "step-3"
    out = ok_json(awm_here("eval", "run", str(ckpt), "--benchmarks", "ocr", "--cluster", "debug", "--limit", "2",
                           "--wait", "--json", *TINY, home=isolated_awm_home))
    [rec] = out["evaluations"]
    assert (rec["target"], rec["status"], rec["n"]) == (f"dir:{ckpt}", "COMPLETED", 2), rec
    assert 0.0 <= rec["score"] <= 1.0
    shown = ok_json(awm_here("eval", "show", str(rec["id"]), "--json", home=isolated_awm_home))
    assert (shown["spec"]["family"], shown["spec"]["guidance"], shown["spec"]["num_steps"]) == ("flux", 5.0, 2)
    assert len(list(Path(shown["images_dir"]).glob("*.png"))) >= 2


@pytest.mark.parametrize("method", sorted(set(get_args(MethodName)) - {"awm"}))  # AWM: the tests above
def test_every_selectable_method_trains_on_flux(method, tiny_flux_dir, tmp_path):
    """Each method of the methods seam runs on the tiny FLUX with the settings its own tests use on SD3
    (test_methods_resume.method_config_dict): packed latents, FLUX's grid and the distilled guidance
    go through every method's rollout and loss; every optimizer step moves the LoRA."""
    import math

    from awm_platform.config import config_from_dict
    from tests.trainer.test_methods_resume import EPOCHS, STEPS, method_config_dict
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    res = train(config_from_dict(method_config_dict(tiny_flux_dir, method)), tmp_path / "run")
    assert res.status == "completed" and res.global_step == EPOCHS * STEPS
    rows = [r for r in read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == EPOCHS * STEPS
    assert all(math.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0 for r in rows)
    assert math.isfinite(res.final_metrics["eval/jpeg_compressibility"])
