"""The trainer's own config: what it reads, its topology, and how the platform's config composes it."""

from __future__ import annotations

import pytest

from awm_platform.config import ExperimentConfig, config_from_dict, config_hash, resolved_config
from benchmarks.registry import REWARDS
from trainers.awm.config import ConfigError, TrainerConfig, derive_topology

PLATFORM_SECTIONS = {"launcher", "tracking", "storage", "sweep", "tags"}  # tags: leaderboard labels
# the platform's keys inside the trainer's `eval` section (the evaluation service's)
PLATFORM_EVAL_KEYS = {"on_checkpoint", "service"}


def test_the_experiment_config_is_the_trainer_config_plus_the_platform_sections() -> None:
    trainer_keys = list(TrainerConfig.model_fields)
    assert not PLATFORM_SECTIONS & set(trainer_keys)
    # the trainer's keys first: every dump (resolved config, hash input) keeps today's key order
    assert list(ExperimentConfig.model_fields) == [*trainer_keys, "launcher", "tracking", "storage", "sweep", "tags"]
    assert isinstance(ExperimentConfig(), TrainerConfig)


def test_the_trainer_config_validates_alone() -> None:
    cfg = TrainerConfig.model_validate({"reward_fn": {"ocr": 1.0}, "train": {"batch_size": 2},
                                        "sample": {"num_image_per_prompt": 4, "prompts_per_epoch": 2}})
    assert derive_topology(cfg, 2).images_per_process == 4
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        derive_topology(cfg, 3)
    with pytest.raises(ValueError, match="unknown reward 'jpeg_compressibilty' .did you mean 'jpeg_compressibility'"):
        TrainerConfig.model_validate({"reward_fn": {"jpeg_compressibilty": 1.0}})
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        TrainerConfig.model_validate({"launcher": {"nodes": 2}})  # a platform section is not the trainer's


def test_every_registered_reward_is_a_valid_reward_fn() -> None:
    for name in REWARDS:
        assert TrainerConfig.model_validate({"reward_fn": {name: 1.0}}).reward_fn == {name: 1.0}


def test_what_the_trainer_records_equals_the_platforms_records() -> None:
    """The trainer writes cfg.resolved()/cfg.fingerprint(); for the platform's config these are its
    redacted resolved config and config hash, so run_dir files agree with the store and capsule."""
    cfg = config_from_dict({"reward_fn": {"ocr": 1.0}, "reward_kwargs": {"ocr": {"api_key": "s3cret-value"}},
                            "launcher": {"nodes": 2}})
    assert cfg.fingerprint() == config_hash(cfg)
    assert cfg.resolved(4) == resolved_config(cfg, 4)
    assert "s3cret-value" not in str(cfg.resolved(4))
    assert cfg.resolved(4)["derived"]["world_size"] == 4 and cfg.topology().world_size == 2
    bare = TrainerConfig.model_validate(cfg.model_dump(exclude={**dict.fromkeys(PLATFORM_SECTIONS, True),
                                                                "eval": dict.fromkeys(PLATFORM_EVAL_KEYS, True)}))
    assert bare.resolved(4)["derived"] == {k: v for k, v in cfg.resolved(4)["derived"].items() if k != "setup_hash"}
    assert len(bare.fingerprint()) == 16 and bare.fingerprint() != cfg.fingerprint()
