"""The `method` config key: AWM by default, Flow-GRPO's defaults and keys, errors for keys the chosen
method does not read (with the closest valid key), unavailable methods, switching a config's method with
`--set method=...`, round trips of dumped configs, and the Flow-GRPO 8-GPU config at upstream defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from awm_platform.config import ConfigError, config_from_dict, load_config
from trainers.awm.config import METHOD_DEFAULTS

REPO = Path(__file__).resolve().parents[2]


def test_default_method_is_awm_with_its_defaults():
    cfg = config_from_dict({})
    assert cfg.method == "awm"
    assert (cfg.train.clip_range, cfg.sample.noise_level, cfg.train.beta, cfg.sample.zero_std_policy) == \
        (1.0, 0.4, 0.001, "keep")
    assert cfg.resolved(1)["method"] == "awm"


def test_flow_grpo_defaults_and_round_trip():
    cfg = config_from_dict({"method": "flow_grpo"})
    for key, value in METHOD_DEFAULTS["flow_grpo"].items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key
    assert config_from_dict({"method": "flow_grpo", "train": {"clip_range": 0.2}}).train.clip_range == 0.2
    # a dumped config (AWM-only keys at their defaults) validates again to the same config
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize("data, needles", [
    ({"method": "flow_grpo", "train": {"weighting": "huber"}},
     ["'train.weighting' is not read by method=flow_grpo (only by awm); remove it"]),
    ({"method": "flow_grpo", "train": {"train_timesteps": 3}}, ["'train.train_timesteps' is not read"]),
    ({"method": "flow_grpo", "time_type": "uniform"}, ["'time_type' is not read by method=flow_grpo"]),
    ({"sample": {"sde_type": "cps"}},
     ["'sample.sde_type' is not read by method=awm (only by flow_grpo); did you mean 'sample.sde_frac'?"]),
    ({"train": {"cfg": True}}, ["'train.cfg' is not read by method=awm"]),
    ({"method": "flow_grpo", "train": {"cfg": True}}, ["train.cfg=true needs sample.guidance_scale > 1"]),
    ({"method": "flow_grpo", "sample": {"guidance_scale": 4.5}, "train": {"cfg": False}},
     ["method=flow_grpo with sample.guidance_scale=4.5 needs train.cfg=true"]),
    ({"method": "grpo"}, ["'method'", "flow_grpo"]),
    ({"method": "flow_grpo", "sample": {"sde_window_range": [0, 5]}},
     ["sample.sde_window_range=[0, 5] is read only with a Fast window"]),
    ({"method": "flow_grpo", "sample": {"num_steps": 6, "sde_window_size": 3, "sde_window_range": [2, 4]}},
     ["sample.sde_window_range=[2, 4] with sample.sde_window_size=3"]),
    # Fast trains exactly the W window steps: a timestep_fraction beside a window would be ignored silently
    ({"method": "flow_grpo", "sample": {"sde_window_size": 3}, "train": {"timestep_fraction": 0.5}},
     ["train.timestep_fraction=0.5 is not read with a Flow-GRPO-Fast window", "sample.sde_window_size=3"]),
    # no trained transition at all: refused when the config is read, not when the trainer is built
    ({"method": "flow_grpo", "sample": {"num_steps": 2}, "train": {"timestep_fraction": 0.3}},
     ["int(2 * 0.3) = 0 transitions"]),
])
def test_bad_method_keys_name_the_key(data, needles):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source="c.yaml")
    msg = str(err.value)
    assert all(n in msg for n in needles), msg
    assert "Traceback" not in msg


def test_fast_window_accepts_the_fractions_that_carry_no_intent():
    """A window with Flow-GRPO's own timestep_fraction (0.99, what a dumped Flow-GRPO config holds) or the
    schema default (a dumped config of another method) validates; without a window any fraction does."""
    for fraction in (0.99, 0.9):
        cfg = config_from_dict({"method": "flow_grpo", "sample": {"sde_window_size": 3},
                                "train": {"timestep_fraction": fraction}})
        assert (cfg.sample.sde_window_size, cfg.train.timestep_fraction) == (3, fraction)
    assert config_from_dict({"method": "flow_grpo", "train": {"timestep_fraction": 0.5}}).train.timestep_fraction == 0.5
    fast = config_from_dict({"method": "flow_grpo", "sample": {"sde_window_size": 3}})
    assert config_from_dict(fast.model_dump(mode="json")).model_dump() == fast.model_dump()


def test_set_method_switches_the_quickstart():
    """`awm train configs/quickstart.yaml --set method=flow_grpo`: the AWM-only keys of the file are dropped,
    its values at AWM's defaults follow Flow-GRPO's, the rest is kept."""
    qs = load_config(REPO / "configs" / "quickstart.yaml")
    fg = load_config(REPO / "configs" / "quickstart.yaml", overrides=["method=flow_grpo"])
    assert qs.method == "awm" and qs.train.train_timesteps == 3
    assert fg.method == "flow_grpo" and fg.train.train_timesteps == 6  # dropped: the (unread) default
    assert fg.train.timestep_fraction == 0.99 and fg.train.beta == 0.04  # the file's AWM defaults -> FG's
    assert fg.train.learning_rate == qs.train.learning_rate == 2e-2 and fg.sample.num_steps == 6  # kept
    assert fg.lora == qs.lora
    # an explicit method in the file with an AWM-only key is an error, not a switch
    with pytest.raises(ConfigError, match="train.train_timesteps"):
        config_from_dict({"method": "flow_grpo", "train": {"train_timesteps": 3}})


def test_flow_grpo_8gpu_config_is_at_upstream_defaults():
    """objectives.md 1.5, geneval_sd3: N 10 / eval 40, CFG 4.5 in rollout and training, a 0.7 SDE, J 9,
    groups of 24 x 48 prompts, clip 1e-4, KL 0.04, 2 steps per epoch, lr 3e-4, wd 1e-4, EMA 0.9 / 8."""
    cfg = load_config(REPO / "configs" / "sd35m_geneval_flow_grpo_8gpu.yaml")
    s, t = cfg.sample, cfg.train
    assert cfg.method == "flow_grpo" and cfg.pretrained.model == "stabilityai/stable-diffusion-3.5-medium"
    assert (s.num_steps, s.eval_num_steps, s.guidance_scale, t.cfg) == (10, 40, 4.5, True)
    assert (s.noise_level, s.sde_type, s.sde_window_size, int(s.num_steps * t.timestep_fraction)) == (0.7, "sde", 0, 9)
    assert (s.num_image_per_prompt, s.prompts_per_epoch, s.zero_std_policy, s.global_std) == (24, 48, "drop", True)
    assert (t.clip_range, t.beta, t.steps_per_epoch, t.learning_rate, t.adam_weight_decay) == (1e-4, 0.04, 2, 3e-4, 1e-4)
    assert (t.max_grad_norm, t.adv_clip_max, t.ema, t.ema_decay, t.ema_update_step_interval) == (1.0, 5.0, True, 0.9, 8)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.type, cfg.resolution, cfg.mixed_precision) == (32, 64, "attn", 512, "fp16")
    topo = cfg.resolved(8)["derived"]
    assert (topo["images_per_epoch"], topo["sample_train_batch_size"], topo["gradient_accumulation_steps"]) == (1152, 9, 8)


@pytest.mark.parametrize("method", ["diffusionnft", "advantageflow"])
def test_nft_and_advantageflow_8gpu_configs_are_at_upstream_defaults(method):
    """objectives.md 2.4 (sd3_geneval; AdvantageFlow reuses it, 3.4): N 10 / eval 40, no CFG, J 9, groups of
    24 x 48 prompts, one step per epoch, KL 1e-4 under train.beta and the mixing coefficient under
    train.nft_beta (trap 11), old decay type 1, lr 3e-4, EMA 0.9; AdvantageFlow's lambda 2, x0 weighting."""
    cfg = load_config(REPO / "configs" / f"sd35m_geneval_{method}_8gpu.yaml")
    s, t = cfg.sample, cfg.train
    assert cfg.method == method and cfg.pretrained.model == "stabilityai/stable-diffusion-3.5-medium"
    assert (s.num_steps, s.eval_num_steps, s.guidance_scale, int(s.num_steps * t.timestep_fraction)) == (10, 40, 1.0, 9)
    assert (s.num_image_per_prompt, s.prompts_per_epoch, s.zero_std_policy, s.global_std) == (24, 48, "keep", True)
    assert (t.beta, t.steps_per_epoch, t.learning_rate, t.adam_weight_decay, t.max_grad_norm) == (1e-4, 1, 3e-4, 1e-4, 1.0)
    assert (t.adv_clip_max, t.old_decay_type, t.ema, t.ema_decay, t.ema_update_step_interval) == (5.0, 1, True, 0.9, 1)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.type, cfg.resolution, cfg.mixed_precision) == (32, 64, "attn", 512, "fp16")
    if method == "diffusionnft":
        assert t.nft_beta == 1.0
    else:
        assert (t.af_lambda, t.af_weighting) == (2.0, "x0")
    assert cfg.resolved(8)["derived"]["gradient_accumulation_steps"] == 16
    # the mixing coefficient and lambda are their method's keys only (trap 11)
    with pytest.raises(ConfigError, match="'train.nft_beta' is not read by method=advantageflow"):
        config_from_dict({"method": "advantageflow", "train": {"nft_beta": 0.1}})
    with pytest.raises(ConfigError, match="'train.af_lambda' is not read by method=diffusionnft"):
        config_from_dict({"method": "diffusionnft", "train": {"af_lambda": 4.0}})
    with pytest.raises(ConfigError, match="af_lambda"):
        config_from_dict({"method": "advantageflow", "train": {"af_lambda": 0.5}})  # <= max |A~| = 1 (trap 13)


