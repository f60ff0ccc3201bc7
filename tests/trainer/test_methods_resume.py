"""Every method other than AWM (whose tests are test_train.py's) on the tiny SD3: it trains, stops
mid-epoch and resumes bitwise (the epoch buffer carries the method's rollout extras), resumes bitwise
after a crash mid-epoch (its rollouts redone from the seeds) and after a real `kill -9`, and its LoRA
loads in diffusers.

Add a method to METHODS (with its overrides of the shared small config) once it is selectable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.conftest import StopAfter, small_config_dict
from tests.trainer.test_train import (
    _assert_bitwise_equal,
    _final_state,
    _metric_keys,
    _train,
    crash_then_resume,
    sigkill_then_resume,
    trained_policy,
)

# method -> overrides of small_config_dict. Two optimizer steps per epoch, so that StopAfter(1) stops
# mid-epoch and the resume needs the checkpointed epoch buffer.
METHODS: dict[str, dict] = {
    "flow_grpo": {"sample": {"zero_std_policy": "keep"}},
    "diffusionnft": {"train": {"nft_beta": 0.5}},  # NFT's defaults otherwise (beta_KL 1e-4: the reference pass runs)
    "advantageflow": {"train": {"af_weighting": "nft_adaptive"}},
}
# small_config_dict's AWM-only keys (a non-default value of a key another method does not read is an error)
_AWM_ONLY = {"train": ("train_timesteps", "timestep_fraction")}
STEPS = 2  # optimizer steps per epoch
EPOCHS = 2


def method_config_dict(model_dir: Path, method: str) -> dict:
    d = small_config_dict(model_dir, method=method, num_epochs=EPOCHS, save_freq=1, eval_freq=2,
                          train={"steps_per_epoch": STEPS}, eval={"at_start": True, "max_prompts": 2})
    for section, keys in _AWM_ONLY.items():
        for k in keys:
            d[section].pop(k, None)
    for section, over in METHODS[method].items():
        d[section] = {**d.get(section, {}), **over} if isinstance(over, dict) else over
    return d


@pytest.fixture(scope="module", params=sorted(METHODS))
def baseline(request, tiny_dir, tmp_path_factory):
    from awm_platform.config import config_from_dict

    method = request.param
    data = method_config_dict(tiny_dir, method)
    cfg = config_from_dict(data)
    run = tmp_path_factory.mktemp(method) / "run"
    res = _train(cfg, run)
    assert res.status == "completed" and res.global_step == EPOCHS * STEPS
    return method, data, cfg, run


def test_trains_and_logs(baseline):
    from trainers.awm.logging import read_jsonl_metrics

    method, _, cfg, run = baseline
    assert cfg.method == method
    rows = [r for r in read_jsonl_metrics(run / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == EPOCHS * STEPS
    assert all(r["train/grad_norm"] > 0 for r in rows)  # every step moved the LoRA
    assert max(_metric_keys(run).values()) == 1


def test_mid_epoch_stop_then_resume_is_bitwise(baseline, tmp_path):
    import json

    _, _, cfg, run0 = baseline
    run = tmp_path / "run"
    r1 = _train(cfg, run, stop=StopAfter(1))
    assert r1.status == "interrupted" and r1.global_step == 1
    m = json.loads((run / "checkpoints" / "step-1" / "manifest.json").read_text())
    assert m["mid_epoch"] and m["step_in_epoch"] == 1
    r2 = _train(cfg, run)
    assert r2.status == "completed" and r2.global_step == EPOCHS * STEPS
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])
    assert set(_metric_keys(run)) == set(_metric_keys(run0)) and max(_metric_keys(run).values()) == 1


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise(baseline, tmp_path):
    """AWM's kill test for every method: a real `kill -9` of `awm train` once epoch 1's checkpoint is
    on disk; the rerun resumes (the method's extra state from the checkpoint, epoch 2's rollouts from
    the seeds) and ends bitwise equal to the uninterrupted run."""
    _, data, _, run0 = baseline
    sigkill_then_resume(data, run0, tmp_path, first_step=STEPS, last_step=EPOCHS * STEPS)


def test_crash_mid_epoch_then_resume_is_bitwise(baseline, tmp_path, monkeypatch):
    """A crash in epoch 2 after its first optimizer step: the rerun resumes from the end-of-epoch-1
    checkpoint and redoes epoch 2's rollouts (the method's sampler, its noise and Fast windows, must be
    reproduced from the seeds), ending bitwise equal to the uninterrupted run."""
    _, _, cfg, run0 = baseline
    run = tmp_path / "run"
    # epoch 2: rollouts done, one step taken, checkpoint step-2 on disk
    r = crash_then_resume(cfg, run, monkeypatch, at_step=STEPS + 1)
    assert r.status == "completed" and r.global_step == EPOCHS * STEPS
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])
    assert max(_metric_keys(run).values()) == 1


def test_lora_loads_in_diffusers(baseline):
    import torch
    from diffusers import StableDiffusion3Pipeline

    from trainers.awm import checkpoint as C
    from trainers.awm import lora as L

    _, _, cfg, run = baseline
    ck = C.find_latest_valid(run).path
    fam = trained_policy(cfg, ck)
    pipe = StableDiffusion3Pipeline.from_pretrained(cfg.pretrained.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(ck / "lora"))
    x, t = torch.randn(2, *fam.latent_shape(64)), torch.tensor([0.4, 0.9])
    cond = fam.encode_prompts(["a", "b"], max_sequence_length=8)
    with torch.no_grad():
        got = fam.velocity(pipe.transformer, x, t, cond)
        want = fam.velocity(fam.transformer, x, t, cond)
        with L.adapters_disabled(fam.transformer):
            base = fam.velocity(fam.transformer, x, t, cond)
    assert torch.equal(got, want) and not torch.equal(got, base)


def test_flow_grpo_cfg_in_training_and_fast_window(tiny_dir, tmp_path):
    """CFG in rollout and training (train.cfg) and a Fast window: the first step of an epoch is on-policy
    (ratio 1, nothing clipped: the training forward recomputes the rollout's CFG velocity), and only the
    window's transitions are kept."""
    from awm_platform.config import config_from_dict
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import AWMTrainer

    d = method_config_dict(tiny_dir, "flow_grpo")
    d.update(num_epochs=1, save_freq=5)
    d["eval"]["at_start"] = False
    d["sample"].update(guidance_scale=3.0, sde_window_size=2, sde_window_range=[1, 4])
    d["train"].update(cfg=True, beta=0.04)
    cfg = config_from_dict(d)
    tr = AWMTrainer(cfg, tmp_path / "run")
    try:
        tr.setup()
        buf, _ = tr.rollout(0)
        steps = buf.extras["step_index"]
        assert steps.shape == (len(buf.x0), 2) and int(steps.min()) >= 1 and int(steps.max()) <= 3
        res = tr.run()
    finally:
        tr.close()
    assert res.status == "completed" and res.global_step == STEPS
    first = next(r for r in read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl") if "train/ratio_mean" in r)
    assert first["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5) and first["train/clipfrac"] == 0.0
    assert first["train/kl_loss"] >= 0.0 and first["train/grad_norm"] > 0
