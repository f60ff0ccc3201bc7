"""GenEval rewards: variants, components, upstream reward-path quirks (JPEG q=75, detector channel
swap), versions, and the trainer hook ``make_reward``.

The plumbing tests use small real implementations of the Detector / ColorClassifier interfaces
that record what they were given; the model tests use the tiny transformers models."""

from __future__ import annotations

import io
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.errors import BenchmarkError
from benchmarks.geneval import REWARD_VERSIONS, VERSION
from benchmarks.geneval.benchmark import GenEvalBenchmark, jpeg_roundtrip
from benchmarks.geneval.rules import Detection


class BoxDetector:
    """Reports a fixed list of (class, box, score) for every image; records its inputs."""

    def __init__(self, items):
        self.items = items
        self.seen: list[np.ndarray] = []

    def detect(self, images):
        out = []
        for im in images:
            self.seen.append(np.asarray(im).copy())
            h, w = im.height, im.width
            dets = []
            for cls, box, score in self.items:
                mask = np.zeros((h, w), bool)
                mask[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
                dets.append(Detection(cls, box, score, mask))
            out.append(dets)
        return out


class MeanColour:
    """Nearest primary by the mean of the non-gray crop pixels; records the crops."""

    PALETTE: ClassVar[dict[str, tuple[int, int, int]]] = {
        "red": (255, 0, 0),
        "green": (0, 255, 0),
        "blue": (0, 0, 255),
        "white": (255, 255, 255),
    }

    def __init__(self):
        self.crops: list[np.ndarray] = []

    def classify(self, crops, class_names):
        out = []
        for c in crops:
            a = np.asarray(c).reshape(-1, 3).astype(float)
            self.crops.append(np.asarray(c).copy())
            m = a.mean(0)
            out.append(min(self.PALETTE, key=lambda k: float(((np.array(self.PALETTE[k]) - m) ** 2).sum())))
        return out


def red_square(size=64):
    arr = np.full((size, size, 3), 20, np.uint8)
    arr[16:48, 16:48] = (230, 20, 20)
    return Image.fromarray(arr)


RED_DOG = {
    "tag": "colors",
    "include": [{"class": "dog", "count": 1, "color": "red"}],
    "prompt": "a photo of a red dog",
}
BENCH = {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}


def bench_with(items):
    det, col = BoxDetector(items), MeanColour()
    return GenEvalBenchmark(detector=det, color_classifier=col), det, col


def test_jpeg_roundtrip_is_pil_default_quality_75():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG")  # exactly what flow_grpo/rewards.py::geneval_score does
    upstream = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    np.testing.assert_array_equal(np.asarray(jpeg_roundtrip(im, 75)), upstream)
    assert not np.array_equal(np.asarray(jpeg_roundtrip(im, 95)), upstream)


def test_flowgrpo_reward_path_jpeg_then_swapped_channels_for_the_detector_only():
    bench, det, col = bench_with([("dog", (16, 16, 48, 48), 0.9)])
    im = red_square()
    r = bench.as_reward()([im], [RED_DOG["prompt"]], [RED_DOG])
    jpeg = np.asarray(jpeg_roundtrip(im, 75))
    np.testing.assert_array_equal(det.seen[-1], jpeg[..., ::-1])  # mmdet sees BGR-as-RGB
    np.testing.assert_array_equal(col.crops[-1], jpeg[16:48, 16:48])  # CLIP sees the JPEG, unswapped
    assert r["geneval"].tolist() == [1.0] and r["geneval_accuracy"].tolist() == [1.0]
    # the strict (official) variant sees the original pixels
    bench.as_reward(variant="strict")([im], [RED_DOG["prompt"]], [RED_DOG])
    np.testing.assert_array_equal(det.seen[-1], np.asarray(im))
    # flags override the variant defaults
    bench.as_reward(jpeg_quality=None, detector_channel_swap=False)([im], [RED_DOG["prompt"]], [RED_DOG])
    np.testing.assert_array_equal(det.seen[-1], np.asarray(im))


def test_components_and_variants():
    three = [("bench", (0, 0, 10, 10), 0.9), ("bench", (20, 0, 30, 10), 0.8), ("bench", (40, 0, 50, 10), 0.7)]
    bench, _, _ = bench_with(three)
    ims, prompts, meta = [red_square()], [BENCH["prompt"]], [BENCH]
    r = bench.as_reward()(ims, prompts, meta)
    assert set(r) == {"geneval", "geneval_partial", "geneval_strict", "geneval_accuracy"}
    assert all(v.dtype == np.float32 and v.shape == (1,) for v in r.values())
    # 3 benches for "a bench": official correct, reward-server strict wrong, partial score -1
    assert r["geneval"].tolist() == [-1.0] and r["geneval_partial"].tolist() == [-1.0]
    assert r["geneval_strict"].tolist() == [0.0] and r["geneval_accuracy"].tolist() == [1.0]
    s = bench.as_reward(variant="strict")(ims, prompts, meta)
    assert s["geneval"].tolist() == [1.0] and s["geneval_partial"].tolist() == [-1.0]
    assert bench.as_reward(variant="official")(ims, prompts, meta)["geneval"].tolist() == [1.0]
    clipped = bench.as_reward(negative_count_term=False)(ims, prompts, meta)
    assert clipped["geneval"].tolist() == [0.0]
    # the benchmark's per-sample record: official score + the default training reward
    rec = bench.score_batch(ims, prompts, meta)[0]
    assert rec["score"] == 1.0 and rec["reward"] == -1.0 and rec["strict_correct"] is False


def test_reward_versions_and_option_errors():
    bench, _, _ = bench_with([])
    assert (
        bench.as_reward().version
        == REWARD_VERSIONS["flowgrpo_partial"]
        == "geneval-reward-flowgrpo_partial-1.0"
    )
    assert bench.as_reward(variant="strict").version == "geneval-reward-strict-1.0"
    changed = bench.as_reward(jpeg_quality=90).version
    assert changed.startswith("geneval-reward-flowgrpo_partial-1.0+opts-")
    assert changed != bench.as_reward(jpeg_quality=95).version
    with pytest.raises(BenchmarkError, match="unknown reward variant 'fancy'"):
        bench.as_reward(variant="fancy")
    with pytest.raises(BenchmarkError, match=r"unknown option\(s\) \['jpeg'\]"):
        bench.as_reward(jpeg=75)
    with pytest.raises(BenchmarkError, match="jpeg_quality"):
        bench.as_reward(jpeg_quality=0)


def test_benchmark_options_and_input_checks():
    bench, _, _ = bench_with([])
    assert bench.version == VERSION
    assert GenEvalBenchmark(
        detector=BoxDetector([]), color_classifier=MeanColour(), counting_threshold=0.8
    ).version.startswith(VERSION + "+opts-")
    with pytest.raises(BenchmarkError, match="unknown option"):
        GenEvalBenchmark(detector=BoxDetector([]), color_classifier=MeanColour(), treshold=0.5)
    with pytest.raises(BenchmarkError, match="unknown engine"):
        GenEvalBenchmark(engine="mmdet")
    with pytest.raises(BenchmarkError, match="does not match its metadata prompt"):
        bench.score_batch([red_square()], ["a photo of a cat"], [BENCH])
    with pytest.raises(BenchmarkError, match="metadata"):
        bench.score_batch([red_square()], ["a photo of a bench"], [{"prompt": "a photo of a bench"}])
    sets = bench.prompt_sets()
    assert {k: len(v) for k, v in sets.items()} == {"test": 2212, "official": 553, "unseen_objects": 1024}


def test_make_reward_with_tiny_models(tiny_models):
    from benchmarks.geneval.reward import make_reward
    from benchmarks.geneval.testing import sample_inputs
    from benchmarks.registry import get_benchmark

    det, clip, _ = tiny_models
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = {
            "detector_path": str(det),
            "clip_path": str(clip),
            "device": "cpu",
            "detector_options": {"shortest_edge": 64, "longest_edge": 96},
        }
        prompts, meta = sample_inputs(3)
        ims = [red_square(80) for _ in prompts]
        partial = make_reward(**kw)
        bench = get_benchmark("geneval", **kw)
        recs = bench.score_batch(ims, prompts, meta)
        np.testing.assert_allclose(
            partial(ims, prompts, meta)["geneval"], [r["reward"] for r in recs], atol=1e-6
        )
        strict = bench.as_reward(variant="strict")
        assert strict(ims, prompts, meta)["geneval"].tolist() == [r["score"] for r in recs]
        assert partial.version == "geneval-reward-flowgrpo_partial-1.0" and strict.variant == "strict"
        assert bench.engine == "hf:tiny-mask2former+tiny-clip"
        with pytest.raises(BenchmarkError, match="unknown reward variant"):
            make_reward(variant="nope", **kw)
    finally:
        torch.set_num_threads(n)
