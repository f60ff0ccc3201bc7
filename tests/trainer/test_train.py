"""The AWM loop end to end on the tiny model: layout, resume (bitwise), stop, exports, variants."""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from tests.trainer.conftest import StopAfter, small_config


def _final_state(run_dir: Path):
    from trainers.awm import checkpoint as C

    info = C.find_latest_valid(run_dir)
    state = dict(C.load_tensors(info.path / "state" / "adapters.safetensors"))
    wema = info.path / "state" / "weight_ema.safetensors"
    if wema.exists():
        state.update({"wema." + k: v for k, v in C.load_tensors(wema).items()})
    opt = C.load_torch(info.path / "state" / "optimizer.pt")
    for pid, st in opt["state"].items():
        for k, v in st.items():
            state[f"opt.{pid}.{k}"] = v
    return info, state


def _assert_bitwise_equal(a: dict, b: dict):
    import torch

    assert set(a) == set(b)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def _metric_keys(run_dir: Path) -> Counter:
    from trainers.awm.logging import read_jsonl_metrics

    c: Counter = Counter()
    for row in read_jsonl_metrics(run_dir / "metrics.jsonl"):
        for k in row:
            if k != "step":
                c[(row["step"], k)] += 1
    return c


def _train(cfg, run_dir, **kw):
    import torch

    from trainers.awm.recipe import train

    torch.set_num_threads(1)
    return train(cfg, run_dir, **kw)


BASE = {"num_epochs": 3, "save_freq": 1, "eval_freq": 2, "eval": {"at_start": True, "max_prompts": 2}}


@pytest.fixture(scope="module")
def baseline(tiny_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("baseline") / "run"
    cfg = small_config(tiny_dir, **BASE)
    res = _train(cfg, run)
    return cfg, run, res


def test_layout_metrics_and_eval_files(baseline):
    from trainers.awm import checkpoint as C

    cfg, run, res = baseline
    assert res.status == "completed" and res.global_step == 3 and res.epoch == 3
    assert res.last_checkpoint == run / "checkpoints" / "step-3"
    assert [s for s, _ in C.list_step_dirs(run)] == [1, 2, 3]
    ck = run / "checkpoints" / "step-3"
    for rel in ("lora/pytorch_lora_weights.safetensors", "lora_peft/adapter_config.json",
                "lora_peft/adapter_model.safetensors", "lora_ema/pytorch_lora_weights.safetensors",
                "state/optimizer.pt", "state/trainer_state.pt", "state/adapters.safetensors",
                "state/weight_ema.safetensors", "state/rank-0.pt", "manifest.json"):
        assert (ck / rel).is_file(), rel
    m = json.loads((ck / "manifest.json").read_text())
    assert m["step"] == 3 and m["epoch"] == 2 and m["next_epoch"] == 3 and not m["mid_epoch"]
    from awm_platform.config import config_hash

    assert m["config_hash"] == config_hash(cfg)
    assert set(m["files"]) >= {"lora/pytorch_lora_weights.safetensors", "state/optimizer.pt"}
    C.validate(ck)
    keys = {k for (_s, k) in _metric_keys(run)}
    for k in ("train/reward_jpeg_compressibility", "train/reward_avg", "train/policy_loss", "train/kl_loss",
              "train/ema_kl_loss", "train/loss", "train/grad_norm", "train/lr", "train/zero_std_ratio",
              "train/adv_abs_mean", "time/sampling", "time/reward_wait", "time/training", "time/epoch",
              "time/images_per_sec", "eval/jpeg_compressibility", "eval_ema/jpeg_compressibility", "eval/avg"):
        assert k in keys, k
    steps_with_eval = sorted({s for (s, k) in _metric_keys(run) if k == "eval/avg"})
    assert steps_with_eval == [0, 2, 3]
    for s in steps_with_eval:
        lines = (run / "evals" / f"step-{s}" / "samples.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert sorted((r["weights"], r["prompt_index"]) for r in recs) == [
            ("eval", 0), ("eval", 1), ("eval_ema", 0), ("eval_ema", 1)]
        assert all("jpeg_compressibility" in r and "seed" in r for r in recs)
    # eval noise is fixed per prompt: the live-weights eval at step 0 equals the EMA one
    rows = [json.loads(x) for x in (run / "evals" / "step-0" / "samples.jsonl").read_text().splitlines()]
    by = {(r["weights"], r["prompt_index"]): r["jpeg_compressibility"] for r in rows}
    assert by[("eval", 0)] == by[("eval_ema", 0)]
    assert max(_metric_keys(run).values()) == 1


def test_resume_between_epochs_is_bitwise(baseline, tmp_path):
    cfg, run0, _ = baseline
    run = tmp_path / "run"
    r1 = _train(cfg, run, stop=StopAfter(1))
    assert r1.status == "interrupted" and r1.global_step == 1 and r1.epoch == 1
    assert r1.last_checkpoint == run / "checkpoints" / "step-1"
    r2 = _train(cfg, run)
    assert r2.status == "completed" and r2.global_step == 3
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])
    assert set(_metric_keys(run)) == set(_metric_keys(run0)) and max(_metric_keys(run).values()) == 1


