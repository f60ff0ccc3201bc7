"""Unit tests of the trainer's building blocks (no training loop)."""

from __future__ import annotations

import io
import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


# ----------------------------------------------------------------------------- rewards
def test_jpeg_rewards_match_ddpo():
    from trainers.awm.rewards import build_reward_fn

    ims = _images() + [Image.new("RGB", (32, 32), (128, 128, 128))]
    expected = []
    for im in ims:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
        expected.append(buf.tell() / 1000)
    comp = build_reward_fn("jpeg_compressibility")(ims, [""] * 4, [{}] * 4)["jpeg_compressibility"]
    inc = build_reward_fn("jpeg_incompressibility")(ims, [""] * 4, [{}] * 4)["jpeg_incompressibility"]
    np.testing.assert_allclose(inc, expected)
    np.testing.assert_allclose(comp, -np.asarray(expected))
    assert comp[-1] > comp[0]  # a flat image compresses better than noise


def test_combined_reward_weights_and_components():
    from trainers.awm.rewards import CombinedReward

    r = CombinedReward({"jpeg_compressibility": 2.0, "jpeg_incompressibility": 0.5})
    out = r(_images(), ["a"] * 3, [{}] * 3)
    assert set(out) == {"jpeg_compressibility", "jpeg_incompressibility", "avg"}
    np.testing.assert_allclose(out["avg"], 2.0 * out["jpeg_compressibility"] + 0.5 * out["jpeg_incompressibility"])


def test_reward_registry_errors_and_custom_factory():
    from benchmarks.errors import RewardError
    from benchmarks.registry import REWARDS
    from trainers.awm.rewards import build_reward_fn

    assert REWARDS["geneval"] == "benchmarks.geneval.reward:make_reward"
    with pytest.raises(RewardError, match="unknown reward"):
        build_reward_fn("no_such_reward")
    with pytest.raises(RewardError, match="takes no options"):
        build_reward_fn("jpeg_compressibility", {"x": 1})
    fn = build_reward_fn("benchmarks.jpeg:jpeg_compressibility")
    assert "jpeg_compressibility" in fn(_images(1), ["a"], [{}])


def test_async_reward_pool_overlaps():
    """submit returns while the reward is still running: the reward waits for an event that only the
    caller sets after submit returned (a blocking submit would see its future finished, after 60 s)."""
    import threading

    from trainers.awm.rewards import AsyncRewardPool

    started, release = threading.Event(), threading.Event()

    def gated(images, prompts, metadata):
        started.set()
        release.wait(60)
        return {"x": np.ones(len(images))}

    with AsyncRewardPool(gated) as pool:
        fut = pool.submit(_images(2), ["a", "b"], [{}, {}])
        assert not fut.done()  # submit did not wait for the reward
        assert started.wait(60)  # ... which runs in the pool's thread meanwhile
        assert not fut.done()
        release.set()
        assert fut.result(timeout=60)["x"].tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------- prompts
