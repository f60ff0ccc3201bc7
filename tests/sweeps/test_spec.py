"""The `sweep:` section: shapes, combinations, and validation against the experiment config."""

from __future__ import annotations

import pytest

from awm_platform.config import ConfigError, config_from_dict, load_config
from awm_platform.redaction import redact_url
from awm_platform.sweeps import optuna_bridge as ob
from tests.sweeps.helpers import sweep_section, write_config


def _cfg(**sweep):
    return config_from_dict({"name": "s", "sweep": sweep_section(**sweep)})


def test_valid_search_space_over_issue_keys():
    cfg = _cfg(params={
        "train.beta": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.ghuber_power": {"type": "float", "low": 0.1, "high": 1.0},
        "train.kl_ema_decay": {"type": "float", "low": 0.0, "high": 1.0},
        "train.ema_beta": {"type": "float", "low": 0.0, "high": 2.0},
        "train.ema_decay": {"type": "float", "low": 0.9, "high": 0.999},
        "train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "lora.rank": {"type": "int", "low": 2, "high": 16, "step": 2},
        "train.weighting": {"type": "categorical", "choices": ["ghuber", "huber"]},
    })
    d = ob.distributions(cfg.sweep)
    assert d["train.beta"].log and d["lora.rank"].step == 2 and d["train.weighting"].choices == ("ghuber", "huber")


@pytest.mark.parametrize("key, spec, needle", [
    ("train.betta", {"type": "float", "low": 0.1, "high": 0.2}, "'train.betta' is not a key"),
    ("train.ghuber_power", {"type": "float", "low": 0.1, "high": 1.5}, "value 1.5 violates"),
    ("train.beta", {"type": "float", "low": -1.0, "high": 0.1}, "value -1.0 violates"),
    ("train.ema_decay", {"type": "float", "low": 0.9, "high": 1.0}, "train.ema_decay"),
    ("train.weighting", {"type": "categorical", "choices": ["ghuber", "nope"]}, "'nope' violates"),
    ("name", {"type": "categorical", "choices": ["a"]}, "cannot be searched"),
    ("train.beta", {"type": "float", "low": 0.1, "high": 0.01}, "must be <= high"),
    ("train.beta", {"type": "float", "low": 0.0, "high": 0.01, "log": True}, "log scale needs low > 0"),
])
def test_invalid_params_are_rejected_with_the_key(key, spec, needle):
    with pytest.raises(ConfigError) as err:
        _cfg(params={key: spec})
    assert needle in str(err.value)


def test_objective_must_be_an_evaluated_reward():
    with pytest.raises(ConfigError, match="never logged"):
        _cfg(objective={"metric": "eval/pickscore"})
    with pytest.raises(ConfigError, match="multi-objective sampler"):
        _cfg(objective=[{"metric": "eval/jpeg_compressibility"}, {"metric": "eval_ema/jpeg_compressibility"}],
             sampler={"name": "tpe"})
    cfg = _cfg(objective=[{"metric": "eval/jpeg_compressibility"},
                          {"metric": "eval_ema/jpeg_compressibility", "direction": "minimize"}],
               sampler={"name": "nsga2"}, pruner={"name": "none"})
    assert len(cfg.sweep.objective) == 2


def test_combinations():
    with pytest.raises(ConfigError, match="cannot prune multi-objective"):
        _cfg(objective=[{"metric": "eval/jpeg_compressibility"}, {"metric": "eval/jpeg_compressibility"}],
             sampler={"name": "nsga2"}, pruner={"name": "median"})
    with pytest.raises(ConfigError, match="grid sampler needs 'step'"):
        _cfg(sampler={"name": "grid"})
    with pytest.raises(ConfigError, match="either sweep.storage"):
        _cfg(storage="sqlite:///x.db", journal_path="/tmp/j.log")


def test_config_file_error_names_file_and_key(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"name": "s", "sweep": sweep_section(
        params={"train.nope": {"type": "float", "low": 0, "high": 1}})})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.nope" in str(err.value)


def test_samplers_pruners_and_storage_urls(tmp_path, isolated_awm_home):
    import optuna

    for name in ("tpe", "random", "cmaes"):
        assert isinstance(ob.make_sampler(_cfg(sampler={"name": name}).sweep), optuna.samplers.BaseSampler)
    grid = _cfg(sampler={"name": "grid"}, params={"train.beta": {"type": "float", "low": 0.001, "high": 0.003,
                                                                 "step": 0.001},
                                                  "lora.rank": {"type": "int", "low": 2, "high": 4, "step": 2}})
    assert ob.grid_size(grid.sweep) == 6 and ob.grid_values(grid.sweep.params["train.beta"]) == [0.001, 0.002, 0.003]
    for name, cls in (("median", "MedianPruner"), ("successive_halving", "SuccessiveHalvingPruner"),
                      ("hyperband", "HyperbandPruner"), ("none", "NopPruner")):
        assert type(ob.make_pruner(_cfg(pruner={"name": name}).sweep)).__name__ == cls
    assert ob.storage_url(_cfg().sweep) == f"sqlite:///{isolated_awm_home / 'optuna.db'}"
    j = ob.storage_url(_cfg(journal_path=str(tmp_path / "j.log")).sweep)
    assert j == f"journal:{tmp_path / 'j.log'}"
    storage = ob.open_storage(j)  # the journal backend works as a study storage
    study = optuna.create_study(study_name="j", storage=storage)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 1.0)
    assert optuna.load_study(study_name="j", storage=ob.open_storage(j)).best_value == 1.0
    assert redact_url("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"


def test_trial_seed_is_reproducible_and_distinct():
    seeds = [ob.trial_seed(3, n) for n in range(50)]
    assert seeds == [ob.trial_seed(3, n) for n in range(50)] and len(set(seeds)) == 50
    assert ob.trial_seed(4, 0) != ob.trial_seed(3, 0)