def crash_then_resume(cfg, run: Path, monkeypatch, *, at_step: int):
    """Train `cfg` in `run`, crashing inside the optimizer step taken at global step `at_step`
    (mid-epoch: its rollouts done), then rerun it; returns the rerun's result."""
    from trainers.awm.recipe import AWMTrainer

    orig = AWMTrainer.train_step

    def crashing(self, *a, **k):
        if self.global_step == at_step:
            raise RuntimeError("simulated crash")
        return orig(self, *a, **k)

    monkeypatch.setattr(AWMTrainer, "train_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(cfg, run)
    monkeypatch.setattr(AWMTrainer, "train_step", orig)
    return _train(cfg, run)


def test_resume_after_crash_mid_epoch_is_bitwise(baseline, tmp_path, monkeypatch):
    cfg, run0, _ = baseline
    run = tmp_path / "run"
    # epoch 3: rollouts done, checkpoint step-2 written, crash mid-epoch
    r = crash_then_resume(cfg, run, monkeypatch, at_step=2)
    assert r.status == "completed" and r.global_step == 3
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])
    counts = _metric_keys(run)
    assert max(counts.values()) == 1 and set(counts) == set(_metric_keys(run0))


def test_corrupt_checkpoint_is_skipped(baseline, tmp_path):
    cfg, run0, _ = baseline
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    f = run / "checkpoints" / "step-3" / "lora" / "pytorch_lora_weights.safetensors"
    f.write_bytes(f.read_bytes()[:100])  # truncated
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = _train(cfg, run)
    assert any("skipping invalid checkpoint" in str(x.message) for x in w)
    assert r.status == "completed" and r.global_step == 3  # epoch 3 re-run from step-2
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])


