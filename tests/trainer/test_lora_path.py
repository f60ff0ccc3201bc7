"""``train.lora_path``: the KL-EMA and weight-EMA ramps continue at the step the loaded LoRA was trained for,
as upstream (which sets ``global_step = S``), unless ``train.lora_path_step`` says otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.trainer.conftest import small_config
from trainers.awm.ema import kl_ema_mixing, weight_ema_decay


@pytest.fixture(scope="module")
def source_run(tiny_dir, tmp_path_factory) -> Path:
    """A finished 1-epoch run: its checkpoint step-1 holds the LoRA to start from."""
    from trainers.awm.recipe import train

    run = tmp_path_factory.mktemp("lora-src") / "run"
    assert train(small_config(tiny_dir, num_epochs=1), run).status == "completed"
    assert (run / "checkpoints" / "step-1" / "lora").is_dir()
    return run


def _first_step_metrics(tiny_dir: Path, run: Path, **train_over) -> dict:
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    cfg = small_config(tiny_dir, num_epochs=1, seed=11, train=train_over)
    assert train(cfg, run).status == "completed"
    rows = [r for r in read_jsonl_metrics(run / "metrics.jsonl") if "train/kl_ema_decay" in r]
    assert rows[0]["step"] == 1  # this run's own step count still starts at 0
    return rows[0]


def test_trained_step_of_reads_manifests_and_folder_names(source_run: Path, tmp_path: Path) -> None:
    from trainers.awm.lora import trained_step_of

    ckpt = source_run / "checkpoints" / "step-1"
    assert trained_step_of(ckpt) == 1
    assert trained_step_of(ckpt / "lora") == 1
    assert trained_step_of(ckpt / "lora" / "pytorch_lora_weights.safetensors") == 1
    upstream = tmp_path / "ckpts" / "checkpoint-250" / "lora_non_ema"
    upstream.mkdir(parents=True)
    assert trained_step_of(upstream) == 250  # upstream's checkpoint-S/lora_non_ema
    plain = tmp_path / "my_lora"
    plain.mkdir()
    assert trained_step_of(plain) is None


def test_ramps_continue_from_the_checkpoint_step(tiny_dir: Path, source_run: Path, tmp_path: Path) -> None:
    row = _first_step_metrics(tiny_dir, tmp_path / "run", lora_path=str(source_run / "checkpoints/step-1/lora"))
    # step 1 of this run is global step 1 + 1 for the ramps (fresh: 0.001 and 2/11)
    assert row["train/kl_ema_decay"] == kl_ema_mixing(2, 0.3, "linear") == 0.002
    assert row["train/weight_ema_decay"] == weight_ema_decay(2, 0.99) == 3 / 12


def test_upstream_checkpoint_folder_and_explicit_step(tiny_dir: Path, source_run: Path, tmp_path: Path) -> None:
    upstream = tmp_path / "ckpts" / "checkpoint-250" / "lora_non_ema"
    shutil.copytree(source_run / "checkpoints/step-1/lora_peft", upstream)
    row = _first_step_metrics(tiny_dir, tmp_path / "a", lora_path=str(upstream))
    assert row["train/kl_ema_decay"] == pytest.approx(0.251)
    assert row["train/weight_ema_decay"] == weight_ema_decay(251, 0.99)
    row = _first_step_metrics(tiny_dir, tmp_path / "b", lora_path=str(upstream), lora_path_step=0)
    assert row["train/kl_ema_decay"] == 0.001 and row["train/weight_ema_decay"] == 2 / 11


def test_unknown_step_is_refused_with_the_key_to_set(tiny_dir: Path, source_run: Path, tmp_path: Path) -> None:
    from awm_platform.config import ConfigError
    from trainers.awm.recipe import train

    plain = tmp_path / "my_lora"
    shutil.copytree(source_run / "checkpoints/step-1/lora", plain)
    with pytest.raises(ValueError, match=r"set train\.lora_path_step \(0 starts the EMA ramps afresh\)"):
        train(small_config(tiny_dir, num_epochs=1, train={"lora_path": str(plain)}), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"train\.lora_path_step is set but train\.lora_path is not"):
        small_config(tiny_dir, train={"lora_path_step": 5})
