"""The evaluation spec: defaults resolved from the model and the benchmark, what the spec hash,
the benchmark version and the generation key cover (and what they must not)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from awm_platform.config import ExperimentConfig, load_config
from awm_platform.evals.spec import (
    EvalServiceConfig,
    ModelContext,
    benchmark_version,
    generation_key,
    plan_evaluation,
    resolve_spec,
    shard_batches,
)
from awm_platform.store import compare_hash
from benchmarks.registry import get_benchmark
from trainers.awm.config import ConfigError

RUN = ModelContext(model="/models/sd35m", revision="main", family="sd3", resolution=512, precision="bf16",
                   max_sequence_length=128, uses_cfg=False)
SHA = "c" * 64


def test_defaults_follow_the_model_and_the_benchmark() -> None:
    service = EvalServiceConfig()
    ocr, geneval = get_benchmark("ocr", workers=1), get_benchmark("geneval")
    spec = resolve_spec(service, ocr, RUN)
    assert (spec.num_steps, spec.guidance_scale, spec.resolution, spec.samples_per_prompt, spec.precision,
            spec.weights, spec.limit, spec.partial) == (40, 1.0, 512, 1, "bf16", "policy", None, False)
    assert resolve_spec(service, geneval, RUN).samples_per_prompt == 4  # the official protocol
    with_cfg = ModelContext(**{**RUN.__dict__, "uses_cfg": True})
    assert resolve_spec(service, ocr, with_cfg).guidance_scale == 4.5  # as Flow-GRPO evaluates SD3.5
    # base:MODEL follows the command's config like a run, so its row has the runs' spec (comparable)
    base = ModelContext.from_config(ExperimentConfig(pretrained={"model": "/m"}), is_base=True)
    base_spec = resolve_spec(service, ocr, base, "ema")
    assert (base_spec.weights, base_spec.guidance_scale, base_spec.model) == ("base", 1.0, "/m")
    cfg_base = ModelContext.from_config(ExperimentConfig(pretrained={"model": "/m"}, sample={"guidance_scale": 4.5}),
                                        is_base=True)
    assert resolve_spec(service, ocr, cfg_base).guidance_scale == 4.5


def test_overrides_per_benchmark_beat_service_defaults() -> None:
    service = EvalServiceConfig(num_steps=20, guidance_scale=2.0, limit=10,
                                per_benchmark={"ocr": {"num_steps": 8, "samples_per_prompt": 2, "limit": 5}})
    ocr = resolve_spec(service, get_benchmark("ocr", workers=1), RUN)
    pick = resolve_spec(service, get_benchmark("pickscore"), RUN)
    assert (ocr.num_steps, ocr.samples_per_prompt, ocr.limit, ocr.guidance_scale) == (8, 2, 5, 2.0)
    assert (pick.num_steps, pick.samples_per_prompt, pick.limit) == (20, 1, 10)
    assert ocr.partial and pick.partial


def test_spec_hash_covers_what_changes_numbers_only() -> None:
    ocr = get_benchmark("ocr", workers=1)
    base = resolve_spec(EvalServiceConfig(), ocr, RUN)
    same = resolve_spec(EvalServiceConfig(shards=16, lease_s=5, max_attempts=9), ocr, RUN)
    assert base.hash == same.hash
    for change in ({"num_steps": 39}, {"seed": 1}, {"resolution": 256}, {"guidance_scale": 4.5},
                   {"precision": "fp32"}, {"weights": "ema"}, {"limit": 3}, {"samples_per_prompt": 2},
                   {"batch_size": 4}):
        assert resolve_spec(EvalServiceConfig(**change), ocr, RUN).hash != base.hash, change
    other_model = ModelContext(**{**RUN.__dict__, "model": "/models/other"})
    assert resolve_spec(EvalServiceConfig(), ocr, other_model).hash != base.hash


def test_auto_family_and_an_unset_guidance_hash_as_what_they_mean(tmp_path: Path) -> None:
    """The spec records `pretrained.family: auto` resolved from the local model folder (a run saying
    `auto` and one saying `sd3` get one evaluation, one view); a None guidance is left out of the
    compare hash as out of the spec hash (evaluations stored before the key existed stay comparable)."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    ocr = get_benchmark("ocr", workers=1)
    explicit = ModelContext(**{**RUN.__dict__, "model": str(model)})
    auto = resolve_spec(EvalServiceConfig(), ocr, ModelContext(**{**explicit.__dict__, "family": "auto"}))
    assert auto.family == "sd3" and auto.hash == resolve_spec(EvalServiceConfig(), ocr, explicit).hash
    unseen = ModelContext(**{**RUN.__dict__, "family": "auto"})  # /models/sd35m is not on this host
    assert resolve_spec(EvalServiceConfig(), ocr, unseen).family == "auto"
    spec = auto.model_dump(mode="json")
    before_the_key = {k: v for k, v in spec.items() if k != "guidance"}
    assert spec["guidance"] is None
    assert compare_hash("ocr", "v1", spec, False) == compare_hash("ocr", "v1", before_the_key, False)
    assert compare_hash("ocr", "v1", {**spec, "guidance": 5.0}, False) != compare_hash("ocr", "v1", spec, False)


