"""A sweep can search the training `method` as a categorical parameter: the search space validates,
each trial's config gets its method with that method's own defaults, and keys only the study's
method reads do not leak into another method's trials."""

from __future__ import annotations

import pytest

from awm_platform.config import ConfigError, config_from_dict
from awm_platform.sweeps import optuna_bridge as ob
from awm_platform.sweeps.orchestrator import trial_config
from tests.sweeps.helpers import sweep_section
from trainers.awm.config import METHOD_DEFAULTS

METHOD_PARAM = {"method": {"type": "categorical", "choices": ["awm", "flow_grpo"]},
                "train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}


def _cfg(**base):
    return config_from_dict({"name": "s", **base, "sweep": sweep_section(params=METHOD_PARAM)})


def test_method_is_a_categorical_search_key():
    cfg = _cfg()
    assert ob.distributions(cfg.sweep)["method"].choices == ("awm", "flow_grpo")
    fg = trial_config(cfg, "s", 0, {"method": "flow_grpo", "train.learning_rate": 5e-4}, seed=11)
    assert fg.method == "flow_grpo" and fg.name == "s-t0" and fg.seed == 11 and fg.train.learning_rate == 5e-4
    # Flow-GRPO's own defaults (objectives.md 1.5), not the AWM values the study's dump carried
    for key, value in METHOD_DEFAULTS["flow_grpo"].items():
        section, name = key.split(".")
        assert getattr(getattr(fg, section), name) == value, key
    awm = trial_config(cfg, "s", 1, {"method": "awm", "train.learning_rate": 2e-4}, seed=12)
    assert awm.method == "awm" and awm.train.clip_range == 1.0 and awm.sample.noise_level == 0.4


def test_keys_of_the_study_method_stay_with_it():
    # an AWM-tuned study (a non-default AWM-only key, a shared key set by the user) searching the method
    cfg = _cfg(train={"train_timesteps": 3, "clip_range": 0.5})
    fg = trial_config(cfg, "s", 0, {"method": "flow_grpo"}, seed=1)
    assert fg.train.train_timesteps == 6  # AWM-only: back to its (unread) default
    assert fg.train.clip_range == 0.5  # set by the user: kept
    awm = trial_config(cfg, "s", 1, {"method": "awm"}, seed=1)
    assert awm.train.train_timesteps == 3 and awm.train.clip_range == 0.5
    # and back: a Flow-GRPO study's defaults do not leak into its AWM trials
    fg_study = config_from_dict({"name": "s", "method": "flow_grpo", "sweep": sweep_section(params=METHOD_PARAM)})
    back = trial_config(fg_study, "s", 2, {"method": "awm"}, seed=1)
    assert back.train.clip_range == 1.0 and back.train.beta == 0.001 and back.sample.zero_std_policy == "keep"


def test_unknown_method_choices_are_rejected():
    with pytest.raises(ConfigError, match="sweep.params.method: value 'nope'"):
        config_from_dict({"name": "s", "sweep": sweep_section(
            params={"method": {"type": "categorical", "choices": ["awm", "nope"]}})})
