"""The experiment spec: validation messages, overrides, derived topology, redaction, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from awm_platform.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_hash,
    derive_topology,
    flatten,
    load_config,
    resolved_config,
)
from awm_platform.redaction import redact


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_are_upstream_awm_values() -> None:
    cfg = ExperimentConfig()
    t, s = cfg.train, cfg.sample
    assert (t.learning_rate, t.beta, t.ema_beta, t.kl_ema_decay, t.kl_ema_decay_type) == (3e-4, 0.001, 1.0, 0.3, "linear")
    assert (t.adv_clip_max, t.advantage_max, t.clip_range, t.loss_type) == (5.0, 1.0, 1.0, "exp_first")
    assert (t.weighting, t.ghuber_power, t.train_timesteps, t.timestep_fraction) == ("ghuber", 0.25, 6, 0.9)
    assert (t.ema_decay, t.max_grad_norm, t.adam_weight_decay, t.use_sa_solver) == (0.99, 1.0, 1e-4, True)
    assert (s.num_steps, s.eval_num_steps, s.guidance_scale, s.num_image_per_prompt) == (14, 40, 1.0, 24)
    assert (s.noise_level, s.noise_window, s.global_std) == (0.4, (0.3, 0.9), True)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.init, cfg.lora.type) == (32, 64.0, "gaussian", "attn")
    assert cfg.time_type == "discrete_wo_init" and cfg.time_shift == 3.0 and cfg.seed == 42


def test_unknown_key_names_file_line_key_and_closest_match(tmp_path: Path) -> None:
    path = write(tmp_path, "name: r1\ntrain:\n  learning_rate: 0.001\n  betta: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:4" in msg and "unknown key 'train.betta'" in msg and "did you mean 'train.beta'" in msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian'; did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  beta: 0.1\n"))


def test_out_of_range_names_key_and_bound(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exp.yaml:3: 'train.beta' must be >= 0.0, got -1"):
        load_config(write(tmp_path, "name: r\ntrain:\n  beta: -1\n"))
    with pytest.raises(ConfigError, match=r"'train.ghuber_power' must be <= 1.0"):
        load_config(write(tmp_path, "train:\n  ghuber_power: 2\n"))


def test_wrong_type_and_choice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'train.weighting'.*'Uniform', 't', 't\*\*2', 'huber' or 'ghuber'"):
        load_config(write(tmp_path, "train:\n  weighting: cubic\n"))
    with pytest.raises(ConfigError, match=r"'sample.num_steps'.*integer"):
        load_config(write(tmp_path, "sample:\n  num_steps: many\n"))


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"exp.yaml:4: not valid YAML: mapping values are not allowed"):
        load_config(write(tmp_path, "name: r\ntrain:\n  beta: 1\n    x: 2\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found: /nonexistent.yaml"):
        load_config("/nonexistent.yaml")


def test_dotted_overrides_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "name: r\npretrained: {model: m}\nreward_fn: {jpeg_compressibility: 1.0}\n"
                           "train:\n  beta: 0.001\n")
    cfg = load_config(path, ["train.beta=0.003", "train.weighting=t**2", "sample.noise_window=[0.2, 0.8]",
                             "reward_fn.jpeg_compressibility=0.5", "launcher.extra_sbatch=['--exclusive']"])
    assert cfg.train.beta == 0.003 and cfg.train.weighting == "t**2"
    assert cfg.sample.noise_window == (0.2, 0.8)
    assert cfg.reward_fn == {"jpeg_compressibility": 0.5}
    assert cfg.launcher.extra_sbatch == ["--exclusive"]
    with pytest.raises(ConfigError, match="unknown key 'train.bta'; did you mean 'train.beta'"):
        load_config(path, ["train.bta=1"])
    with pytest.raises(ConfigError, match="must look like dotted.key=value"):
        load_config(path, ["train.beta"])


def test_a_config_file_must_name_the_model_and_the_reward(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, ""))
    msg = str(err.value)
    assert "missing required key 'pretrained.model'" in msg and "missing required key 'reward_fn'" in msg
    # reported together with the other errors, and satisfied by either spelling / an override
    with pytest.raises(ConfigError, match=r"(?s)'train.beta' must be >= 0.0.*missing required key 'reward_fn'"):
        load_config(write(tmp_path, "pretrained: {model: m}\ntrain: {beta: -1}\n"))
    cfg = load_config(write(tmp_path, "rewards: {ocr: 1.0}\n"), ["pretrained.model=m"])
    assert cfg.pretrained.model == "m" and cfg.reward_fn == {"ocr": 1.0}


def test_non_finite_numbers_are_rejected_as_such(tmp_path: Path) -> None:
    for value in (".nan", ".inf", "-.inf"):
        with pytest.raises(ConfigError, match=r"exp.yaml:2: 'train.learning_rate' must be a finite number"):
            load_config(write(tmp_path, f"train:\n  learning_rate: {value}\n"))


def test_derived_work_per_epoch_has_an_overridable_ceiling(tmp_path: Path) -> None:
    path = write(tmp_path, "pretrained: {model: m}\nreward_fn: {jpeg_compressibility: 1.0}\n"
                           "sample: {prompts_per_epoch: 100000000000, num_image_per_prompt: 2}\ntrain: {batch_size: 1}\n")
    with pytest.raises(ConfigError, match=r"200000000000 images per epoch exceeds sample.max_images_per_epoch=100000"):
        load_config(path)
    big = load_config(path, ["sample.prompts_per_epoch=60000", "sample.max_images_per_epoch=120000"])
    assert big.topology().images_per_epoch == 120000


def test_unreadable_config_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text \(byte 0xff at offset 6\)"):
        load_config(binary)


def test_aliases_override_each_other_and_hints_never_suggest_the_same_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: from-file\npretrained: {model: m}\nreward_fn: {jpeg_compressibility: 1.0}\n")
    assert load_config(path, ["run_name=from-cli"]).name == "from-cli"
    both = write(tmp_path, "name: a\nrun_name: b\npretrained: {model: m}\nreward_fn: {ocr: 1.0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(both)
    msg = str(err.value)
    assert "'run_name' and another spelling of the same key are both set (name / run_name)" in msg
    assert "did you mean 'run_name'" not in msg
    with pytest.raises(ConfigError) as err:
        load_config(path, ["nmae=x"])
    valid = str(err.value).split("valid keys here: ")[1].rstrip(")").split(", ")
    assert len(valid) == len(set(valid)) and "name" in valid and "run_name" in valid


def test_run_name_alias_and_validation() -> None:
    assert config_from_dict({"run_name": "legacy-name"}).name == "legacy-name"
    with pytest.raises(ConfigError, match="invalid run name"):
        config_from_dict({"name": "../escape"})


def test_rewards_alias_and_options() -> None:
    cfg = config_from_dict({"rewards": {"ocr": 1.0}, "reward_kwargs": {"ocr": {"engine": "rapidocr"}}})
    assert cfg.reward_fn == {"ocr": 1.0}
    with pytest.raises(ConfigError, match="reward_kwargs has options for rewards not in reward_fn: \\['pickscore'\\]"):
        config_from_dict({"reward_fn": {"ocr": 1.0}, "reward_kwargs": {"pickscore": {}}})


def test_unknown_reward_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown reward 'jpeg_compressability' \\(did you mean 'jpeg_compressibility'"):
        config_from_dict({"reward_fn": {"jpeg_compressability": 1.0}})
    assert config_from_dict({"reward_fn": {"mypkg.rewards:aesthetic": 1.0}}).reward_fn == {"mypkg.rewards:aesthetic": 1.0}


def test_group_size_one_with_per_prompt_stats_is_rejected() -> None:
    with pytest.raises(ConfigError, match="num_image_per_prompt=1 with per_prompt_stat_tracking"):
        config_from_dict({"sample": {"num_image_per_prompt": 1, "prompts_per_epoch": 4}, "train": {"batch_size": 1}})
    cfg = config_from_dict({"per_prompt_stat_tracking": False,
                            "sample": {"num_image_per_prompt": 1, "prompts_per_epoch": 4}, "train": {"batch_size": 1}})
    assert cfg.topology(1).images_per_epoch == 4


def test_training_cfg_true_is_rejected_with_reason() -> None:
    # CFG in training is Flow-GRPO's (train.cfg); AWM's upstream train.cfg=True is broken (README)
    with pytest.raises(ConfigError, match=r"'train.cfg' is not read by method=awm \(only by flow_grpo\)"):
        config_from_dict({"train": {"cfg": True}})


# ---- topology: science quantities primary, per-process values derived -------------------
UPSTREAM_GENEVAL = {"sample": {"num_image_per_prompt": 24, "prompts_per_epoch": 72, "max_batch_size_per_gpu": 6},
                    "train": {"batch_size": 3}}


@pytest.mark.parametrize(("world", "rounds", "micro"), [(8, 36, 72), (32, 9, 18)])
def test_topology_reproduces_upstream_geneval_layout(world: int, rounds: int, micro: int) -> None:
    topo = derive_topology(config_from_dict(UPSTREAM_GENEVAL), world)
    assert topo.sample_train_batch_size == 6 and topo.sample_num_batches_per_epoch == rounds
    assert topo.train_num_batches_per_epoch == micro == topo.gradient_accumulation_steps  # one step per epoch


def test_same_config_same_images_per_update_at_1_8_32_processes() -> None:
    cfg = config_from_dict(UPSTREAM_GENEVAL)
    topos = [derive_topology(cfg, w) for w in (1, 8, 32)]
    assert {t.images_per_update for t in topos} == {1728}
    for t in topos:
        # every image of the epoch is sampled exactly once and trained exactly once
        assert t.world_size * t.sample_train_batch_size * t.sample_num_batches_per_epoch == 1728
        assert t.world_size * t.train_batch_size * t.gradient_accumulation_steps * t.steps_per_epoch == 1728


@given(k=st.integers(2, 32), m=st.integers(1, 96), w=st.sampled_from([1, 2, 4, 8, 16, 32]),
       b=st.integers(1, 8), steps=st.integers(1, 4))
def test_derived_topology_is_consistent_or_rejected(k: int, m: int, w: int, b: int, steps: int) -> None:
    data = {"sample": {"num_image_per_prompt": k, "prompts_per_epoch": m}, "train": {"batch_size": b, "steps_per_epoch": steps}}
    cfg = ExperimentConfig.model_validate(data)
    try:
        t = derive_topology(cfg, w)
    except ConfigError as exc:
        assert "divisible" in str(exc) or "does not divide" in str(exc)
        return
    assert t.images_per_update * steps == m * k
    assert t.gradient_accumulation_steps >= 1 and t.sample_train_batch_size <= cfg.sample.max_batch_size_per_gpu
    assert t.world_size * t.images_per_process == m * k


def test_impossible_combinations_are_rejected_before_submission() -> None:
    with pytest.raises(ConfigError, match="not divisible by the world size 7"):
        config_from_dict(UPSTREAM_GENEVAL, world_size=7)
    with pytest.raises(ConfigError, match="train.batch_size=5 does not divide"):
        config_from_dict({**UPSTREAM_GENEVAL, "train": {"batch_size": 5}}, world_size=8)
    with pytest.raises(ConfigError, match="train.steps_per_epoch=5 does not divide the 72 micro-batches"):
        config_from_dict({**UPSTREAM_GENEVAL, "train": {"batch_size": 3, "steps_per_epoch": 5}}, world_size=8)


def test_pinned_upstream_keys_must_agree() -> None:
    ok = {"sample": {**UPSTREAM_GENEVAL["sample"], "train_batch_size": 6, "num_batches_per_epoch": 36},
          "train": {"batch_size": 3, "gradient_accumulation_steps": 72}}
    assert derive_topology(config_from_dict(ok, world_size=8), 8).gradient_accumulation_steps == 72
    with pytest.raises(ConfigError, match="sample.num_batches_per_epoch=36 \\(pinned\\) disagrees with the derived 9"):
        config_from_dict(ok, world_size=32)
    bad = {**ok, "train": {"batch_size": 3, "gradient_accumulation_steps": 10}}
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=10 \\(pinned\\) disagrees with the derived 72"):
        config_from_dict(bad, world_size=8)


def test_signal_delay_must_fit_in_the_time_limit() -> None:
    with pytest.raises(ConfigError, match="launcher.signal_delay_s=120 must be shorter than the time limit"):
        config_from_dict({"launcher": {"time_min": 2, "signal_delay_s": 120}})


def test_world_size_defaults_to_launcher_layout() -> None:
    cfg = config_from_dict({**UPSTREAM_GENEVAL, "launcher": {"nodes": 4, "gpus_per_node": 8}})
    assert cfg.topology().world_size == 32 and cfg.topology().sample_num_batches_per_epoch == 9


# ---- resolved config, secrets, hash ----------------------------------------------------
def test_resolved_config_has_derived_values_and_no_secrets() -> None:
    cfg = config_from_dict({
        "storage": {"url": "postgresql+psycopg://awm:s3cret@db:5432/awm"},
        "tracking": {"uri": "http://user:tok@mlflow:5000"},
        "launcher": {"setup": ["export HF_TOKEN=hf_abcdef", "module load cuda"]},
        "reward_kwargs": {"jpeg_compressibility": {"api_key": "xyz", "quality": 95}},
    })
    res = resolved_config(cfg, 1)
    text = repr(res)
    for secret in ("s3cret", "tok@", "hf_abcdef", "xyz"):
        assert secret not in text
    assert res["storage"]["url"] == "postgresql+psycopg://awm:***@db:5432/awm"
    assert res["launcher"]["setup"] == ["export HF_TOKEN=***", "module load cuda"]
    assert res["reward_kwargs"]["jpeg_compressibility"] == {"api_key": "***", "quality": 95}
    assert res["derived"]["images_per_update"] == 72 * 24
    assert "train.beta" in flatten(res)


def test_redact_leaves_plain_values_alone() -> None:
    assert redact({"url": "sqlite:////tmp/x.db", "n": 3, "password": None}) == {"url": "sqlite:////tmp/x.db", "n": 3,
                                                                                 "password": None}


def test_config_hash_is_stable_and_sensitive() -> None:
    a = config_from_dict({"train": {"beta": 0.001}})
    b = config_from_dict({"train": {"beta": 0.001}, "sample": {"num_steps": 14}})  # same values, explicit
    c = config_from_dict({"train": {"beta": 0.002}})
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert len(config_hash(a)) == 16


def test_example_configs_are_valid(repo_root: Path) -> None:
    configs = sorted((repo_root / "configs").glob("*.yaml"))
    assert configs, "configs/ must hold example experiment configs"
    for path in configs:
        load_config(path)