def test_set_method_switches_the_quickstart_to_nft_and_advantageflow():
    for method in ("diffusionnft", "advantageflow"):
        cfg = load_config(REPO / "configs" / "quickstart.yaml", overrides=[f"method={method}"])
        assert cfg.method == method and cfg.train.timestep_fraction == 0.99 and cfg.train.beta == 1e-4


def test_advantageflow_is_labelled_derived():
    """The leaderboard's method column and the checkpoint page show AdvantageFlow as derived (objectives 3)."""
    from trainers.awm.config import method_label

    assert method_label("advantageflow") == "advantageflow (derived)"
    assert [method_label(m) for m in ("awm", "flow_grpo", "diffusionnft")] == ["awm", "flow_grpo", "diffusionnft"]


def test_method_reaches_the_run_params_and_mlflow_params():
    """The store's run params (the leaderboard's method column and filter) and the MLflow params come
    from the resolved config, which carries the method."""
    from awm_platform.config import resolved_config
    from awm_platform.runner.tracking import run_params
    from awm_platform.store.store import leaderboard_params

    for method in ("awm", "flow_grpo"):
        resolved = resolved_config(config_from_dict({"method": method}), 1)
        rows = {r["key"]: r for r in leaderboard_params(resolved)}
        assert rows["method"]["text_value"] == method
        assert run_params(resolved)["method"] == method


@pytest.mark.parametrize("method", ["diffusionnft", "advantageflow"])
def test_nft_and_advantageflow_refuse_cfg_rollouts(method):
    with pytest.raises(ConfigError, match=f"method={method} rolls out and trains without CFG: sample.guidance_scale"):
        config_from_dict({"method": method, "sample": {"guidance_scale": 4.5}})
    assert config_from_dict({"method": method, "eval": {"guidance_scale": 4.5}}).eval.guidance_scale == 4.5
