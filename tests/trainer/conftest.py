"""Fixtures for the trainer tests: one tiny SD3 and one tiny FLUX pipeline per session, small configs, 1 thread."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """stack-notes P1: with other processes busy, torch's default threads collapse; 1 thread is stable."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from trainers.awm.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "sd3-tiny")


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    """The tiny random FLUX pipeline (tests/trainer/test_flux*.py share it)."""
    from trainers.awm.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "flux-tiny", family="flux")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def small_config_dict(model_dir: Path, **over: Any) -> dict:
    base = {
        "name": "t",
        "seed": 3,
        "pretrained": {"model": str(model_dir), "dtype": "fp32"},
        "resolution": 64,
        "mixed_precision": "no",
        "num_epochs": 2,
        "save_freq": 1,
        "eval_freq": 100,
        "dataset": "tiny",
        "reward_fn": {"jpeg_compressibility": 1.0},
        "lora": {"rank": 4, "alpha": 8},
        "sample": {"num_steps": 4, "eval_num_steps": 3, "num_image_per_prompt": 2, "prompts_per_epoch": 2,
                   "max_batch_size_per_gpu": 4, "test_batch_size": 4, "max_sequence_length": 8},
        "train": {"batch_size": 2, "train_timesteps": 2, "learning_rate": 3e-3, "timestep_fraction": 1.0},
        "eval": {"max_prompts": 2, "at_start": False},
    }
    return _merge(base, over)


def small_config(model_dir: Path, **over: Any):
    from awm_platform.config import config_from_dict

    return config_from_dict(small_config_dict(model_dir, **over))


@pytest.fixture
def make_cfg(tiny_dir):
    return lambda **over: small_config(tiny_dir, **over)


class StopAfter:
    """A stop signal that becomes set at the n-th poll (polls happen after each optimizer step)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls >= self.n