def test_group_sampler_complete_groups_and_determinism():
    from trainers.awm.prompts import GroupSampler, PromptError

    s = GroupSampler(num_prompts=16, seed=7, prompts_per_epoch=6, group_size=4)
    p0 = s.plan(0)
    assert len(p0.slots) == 24 and len(set(p0.prompt_ids)) == 6
    by_group: dict[int, list[int]] = {}
    for sl in p0.slots:
        by_group.setdefault(sl.group, []).append(sl.member)
        assert sl.prompt_index == p0.prompt_ids[sl.group]
    assert all(sorted(v) == [0, 1, 2, 3] for v in by_group.values())
    # dealing: contiguous blocks per rank, union is the plan
    parts = [p0.for_rank(r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [8, 8, 8] and [x for p in parts for x in p] == p0.slots
    # deterministic, epoch-dependent, world-size independent
    again = GroupSampler(num_prompts=16, seed=7, prompts_per_epoch=6, group_size=4)
    assert again.plan(0) == p0 and again.plan(1) != p0
    # more groups than prompts: every prompt used, duplicates only beyond n
    big = GroupSampler(num_prompts=3, seed=0, prompts_per_epoch=7, group_size=2).plan(0)
    assert sorted(set(big.prompt_ids)) == [0, 1, 2]
    st = s.state_dict()
    other = GroupSampler(num_prompts=15, seed=7, prompts_per_epoch=6, group_size=4)
    with pytest.raises(PromptError, match="num_prompts"):
        other.load_state_dict(st)


def test_seeds_are_distinct():
    from trainers.awm.prompts import eval_seed, rollout_seed, train_seed

    seeds = {rollout_seed(1, e, g, j) for e in range(3) for g in range(5) for j in range(4)}
    assert len(seeds) == 60
    assert rollout_seed(1, 0, 0, 0) != train_seed(1, 0, 0, 0) != eval_seed(1, 0)
    assert all(0 <= s < 2**63 for s in seeds)


def test_load_prompts_builtin_and_errors(tmp_path):
    from trainers.awm.prompts import PromptError, load_prompts

    tiny = load_prompts("tiny", "general_ocr", "train")
    assert len(tiny) >= 8 and all(m == {} for m in tiny.metadata)
    (tmp_path / "train.txt").write_text("a\nb\n")
    assert load_prompts(str(tmp_path), "general_ocr", "train").prompts == ["a", "b"]
    with pytest.raises(PromptError, match="no test split"):
        load_prompts(str(tmp_path), "general_ocr", "test")
    with pytest.raises(PromptError, match="neither a builtin"):
        load_prompts(str(tmp_path / "nope"), "general_ocr", "train")


# ----------------------------------------------------------------------------- checkpoints
def _write_ckpt(run, step, payload=b"x"):
    from trainers.awm import checkpoint as C

    tmp = C.prepare_tmp(run, step)
    (tmp / "state").mkdir()
    (tmp / "state" / "a.bin").write_bytes(payload * 100)
    return C.finalize(run, step, step, config_hash="h", formats=["diffusers"])


def test_checkpoint_atomic_validate_and_corruption(tmp_path):
    from trainers.awm import checkpoint as C

    run = tmp_path / "run"
    p1 = _write_ckpt(run, 1)
    p2 = _write_ckpt(run, 2)
    m = json.loads((p2 / "manifest.json").read_text())
    assert m["step"] == 2 and m["config_hash"] == "h" and set(m["files"]) == {"state/a.bin"}
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert C.find_latest_valid(run).path == p2
    # truncate a file of the newest checkpoint -> skipped with a warning
    (p2 / "state" / "a.bin").write_bytes(b"x")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        info = C.find_latest_valid(run)
    assert info.path == p1 and any("sha256 mismatch" in str(x.message) for x in w)
    # an interrupted write (temp folder, no manifest) is never picked
    C.prepare_tmp(run, 3)
    (run / "checkpoints" / "step-4").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert C.find_latest_valid(run).path == p1


def test_checkpoint_retention(tmp_path):
    from trainers.awm import checkpoint as C

    run = tmp_path / "run"
    for s in range(1, 8):
        last = _write_ckpt(run, s)
        C.apply_retention(run, keep_last=2, keep_every=3, protect=last)
    assert [s for s, _ in C.list_step_dirs(run)] == [3, 6, 7]


class _Evil:
    pass


def test_tensor_io_is_weights_only(tmp_path):
    import torch

    from trainers.awm import checkpoint as C

    C.save_torch(tmp_path / "x.pt", {"a": torch.ones(2), "n": 3})
    assert C.load_torch(tmp_path / "x.pt")["n"] == 3

    torch.save({"e": _Evil()}, tmp_path / "evil.pt")
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        C.load_torch(tmp_path / "evil.pt")


# ----------------------------------------------------------------------------- logging
def test_jsonl_logger_truncates_on_resume(tmp_path):
    from trainers.awm.logging import JsonlMetricLogger, read_jsonl_metrics

    path = tmp_path / "metrics.jsonl"
    lg = JsonlMetricLogger(path)
    for s in range(5):
        lg.log_metrics({"train/loss": float(s), "bad": math.nan}, s)
    lg.close()
    with open(path, "a") as f:
        f.write('{"type": "metr')  # torn line from a crash
    lg = JsonlMetricLogger(path)
    lg.on_resume(2)
    lg.log_metrics({"train/loss": 9.0}, 3)
    lg.close()
    rows = read_jsonl_metrics(path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["train/loss"] == 9.0 and rows[0]["bad"] is None
    lg = JsonlMetricLogger(path)
    lg.on_resume(None)
    lg.close()
    assert read_jsonl_metrics(path) == []


# ----------------------------------------------------------------------------- schedule
def test_lr_schedule_closed_form():
    from trainers.awm.recipe import _lr_lambda

    f = _lr_lambda(10, "cosine_then_constant")
    assert f(0) == pytest.approx(1.0) and f(5) == pytest.approx(2 / 3) and f(10) == pytest.approx(1 / 3)
    assert f(1000) == pytest.approx(1 / 3)
    assert _lr_lambda(1e10, "cosine_then_constant")(1000) == pytest.approx(1.0)
    assert _lr_lambda(10, "constant")(50) == 1.0
