"""PickScore with a tiny randomly initialised CLIP (built from a config, saved to tmp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.pickscore import VERSION
from benchmarks.pickscore.benchmark import DEFAULT_MODEL, DEFAULT_PROCESSOR, PickScoreBenchmark
from benchmarks.pickscore.nsfw import is_nsfw
from benchmarks.pickscore.testing import build_tiny_pickscore
from tests.benchmarks.conformance import pattern_image

PROMPTS = ["a red apple on a table", "a cat in a wizard hat", "a lighthouse at dusk, watercolor",
           "an astronaut riding a horse", "a bowl of ramen, studio photo"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_pickscore(tmp_path_factory.mktemp("tiny-pickscore"))


@pytest.fixture(scope="module")
def bench(tiny):
    model_dir, proc_dir = tiny
    return PickScoreBenchmark(model_path=str(model_dir), processor_path=str(proc_dir), device="cpu")


def images(n=5):
    return [pattern_image(i, (64 + 8 * i, 48 + 4 * i)) for i in range(n)]


def independent_scores(model_dir, proc_dir, ims, prompts):
    """Reference: full CLIPModel forward; logits_per_text = logit_scale.exp() * txt @ img.T; take the diagonal."""
    from transformers import CLIPModel, CLIPProcessor

    proc = CLIPProcessor.from_pretrained(proc_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    inp = proc(text=prompts, images=[im.convert("RGB") for im in ims], padding=True, truncation=True,
               max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(**inp)
    return torch.diagonal(out.logits_per_text).double().numpy()


def test_identity(bench):
    assert bench.version == VERSION == "pickscore-1.0"
    assert bench.engine == f"transformers:{bench.model_path}|processor={bench.processor_path}"
    assert PickScoreBenchmark().engine == f"transformers:{DEFAULT_MODEL}"
    assert bench.check_models().available


def test_formula_matches_independent_computation(bench, tiny):
    ims = images()
    outs = bench.score_batch(ims, PROMPTS, [{}] * 5)
    ref = independent_scores(*tiny, ims, PROMPTS)
    raw = np.array([o["raw_score"] for o in outs])
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-4)
    for o in outs:
        assert o["score"] == o["raw_score"]  # reported metric = raw PickScore
        assert o["reward"] == pytest.approx(o["raw_score"] / 26)
    # logit_scale really multiplies: the tiny model is initialised with exp(scale) ~= 100
    assert float(bench._model.logit_scale.exp()) == pytest.approx(100.0, rel=1e-3)


def test_training_reward_is_score_over_26(bench):
    ims = images(3)
    r = bench.as_reward()(ims, PROMPTS[:3], [{}] * 3)
    assert set(r) == {"pickscore"}
    raw = np.array([o["score"] for o in bench.score_batch(ims, PROMPTS[:3])])
    np.testing.assert_allclose(r["pickscore"], raw / 26, rtol=1e-5)


def test_batching_invariance(tiny):
    model_dir, proc_dir = tiny
    ims = images()
    a = PickScoreBenchmark(model_path=str(model_dir), processor_path=str(proc_dir), device="cpu", batch_size=1)
    b = PickScoreBenchmark(model_path=str(model_dir), processor_path=str(proc_dir), device="cpu", batch_size=32)
    sa = [o["score"] for o in a.score_batch(ims, PROMPTS)]
    sb = [o["score"] for o in b.score_batch(ims, PROMPTS)]
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-4)


def test_truncation_at_77_tokens(bench):
    words = [f"word{i}" for i in range(200)]
    long_caption = " ".join(words)
    tok = bench._load()[0].tokenizer
    assert len(tok(long_caption)["input_ids"]) > 77  # really longer than the context
    truncated = " ".join(words[:40])  # 40 words are already > 77 character-level tokens
    assert len(tok(truncated)["input_ids"]) > 77
    im = images(1) * 2
    outs = bench.score_batch(im, [long_caption, truncated])
    assert np.isfinite(outs[0]["score"])
    assert outs[0]["score"] == pytest.approx(outs[1]["score"], abs=1e-5)
    other = bench.score_batch(im[:1], [" ".join(words[:5])])[0]["score"]
    assert other != pytest.approx(outs[0]["score"], abs=1e-5)  # sanity: text does matter


def test_non_rgb_images_are_converted(bench):
    base = pattern_image(2, (64, 64))
    outs = bench.score_batch([base.convert("L"), base.convert("L").convert("RGB")], PROMPTS[:1] * 2)
    assert outs[0]["score"] == pytest.approx(outs[1]["score"], abs=1e-4)


def test_missing_local_model_names_path(tmp_path, tiny):
    missing = tmp_path / "weights-not-here"
    b = PickScoreBenchmark(model_path=str(missing), processor_path=str(tiny[1]), device="cpu")
    st = b.check_models()
    assert not st.available and str(missing) in st.detail
    with pytest.raises(ModelUnavailableError) as e:
        b.score_batch(images(1), PROMPTS[:1])
    msg = str(e.value)
    assert str(missing) in msg and "reward_kwargs.pickscore.model_path" in msg and "HF_HOME" in msg


def test_offline_hub_ids_raise_clear_error(monkeypatch, tmp_path, tiny):
    """Default ids, no network (HF_HUB_OFFLINE=1 in tests) and no cache -> ModelUnavailableError naming the id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = PickScoreBenchmark(processor_path=str(tiny[1]), device="cpu")
    assert not b.allow_download
    st = b.check_models()
    assert not st.available and DEFAULT_MODEL in st.detail
    with pytest.raises(ModelUnavailableError) as e:
        b.score_batch(images(1), PROMPTS[:1])
    assert DEFAULT_MODEL in str(e.value) and "model_path" in str(e.value)
    b2 = PickScoreBenchmark(device="cpu")
    with pytest.raises(ModelUnavailableError, match="processor_path"):
        b2.score_batch(images(1), PROMPTS[:1])
    assert DEFAULT_PROCESSOR in b2.check_models().detail


def test_bad_options():
    with pytest.raises(BenchmarkError, match="engine"):
        PickScoreBenchmark(engine="onnx")
    with pytest.raises(BenchmarkError, match="dtype"):
        PickScoreBenchmark(dtype="int8")
    with pytest.raises(BenchmarkError, match="batch_size"):
        PickScoreBenchmark(batch_size=0)


def test_reward_module(tiny):
    from benchmarks.pickscore.reward import make_reward

    fn = make_reward(model_path=str(tiny[0]), processor_path=str(tiny[1]), device="cpu")
    r = fn(images(2), PROMPTS[:2], [{}, {}])
    assert set(r) == {"pickscore"} and r["pickscore"].shape == (2,)


# ------------------------------------------------------------------------ prompts / NSFW
def test_prompt_sets_and_nsfw_flags():
    sets = PickScoreBenchmark().prompt_sets()
    assert len(sets["test"]) == 2048 and len(sets["train"]) == 25432
    flags = [m["nsfw"] for m in sets["test"].metadata]
    assert 0 < sum(flags) < 200
    assert flags == [is_nsfw(p) for p in sets["test"].prompts]


@pytest.mark.parametrize(
    "caption, flagged",
    [("a naked man on a beach", True), ("NSFW art", True), ("sexy pose", True), ("Pornographic", True),
     ("a cute cat", False), ("Sussex cocktail class", False), ("an assassin in the grass", False),
     ("a scrabble board", False), ("", False)],
)
def test_is_nsfw(caption, flagged):
    assert is_nsfw(caption) is flagged
