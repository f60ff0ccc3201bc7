"""TARGET strings -> EvalTargets against a real store and real checkpoint folders (manifest written by the
trainer's own `checkpoint.finalize`)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from awm_platform.evals.spec import ModelContext
from awm_platform.evals.targets import EvalTarget, TargetError, base_sha256, resolve_targets
from awm_platform.store import Store
from trainers.awm import checkpoint as C
from trainers.awm.config import TrainerConfig


def write_checkpoint(run_dir: Path, step: int, *, ema: bool = True) -> Path:
    tmp = C.tmp_dir(run_dir, step)
    (tmp / "lora").mkdir(parents=True)
    (tmp / "lora" / "pytorch_lora_weights.safetensors").write_bytes(f"weights {step}".encode())
    formats = ["diffusers", "peft"] + (["diffusers_ema"] if ema else [])
    return C.finalize(run_dir, step, 0, config_hash="h", formats=formats)


def make_run(store: Store, home: Path, name: str, steps: list[int], *, sweep: str | None = None,
             conf: dict[str, Any] | None = None, register: bool = True) -> Path:
    run_dir = home / "runs" / name
    conf = conf or {"pretrained": {"model": "/models/tiny", "revision": "r1", "dtype": "fp32"}, "resolution": 64,
                    "sample": {"guidance_scale": 1.0, "max_sequence_length": 32}}
    store.create_run(name=name, config_hash="h", resolved_config=conf, output_dir=run_dir, cluster="local",
                     sweep_name=sweep)
    for s in steps:
        path = write_checkpoint(run_dir, s)
        if register:
            store.add_checkpoint(name, step=s, path=path, sha256=hashlib.sha256((path / C.MANIFEST).read_bytes())
                                 .hexdigest(), formats=["diffusers", "peft", "diffusers_ema"])
    return run_dir


@pytest.fixture
def store(isolated_awm_home: Path) -> Store:
    s = Store.default()
    yield s
    s.close()


def test_run_forms(store: Store, isolated_awm_home: Path) -> None:
    run_dir = make_run(store, isolated_awm_home, "r1", [2, 4, 6])
    [newest] = resolve_targets(store, "r1")
    assert (newest.label, newest.run_name, newest.step) == ("r1@6", "r1", 6)
    assert newest.checkpoint_sha256 == store.get_checkpoint("r1", 6).sha256
    assert newest.checkpoint_id == store.get_checkpoint("r1", 6).id
    assert newest.path == run_dir / "checkpoints" / "step-6"
    assert newest.lora_dir("policy") == newest.path / "lora" and newest.lora_dir("ema") == newest.path / "lora_ema"
    assert newest.ctx == ModelContext(model="/models/tiny", revision="r1", family="auto", resolution=64,
                                      precision="fp32", max_sequence_length=32, uses_cfg=False)
    assert newest.has_ema and not newest.is_base
    [at4] = resolve_targets(store, "r1@4")
    assert at4.label == "r1@4" and at4.step == 4
    assert [t.step for t in resolve_targets(store, "r1@all")] == [2, 4, 6]


def test_run_errors(store: Store, isolated_awm_home: Path) -> None:
    make_run(store, isolated_awm_home, "r1", [2])
    make_run(store, isolated_awm_home, "empty", [])
    cases = {
        "nope": "no run of that name",
        "nope@3": "no run named 'nope'",
        "r1@notanumber": "STEP must be an integer or 'all'",
        "r1@5": "has no checkpoint at step 5 (its checkpoints: 2)",
        "empty": "has no checkpoints yet",
        "empty@all": "has no checkpoints yet",
        "": "empty TARGET",
        "base:": "base:MODEL needs a model",
        "sweep:nosuch": "no sweep named 'nosuch'",
        str(isolated_awm_home / "missing" / "dir"): "is not a checkpoint directory",
        str(isolated_awm_home): "no manifest.json",
    }
    for text, message in cases.items():
        with pytest.raises(TargetError) as err:
            resolve_targets(store, text)
        assert message in str(err.value), (text, str(err.value))


def test_deleted_checkpoint_dir_is_an_error_alone_and_skipped_in_all(store: Store, isolated_awm_home: Path) -> None:
    run_dir = make_run(store, isolated_awm_home, "r1", [2, 4])
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    with pytest.raises(TargetError, match="is gone"):
        resolve_targets(store, "r1")
    warnings: list[str] = []
    assert [t.step for t in resolve_targets(store, "r1@all", warn=warnings.append)] == [2]
    assert warnings == [f"skipping r1@4: its checkpoint directory {run_dir / 'checkpoints' / 'step-4'} is gone"]


def test_checkpoint_directory(store: Store, isolated_awm_home: Path, tmp_path: Path) -> None:
    run_dir = make_run(store, isolated_awm_home, "r1", [3])
    # a registered checkpoint folder is its run@step
    [t] = resolve_targets(store, str(run_dir / "checkpoints" / "step-3"))
    assert (t.label, t.run_name, t.checkpoint_id) == ("r1@3", "r1", store.get_checkpoint("r1", 3).id)
    # an unregistered one: dir:PATH, sha256 of the manifest bytes, model fields from its capsule
    other = tmp_path / "elsewhere"
    path = write_checkpoint(other, 7, ema=False)
    (other / "capsule").mkdir()
    (other / "capsule" / "config.yaml").write_text(yaml.safe_dump(
        {"pretrained": {"model": "m2", "dtype": "bf16"}, "resolution": 128, "sample": {"guidance_scale": 4.5}}))
    [d] = resolve_targets(store, str(path))
    assert d.label == f"dir:{path}" and d.run_name is None and d.checkpoint_id is None and d.step == 7
    assert d.checkpoint_sha256 == hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    assert (d.ctx.model, d.ctx.precision, d.ctx.resolution, d.ctx.uses_cfg, d.has_ema) == ("m2", "bf16", 128, True, False)
    # no run config next to it: the command's defaults
    bare = write_checkpoint(tmp_path / "bare", 1)
    [b] = resolve_targets(store, str(bare), defaults=TrainerConfig.model_validate(
        {"pretrained": {"model": "m3"}, "resolution": 256}))
    assert (b.ctx.model, b.ctx.resolution) == ("m3", 256)
    # a corrupt manifest is one clear error
    (bare / "manifest.json").write_text("{not json")
    with pytest.raises(TargetError, match="not a valid checkpoint manifest"):
        resolve_targets(store, str(bare))


def test_base_model(store: Store) -> None:
    defaults = TrainerConfig.model_validate({"pretrained": {"revision": "v2", "dtype": "bf16"}, "resolution": 1024})
    [t] = resolve_targets(store, "base:org/model", defaults=defaults)
    assert isinstance(t, EvalTarget) and t.is_base and t.path is None and t.lora_dir("policy") is None
    assert t.label == "base:org/model"
    # like a run of the command's config: sample.guidance_scale 1.0 (the default) samples without CFG
    assert (t.ctx.model, t.ctx.revision, t.ctx.precision, t.ctx.resolution, t.ctx.uses_cfg) == (
        "org/model", "v2", "bf16", 1024, False)
    with_cfg = defaults.model_copy(update={"sample": defaults.sample.model_copy(update={"guidance_scale": 4.5})})
    assert resolve_targets(store, "base:org/model", defaults=with_cfg)[0].ctx.uses_cfg
    assert t.checkpoint_sha256 == base_sha256("org/model", "v2") != base_sha256("org/model", "main")
    assert t.run_name is None and t.checkpoint_id is None


def test_sweep_best_checkpoint_per_trial(store: Store, isolated_awm_home: Path) -> None:
    store.create_sweep(study_name="sw", optuna_storage="sqlite://",
                       resolved_config={"sweep": {"objective": [{"metric": "eval/ocr", "direction": "maximize"}]}})
    make_run(store, isolated_awm_home, "sw-t0", [2, 4, 6], sweep="sw")
    make_run(store, isolated_awm_home, "sw-t1", [2, 4], sweep="sw")
    make_run(store, isolated_awm_home, "sw-t2", [], sweep="sw")  # no checkpoint yet: not a target
    make_run(store, isolated_awm_home, "other", [2])
    # t0: best value at step 4 (step 5 is better but has no checkpoint)
    for step, v in [(2, 0.1), (4, 0.5), (5, 0.9), (6, 0.3)]:
        store.log_metrics("sw-t0", {"eval/ocr": v}, step)
    # t1: no value at a checkpointed step -> newest
    store.log_metrics("sw-t1", {"eval/ocr": 0.7}, 3)
    targets = resolve_targets(store, "sweep:sw")
    assert [t.label for t in targets] == ["sw-t0@4", "sw-t1@4"]
    # minimize picks the lowest
    store.create_sweep(study_name="sw2", optuna_storage="sqlite://",
                       resolved_config={"sweep": {"objective": [{"metric": "eval/ocr", "direction": "minimize"}]}})
    make_run(store, isolated_awm_home, "sw2-t0", [2, 4, 6], sweep="sw2")
    for step, v in [(2, 0.4), (4, 0.2), (6, 0.3)]:
        store.log_metrics("sw2-t0", {"eval/ocr": v}, step)
    assert [t.label for t in resolve_targets(store, "sweep:sw2")] == ["sw2-t0@4"]
    store.create_sweep(study_name="empty", optuna_storage="sqlite://", resolved_config={})
    with pytest.raises(TargetError, match="none of its trial runs has a checkpoint"):
        resolve_targets(store, "sweep:empty")
