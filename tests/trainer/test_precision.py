"""Mixed precision on CPU: the fp16 refusal, the fp16 grad scaler across a resume, a bf16 run.

The shipped default is ``pretrained.dtype: fp16`` with ``mixed_precision: fp16`` (GPUs); every other
trainer test runs fp32. On CPU, accelerate creates no grad scaler (it refuses fp16 off an
accelerator, and so does the trainer, first); the scaler test therefore hands the trainer's
Accelerator the same ``torch.amp.GradScaler`` accelerate builds on a GPU, on the CPU device, and
checks that its state goes through the real checkpoint and resume code. (Without fp16, accelerate
does not unscale before gradient clipping; that changes the update, identically in both runs, and
is not what is tested.)
"""

from __future__ import annotations

import json
import math

import pytest

from tests.trainer.conftest import StopAfter, small_config


def test_fp16_is_refused_on_cpu_before_anything_is_written(make_cfg, tmp_path, monkeypatch):
    from trainers.awm.recipe import train

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the same answer on a machine with a GPU
    run = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        train(make_cfg(mixed_precision="fp16"), run)
    msg = str(info.value)
    assert "\n" not in msg and "fp16" in msg and "bf16" in msg, msg  # one line, names the way out
    assert not run.exists()


@pytest.fixture
def cpu_grad_scaler(monkeypatch):
    """Give every Accelerator a CPU GradScaler that doubles its scale after each clean step."""
    import torch
    from accelerate import Accelerator

    real_init = Accelerator.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        assert self.scaler is None
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)

    monkeypatch.setattr(Accelerator, "__init__", init)


def _trainer_state(run):
    from trainers.awm import checkpoint as C

    info = C.find_latest_valid(run)
    return info, C.load_torch(info.path / "state" / "trainer_state.pt")


def test_grad_scaler_and_lr_schedule_survive_resume(tiny_dir, tmp_path, cpu_grad_scaler):
    """Stop after epoch 1 and resume: the scaler state, the LR schedule (cosine over 2 steps, so every
    step has its own LR) and the weights end where an uninterrupted run ends."""
    import torch

    from trainers.awm import checkpoint as C
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    cfg = small_config(tiny_dir, num_epochs=3, train={"lr_scheduler": "cosine_then_constant", "decay_steps": 2})
    r0 = train(cfg, tmp_path / "a")
    assert r0.status == "completed" and r0.global_step == 3
    r1 = train(cfg, tmp_path / "b", stop=StopAfter(1))
    assert r1.status == "interrupted" and r1.global_step == 1
    _, mid = _trainer_state(tmp_path / "b")
    assert mid["scaler"]["scale"] == 2.0**9  # one clean step: 2^8 -> 2^9
    r2 = train(cfg, tmp_path / "b")
    assert r2.status == "completed" and r2.global_step == 3

    (info_a, a), (info_b, b) = _trainer_state(tmp_path / "a"), _trainer_state(tmp_path / "b")
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] == 2.0**11
    assert a["scheduler"] == b["scheduler"]
    lrs = [[r["train/lr"] for r in read_jsonl_metrics(run / "metrics.jsonl") if "train/lr" in r]
           for run in (tmp_path / "a", tmp_path / "b")]
    lr = cfg.train.learning_rate
    assert lrs[0] == lrs[1] == pytest.approx([lr, lr * 2 / 3, lr / 3])
    for rel in ("state/adapters.safetensors", "state/weight_ema.safetensors"):
        ta, tb = C.load_tensors(info_a.path / rel), C.load_tensors(info_b.path / rel)
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta), rel


def test_bf16_autocast_run_on_cpu(make_cfg, tmp_path):
    """bf16 text encoders/VAE and bf16 autocast around the fp32 transformer: finite losses, every
    transformer pass (rollout, training, eval) computes in bf16, and the exported LoRA is fp32, finite
    and trained."""
    import torch
    from safetensors.torch import load_file

    from trainers.awm.recipe import AWMTrainer

    out_dtypes = []
    cfg = make_cfg(num_epochs=1, mixed_precision="bf16", pretrained={"dtype": "bf16"})  # evaluates at the end
    tr = AWMTrainer(cfg, tmp_path / "run")
    try:
        tr.setup()
        assert tr.accelerator.mixed_precision == "bf16" and tr.accelerator.native_amp
        assert tr.family.pipe.text_encoder.dtype == torch.bfloat16 and tr.family.pipe.vae.dtype == torch.bfloat16
        assert tr.family.transformer.dtype == torch.float32  # master weights stay fp32
        tr.unwrapped.proj_out.register_forward_hook(lambda _m, _i, out: out_dtypes.append(out.dtype))
        res = tr.run()
    finally:
        tr.close()
    assert res.status == "completed" and res.global_step == 1
    assert out_dtypes and set(out_dtypes) == {torch.bfloat16}
    for k in ("train/loss", "train/policy_loss", "train/kl_loss", "train/ema_kl_loss", "train/grad_norm",
              "eval/avg", "eval_ema/avg"):
        assert math.isfinite(res.final_metrics[k]), k
    lora = load_file(str(res.last_checkpoint / "lora" / "pytorch_lora_weights.safetensors"))
    assert lora and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in lora.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # B starts at 0: it trained
    manifest = json.loads((res.last_checkpoint / "manifest.json").read_text())
    assert manifest["step"] == 1