def test_generation_key_ignores_limit_and_benchmark_version(tmp_path: Path) -> None:
    ocr = get_benchmark("ocr", workers=1)
    full = plan_evaluation(EvalServiceConfig(), ocr, RUN, SHA)
    first8 = plan_evaluation(EvalServiceConfig(limit=8), ocr, RUN, SHA)
    assert full.generation_key == first8.generation_key  # the first 8 prompts' images are the same images
    assert full.spec.hash != first8.spec.hash and (full.num_prompts, first8.num_prompts) == (1018, 8)
    assert generation_key("d" * 64, full.spec, full.prompt_sha256) != full.generation_key
    assert plan_evaluation(EvalServiceConfig(num_steps=10), ocr, RUN, SHA).generation_key != full.generation_key


def test_benchmark_version_covers_scorer_weights_and_prompts(tmp_path: Path) -> None:
    pick = get_benchmark("pickscore")
    weights = tmp_path / "pickscore"
    weights.mkdir()
    (weights / "config.json").write_text('{"projection_dim": 1024}')
    (weights / "model.safetensors").write_bytes(b"0" * 10)
    opts = {"model_path": str(weights)}
    v1 = benchmark_version(pick, opts, "a" * 64)
    assert v1.startswith(pick.version + "+") and len(v1) <= 64
    assert benchmark_version(pick, opts, "a" * 64) == v1
    assert benchmark_version(pick, opts, "b" * 64) != v1  # another prompt file
    (weights / "model.safetensors").write_bytes(b"1" * 10)  # retrained in place: same name, same size
    os.utime(weights / "model.safetensors", ns=(1, 1))  # (a later mtime; the clock may not have ticked)
    v2 = benchmark_version(pick, opts, "a" * 64)
    assert v2 != v1
    (weights / "model.safetensors").write_bytes(b"0" * 10)  # the first weights again
    os.utime(weights / "model.safetensors", ns=(2, 2))
    assert benchmark_version(pick, opts, "a" * 64) == v1


def test_shards_deal_fixed_batches() -> None:
    ocr = get_benchmark("ocr", workers=1)
    for n_prompts, samples, batch, n_shards in ((10, 1, 3, 3), (2, 4, 3, 5), (1018, 1, 8, 16), (7, 4, 8, 2)):
        spec = resolve_spec(EvalServiceConfig(samples_per_prompt=samples, batch_size=batch), ocr, RUN)
        shards = [shard_batches(n_prompts, spec, k, n_shards) for k in range(n_shards)]
        flat = sorted(item for shard in shards for b in shard for item in b)
        assert flat == [(p, s) for p in range(n_prompts) for s in range(samples)]  # each pair exactly once
        one = shard_batches(n_prompts, spec, 0, 1)
        assert sorted(b for shard in shards for b in shard) == sorted(one)  # the same batches, dealt out
        assert all(len(b) == batch for b in one[:-1])


def test_a_partial_evaluation_uses_the_full_evaluations_batches() -> None:
    """Batches are cut over the whole prompt set: the first N prompts' images are made in the same
    batches as in the full evaluation (so cached images are shared bit for bit)."""
    ocr = get_benchmark("ocr", workers=1)
    full = resolve_spec(EvalServiceConfig(batch_size=4, samples_per_prompt=2), ocr, RUN)
    part = resolve_spec(EvalServiceConfig(batch_size=4, samples_per_prompt=2, limit=3), ocr, RUN)
    full_batches = shard_batches(10, full, 0, 1)
    part_batches = shard_batches(10, part, 0, 1)
    assert part_batches == full_batches[:2]  # 3 prompts x 2 samples = 6 pairs: 2 batches of 4
    assert part_batches[-1] == [(2, 0), (2, 1), (3, 0), (3, 1)]  # prompt 3 is made, not scored


def test_config_rejects_unknown_benchmarks_and_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrained: {model: /m}\nreward_fn: {jpeg_compressibility: 1.0}\n"
                   "eval:\n  on_checkpoint: [ocr, genevall]\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: 'eval.on_checkpoint': unknown benchmark 'genevall'"):
        load_config(cfg)
    cfg.write_text("pretrained: {model: /m}\nreward_fn: {jpeg_compressibility: 1.0}\n"
                   "eval:\n  service:\n    per_benchmark: {ocr: {num_stepz: 3}}\n")
    with pytest.raises(ConfigError, match="did you mean 'eval.service.per_benchmark.ocr.num_steps'"):
        load_config(cfg)
    cfg.write_text("pretrained: {model: /m}\nreward_fn: {jpeg_compressibility: 1.0}\n"
                   "eval:\n  on_checkpoint: [ocr]\n  service: {num_steps: 4, weights_dirs: {pickscore: {model_path: /w}}}\n")
    loaded = load_config(cfg)
    assert loaded.eval.on_checkpoint == ["ocr"] and loaded.eval.service.num_steps == 4
    assert loaded.eval.max_prompts is None  # the trainer's in-loop keys are untouched