def test_all_checkpoints_invalid_are_kept_aside_and_the_log_says_so(baseline, tmp_path, caplog):
    """Every checkpoint corrupt: one warning per checkpoint, each renamed aside (not overwritten
    by the restart, not deleted by retention), "no valid checkpoint, starting from step 0" in
    the log, and the run trains from scratch to the same result. A later resume names its
    checkpoint."""
    import logging

    from trainers.awm import checkpoint as C

    cfg, run0, _ = baseline
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    for _step, path in C.list_step_dirs(run):
        (path / "manifest.json").write_text("{not json")
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.INFO, logger="trainers"):
        warnings.simplefilter("always")
        r = _train(cfg, run, stop=StopAfter(2))
    skips = [str(x.message) for x in w if "skipping invalid checkpoint" in str(x.message)]
    assert len(skips) == 3 and len({s.split(":")[1] for s in skips}) == 3  # one per checkpoint
    assert all("kept aside as step-" in s and ".invalid-" in s for s in skips)
    assert "no valid checkpoint, starting from step 0" in caplog.text
    assert r.status == "interrupted" and r.global_step == 2  # restarted from step 0
    aside = sorted(p.name.split(".invalid-")[0] for p in (run / "checkpoints").glob("step-*.invalid-*"))
    assert aside == ["step-1", "step-2", "step-3"]
    assert all((p / "manifest.json").read_text() == "{not json"
               for p in (run / "checkpoints").glob("step-*.invalid-*"))  # untouched by the restart
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainers"):
        r = _train(cfg, run)
    assert f"resumed from {run / 'checkpoints' / 'step-2'}" in caplog.text
    assert r.status == "completed" and r.global_step == 3
    assert len(list((run / "checkpoints").glob("step-*.invalid-*"))) == 3
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])


def trained_policy(cfg, ck: Path, fam=None, *, lora_type: str = "attn", with_ema: bool = True):
    """The model family (SD3 unless `fam` is given) with the policy adapter of checkpoint `ck`,
    rebuilt from the exact training state (state/adapters.safetensors), to compare exported LoRA
    formats against."""
    import torch

    from trainers.awm import checkpoint as C
    from trainers.awm import lora as L
    from trainers.awm.model import SD3Family

    fam = fam if fam is not None else SD3Family.load(cfg.pretrained.model)
    L.add_policy_adapters(fam.transformer, L.make_lora_config(
        rank=cfg.lora.rank, alpha=cfg.lora.alpha, init="gaussian",
        target_modules=fam.lora_target_modules(lora_type, False)), with_ema=with_ema)
    state = C.load_tensors(ck / "state" / "adapters.safetensors")
    with torch.no_grad():
        for n, p in fam.transformer.named_parameters():
            if n in state:
                p.copy_(state[n])
    return fam


