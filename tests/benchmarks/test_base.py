"""benchmarks.base / benchmarks.registry: aggregation, bootstrap over prompts, helpers, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.base import (
    Benchmark,
    BenchmarkSummary,
    ModelStatus,
    PromptSet,
    SampleRecord,
    bootstrap_ci,
    per_prompt_means,
    read_prompt_lines,
    to_rgb,
    validate_batch,
    write_results,
)
from benchmarks.errors import BenchmarkError
from benchmarks.registry import BENCHMARKS, benchmark_package, get_benchmark, list_benchmarks


class MeanPixel(Benchmark):
    """Toy benchmark: score = mean pixel value / 255."""

    name = "toy"
    version = "toy-1.0"

    def prompt_sets(self):
        return {}

    def check_models(self):
        return ModelStatus(True, "none needed")

    def score_batch(self, images, prompts, metadata=None):
        validate_batch(self.name, images, prompts, metadata)
        return [{"score": float(np.asarray(to_rgb(im), dtype=np.float64).mean() / 255)} for im in images]


def recs(values_by_prompt):
    out = []
    for pi, vals in enumerate(values_by_prompt):
        for si, v in enumerate(vals):
            out.append(SampleRecord(pi, si, float(v)))
    return out


def test_aggregate_is_mean_of_per_prompt_means():
    # prompt 0 has 4 images (mean 1.0), prompt 1 has 1 image (0.0): prompts weigh equally
    s = MeanPixel().aggregate(recs([[1, 1, 1, 1], [0]]), n_boot=500, seed=0)
    assert s.score == 0.5 and s.n == 5 and s.extra["n_prompts"] == 2
    assert s.benchmark == "toy" and s.version == "toy-1.0" and s.engine == "default"


def test_bootstrap_resamples_prompts_not_images():
    # many images per prompt but only 2 distinct prompt means: the CI must reflect 2 prompts
    r = recs([[1.0] * 50, [0.0] * 50])
    s = MeanPixel().aggregate(r, n_boot=2000, seed=1)
    assert s.ci_low <= 0.0 + 1e-12 and s.ci_high >= 1.0 - 1e-12  # resampling 2 prompts can give 0 or 1
    # identical per-prompt means -> zero-width CI whatever the per-image spread
    r2 = recs([[0.0, 1.0]] * 10)
    s2 = MeanPixel().aggregate(r2, n_boot=500, seed=1)
    assert s2.ci_low == s2.ci_high == s2.score == 0.5


def test_bootstrap_seeded_and_contains_mean():
    vals = np.random.default_rng(0).random(200)
    a = bootstrap_ci(vals, n_boot=1000, seed=7)
    b = bootstrap_ci(vals, n_boot=1000, seed=7)
    c = bootstrap_ci(vals, n_boot=1000, seed=8)
    assert a == b and a != c
    assert a[0] < vals.mean() < a[1]
    # width ~ 2 * 1.96 * sd / sqrt(n)
    expected = 2 * 1.96 * vals.std(ddof=1) / np.sqrt(vals.size)
    assert (a[1] - a[0]) == pytest.approx(expected, rel=0.15)
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    with pytest.raises(BenchmarkError):
        bootstrap_ci([])


def test_aggregate_rejects_empty_and_nonfinite():
    with pytest.raises(BenchmarkError, match="zero records"):
        MeanPixel().aggregate([])
    with pytest.raises(BenchmarkError, match="non-finite"):
        MeanPixel().aggregate([SampleRecord(0, 0, float("nan"))])


def test_per_prompt_means_sorted():
    assert per_prompt_means([SampleRecord(3, 0, 1.0), SampleRecord(1, 0, 0.0), SampleRecord(3, 1, 0.0)]) == {1: 0.0, 3: 0.5}


def test_summary_and_record_dicts():
    s = BenchmarkSummary("b", "b-1", "e", 3, 0.5, 0.4, 0.6, extra={"per_tag": {"x": 1.0}, "score": 99})
    d = s.to_dict()
    assert d["score"] == 0.5 and d["per_tag"] == {"x": 1.0}  # extra never overrides core keys
    r = SampleRecord(1, 2, 0.25, {"target": "t", "score": 7})
    assert r.to_dict() == {"prompt_index": 1, "sample_index": 2, "score": 0.25, "target": "t"}


def test_write_results_atomic(tmp_path):
    out = tmp_path / "deep" / "out"
    s = BenchmarkSummary("b", "b-1", "e", 2, 0.5, 0.4, 0.6)
    write_results(out, [SampleRecord(1, 0, 0.0), SampleRecord(0, 0, 1.0)], s)
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt_index"] for x in lines] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["version"] == "b-1"
    assert sorted(p.name for p in out.iterdir()) == ["samples.jsonl", "summary.json"]


def test_default_reward_and_records():
    b = MeanPixel()
    ims = [Image.new("RGB", (4, 4), (255, 255, 255)), Image.new("L", (4, 4), 0)]
    r = b.as_reward()(ims, ["a", "b"], [{}, {}])
    assert r["toy"].tolist() == [1.0, 0.0]
    rec = b.score_records(ims, ["a", "b"], None, [5, 6], [0, 1])
    assert [(x.prompt_index, x.sample_index, x.score) for x in rec] == [(5, 0, 1.0), (6, 1, 0.0)]
    with pytest.raises(BenchmarkError, match="unknown options"):
        b.as_reward(foo=1)


def test_validate_batch_messages():
    im = Image.new("RGB", (2, 2))
    assert validate_batch("x", [im], ["p"], None) == [{}]
    with pytest.raises(BenchmarkError, match="1 images but 2 prompts"):
        validate_batch("x", [im], ["p", "q"], None)
    with pytest.raises(BenchmarkError, match="metadata must be a list"):
        validate_batch("x", [im], ["p"], {"a": 1})
    with pytest.raises(BenchmarkError, match="sample 0: metadata must be a dict"):
        validate_batch("x", [im], ["p"], ["s"])
    with pytest.raises(BenchmarkError, match="PIL"):
        validate_batch("x", ["img"], ["p"], None)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1", "LA", "I", "I;16", "F", "CMYK"])
def test_to_rgb_modes(mode):
    im = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode) if mode not in ("I;16",) else Image.new("I;16", (5, 3), 1000)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_to_rgb_transparent_is_white():
    assert to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_prompt_files(tmp_path):
    p = tmp_path / "p.txt"
    p.write_bytes(b"a\r\nb\nc")  # no trailing newline, CRLF tolerated
    assert read_prompt_lines(p) == ["a", "b", "c"]
    p.write_bytes(b"a\nb\n")
    assert read_prompt_lines(p) == ["a", "b"]
    with pytest.raises(BenchmarkError, match="not found"):
        read_prompt_lines(tmp_path / "none.txt")
    ps = PromptSet.from_text("t", p, "0" * 64)
    with pytest.raises(BenchmarkError, match="sha256"):
        ps.verify()
    j = tmp_path / "m.jsonl"
    j.write_text('{"prompt": "x", "tag": "a"}\n{"tag": "b"}\n')
    with pytest.raises(BenchmarkError, match="line 2"):
        PromptSet.from_jsonl("m", j, "0" * 64)
    j.write_text('{"prompt": "x"}\nnot json\n')
    with pytest.raises(BenchmarkError, match="line 2: invalid JSON"):
        PromptSet.from_jsonl("m", j, "0" * 64)


def test_registry():
    assert list_benchmarks() == sorted(BENCHMARKS) and {"ocr", "pickscore", "geneval"} <= set(list_benchmarks())
    with pytest.raises(BenchmarkError, match="known: geneval, ocr, pickscore"):
        get_benchmark("nope")
    assert benchmark_package("ocr") == "benchmarks.ocr"
    b = get_benchmark("ocr", workers=1)
    assert b.name == "ocr" and b.workers == 1


def test_one_registry_for_benchmarks_and_rewards():
    """Every benchmark's reward is registered from its BENCHMARKS line; the JPEG rewards are the
    only others; every target names a callable factory."""
    import importlib

    from benchmarks.registry import REWARDS

    assert set(REWARDS) == {"jpeg_compressibility", "jpeg_incompressibility", *BENCHMARKS}
    for name in BENCHMARKS:
        assert REWARDS[name] == f"{benchmark_package(name)}.reward:make_reward"
    for target in [*REWARDS.values(), *BENCHMARKS.values()]:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


def test_registry_import_is_lazy():
    import subprocess
    import sys

    code = ("import sys, benchmarks.registry as r; r.list_benchmarks(); "
            "print([m for m in ('torch', 'transformers', 'rapidocr_onnxruntime', 'benchmarks.ocr.benchmark') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