def test_exported_lora_reproduces_trained_outputs(baseline):
    import torch
    from diffusers import StableDiffusion3Pipeline
    from peft import PeftModel

    cfg, run, _ = baseline
    ck = run / "checkpoints" / "step-3"
    fam = trained_policy(cfg, ck)
    # diffusers format into a fresh pipeline
    pipe = StableDiffusion3Pipeline.from_pretrained(cfg.pretrained.model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(ck / "lora"))
    kw = {"prompt": ["a red cube", "a cat"], "num_inference_steps": 3, "guidance_scale": 1.0, "height": 64, "width": 64,
              "max_sequence_length": 8, "output_type": "latent"}
    got = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    fam.pipe.set_progress_bar_config(disable=True)
    want = fam.pipe(generator=torch.Generator().manual_seed(0), **kw).images
    base = StableDiffusion3Pipeline.from_pretrained(cfg.pretrained.model)
    base.set_progress_bar_config(disable=True)
    untrained = base(generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(got, want) and not torch.allclose(got, untrained)
    # PEFT format loads with peft
    base2 = StableDiffusion3Pipeline.from_pretrained(cfg.pretrained.model)
    pm = PeftModel.from_pretrained(base2.transformer, str(ck / "lora_peft"))
    x, t = torch.randn(2, *fam.latent_shape(64)), torch.tensor([0.4, 0.9])
    cond = fam.encode_prompts(["a", "b"], max_sequence_length=8)
    with torch.no_grad():
        assert torch.equal(fam.velocity(pm, x, t, cond), fam.velocity(fam.transformer, x, t, cond))
    # lora_ema differs from the live weights (weight EMA)
    pe = StableDiffusion3Pipeline.from_pretrained(cfg.pretrained.model)
    pe.set_progress_bar_config(disable=True)
    pe.load_lora_weights(str(ck / "lora_ema"))
    assert not torch.equal(pe(generator=torch.Generator().manual_seed(0), **kw).images, got)


def test_mid_epoch_stop_with_several_steps_per_epoch_is_bitwise(tiny_dir, tmp_path):
    # 4 images/process, micro-batch 1 -> 4 micro-batches, 2 optimizer steps per epoch (accumulation 2);
    # micro-batches of the 2nd step use pass-1 old log-probs (ratio != 1)
    cfg = small_config(tiny_dir, num_epochs=2, save_freq=5, train={"batch_size": 1, "steps_per_epoch": 2})
    r0 = _train(cfg, tmp_path / "a")
    assert r0.status == "completed" and r0.global_step == 4
    run = tmp_path / "b"
    r1 = _train(cfg, run, stop=StopAfter(1))
    assert r1.status == "interrupted" and r1.global_step == 1 and r1.epoch == 0
    m = json.loads((run / "checkpoints" / "step-1" / "manifest.json").read_text())
    assert m["mid_epoch"] and m["step_in_epoch"] == 1
    r2 = _train(cfg, run)
    assert r2.status == "completed" and r2.global_step == 4
    _assert_bitwise_equal(_final_state(tmp_path / "a")[1], _final_state(run)[1])
    assert max(_metric_keys(run).values()) == 1


def test_every_coefficient_zero_runs(make_cfg, tmp_path):
    cfg = make_cfg(num_epochs=1, train={"beta": 0.0, "ema_beta": 0.0, "kl_ema_decay": 0.0, "ema": False,
                                        "adam_weight_decay": 0.0, "learning_rate": 1e-3},
                   sample={"noise_level": 0.0})
    r = _train(cfg, tmp_path / "run")
    assert r.status == "completed"
    assert r.final_metrics["train/kl_loss"] == 0.0 and r.final_metrics["train/ema_kl_loss"] == 0.0
    m = json.loads((r.last_checkpoint / "manifest.json").read_text())
    assert m["lora_ema"] == "live" and (r.last_checkpoint / "lora_ema" / "pytorch_lora_weights.safetensors").is_file()


def test_variants_run(make_cfg, tmp_path):
    import math

    cfg = make_cfg(num_epochs=1, time_type="uniform",
                   sample={"noise_level": 0.7, "sde_frac": 0.5, "zero_std_policy": "drop", "guidance_scale": 2.0},
                   train={"off_policy": True, "use_sa_solver": False, "loss_type": "sum_first", "kl_weight": "ELBO",
                          "kl_ema_weight": "ELBO", "lr_scheduler": "cosine_then_constant", "decay_steps": 1,
                          "beta": 0.01, "weighting": "t"})
    r = _train(cfg, tmp_path / "run")
    assert r.status == "completed"
    for k in ("train/loss", "train/policy_loss", "train/kl_loss", "train/grad_norm"):
        assert math.isfinite(r.final_metrics[k]), k


def test_stop_event_interrupts_with_checkpoint(make_cfg, tmp_path):
    import threading

    ev = threading.Event()
    ev.set()
    r = _train(make_cfg(num_epochs=3, save_freq=10), tmp_path / "run", stop=ev)
    assert r.status == "interrupted" and r.global_step == 1 and r.epoch == 1
    assert (r.last_checkpoint / "manifest.json").is_file()


def test_cli_train_exit_codes(tiny_dir, tmp_path, monkeypatch):
    """`awm train`: 3 after a stop signal (USR2 too: the runner's worker and `awm train` stop on the
    same signals), 0 when completed, 2 for a bad config; the signal handlers are restored after."""
    import os
    import signal

    import yaml
    from typer.testing import CliRunner

    from awm_platform.cli.main import app
    from tests.trainer.conftest import small_config_dict
    from trainers.awm.recipe import AWMTrainer

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(small_config_dict(tiny_dir, num_epochs=2, save_freq=10)))
    orig = AWMTrainer.rollout

    def rollout_then_signal(self, epoch):
        out = orig(self, epoch)
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGUSR2)
        return out

    monkeypatch.setattr(AWMTrainer, "rollout", rollout_then_signal)
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    try:
        res = CliRunner().invoke(app, ["train", str(cfg_path), "--run-dir", str(tmp_path / "run")])
        assert res.exit_code == 3, res.output
        assert "received SIGUSR2: checkpointing at the next safe point" in res.output
        assert {s: signal.getsignal(s) for s in old} == old
        monkeypatch.setattr(AWMTrainer, "rollout", orig)
        res = CliRunner().invoke(app, ["train", str(cfg_path), "--run-dir", str(tmp_path / "run"),
                                       "--set", "eval.max_prompts=1"])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(app, ["train", str(cfg_path), "--set", "train.nope=1"])
        assert res.exit_code == 2 and "nope" in res.output
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def sigkill_then_resume(cfg_dict: dict, run0: Path, tmp_path: Path, *, first_step: int = 1,
                        last_step: int = 3) -> None:
    """A real `kill -9` of `awm train` (on the config `cfg_dict`) once its checkpoint `first_step`
    exists and before `last_step`'s; the rerun resumes and ends bitwise equal to the uninterrupted
    run `run0`, with no duplicate metrics. Shared by the SD3 test below, the FLUX one
    (tests/trainer/test_flux_run.py) and the methods' (tests/trainer/test_methods_resume.py)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-c",
           "import torch; torch.set_num_threads(1); from awm_platform.runner.train_cli import app; app()",
           str(cfg_path), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / f"step-{first_step}" / "manifest.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        assert not (run / "checkpoints" / f"step-{last_step}").exists()  # killed before the end
    finally:
        if proc.poll() is None:
            proc.kill()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_bitwise_equal(_final_state(run0)[1], _final_state(run)[1])
    assert max(_metric_keys(run).values()) == 1 and set(_metric_keys(run)) == set(_metric_keys(run0))
    assert not list((run / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise(baseline, tiny_dir, tmp_path):
    """A real `kill -9` of `awm train` after the first checkpoint; the rerun resumes bitwise."""
    from tests.trainer.conftest import small_config_dict

    _, run0, _ = baseline
    sigkill_then_resume(small_config_dict(tiny_dir, **BASE), run0, tmp_path)


class FlushRecorder:
    """A MetricLogger (plus the optional `flush_metrics`) that records the order of its calls, and at each
    flush whether the newest logged step's checkpoint was already final."""

    def __init__(self, run_dir):
        self.run_dir, self.events, self.last_step = run_dir, [], -1

    def log_metrics(self, metrics, step):
        self.last_step = max(self.last_step, int(step))
        self.events.append(("log", int(step)))

    def log_images(self, images, captions, step, key): ...

    def log_checkpoint(self, manifest_path, step):
        self.events.append(("checkpoint", int(step)))

    def flush_metrics(self):
        final = (self.run_dir / "checkpoints" / f"step-{self.last_step}").exists()
        self.events.append(("flush", self.last_step, final))

    def close(self): ...


def test_metrics_are_flushed_before_their_checkpoint_is_final(make_cfg, tmp_path):
    """A job killed right after a checkpoint resumes after its step and never logs that step again:
    so the step's metrics are flushed (MLflow: sent or spooled) before the checkpoint is final."""
    run = tmp_path / "run"
    rec = FlushRecorder(run)
    assert _train(make_cfg(num_epochs=2, save_freq=1), run, logger=rec).status == "completed"
    checkpoints = [i for i, e in enumerate(rec.events) if e[0] == "checkpoint"]
    assert [rec.events[i][1] for i in checkpoints] == [1, 2]
    for i in checkpoints:
        step = rec.events[i][1]
        last_log = max(j for j, e in enumerate(rec.events[:i]) if e == ("log", step))
        assert ("flush", step, False) in rec.events[last_log:i], rec.events
