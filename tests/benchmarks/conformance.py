"""Shared conformance suite: every registered benchmark must pass every check here.

Each benchmark package provides ``benchmarks/<name>/testing.py`` (see :mod:`benchmarks.base`):
``make_test_benchmark(tmp_path)``, ``make_unavailable_benchmark(tmp_path)``,
``sample_inputs(n)``, ``malformed_metadata()`` and optionally ``sample_images(n)``.
``tests/benchmarks/test_conformance.py`` parametrises :data:`CHECKS` over all benchmarks.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from benchmarks.base import (
    Benchmark,
    BenchmarkSummary,
    ModelStatus,
    PromptSet,
)
from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.registry import benchmark_package

ATOL = 1e-4  # batch composition may change float reductions slightly (tiny models, BLAS)
N = 4


@dataclass
class Kit:
    name: str
    testing: ModuleType
    bench: Benchmark
    tmp_path: Path

    def inputs(self, n: int = N):
        prompts, meta = self.testing.sample_inputs(n)
        return list(prompts), [dict(m) for m in meta]

    def images(self, n: int = N) -> list[Image.Image]:
        if hasattr(self.testing, "sample_images"):
            return list(self.testing.sample_images(n))
        return [pattern_image(i) for i in range(n)]


def load_testing(name: str) -> ModuleType:
    return importlib.import_module(f"{benchmark_package(name)}.testing")


def pattern_image(i: int, size=(96, 80)) -> Image.Image:
    """Deterministic synthetic RGB image (gradients + a block), different for each i."""
    w, h = size
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * (3 + i) + yy) % 256, (yy * (5 + i)) % 256, ((xx + yy) * (7 + i)) % 256], -1)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def scores(outs: list[dict]) -> np.ndarray:
    return np.array([o["score"] for o in outs], dtype=np.float64)


def _assert_valid_outputs(outs, n: int):
    assert isinstance(outs, list) and len(outs) == n
    for o in outs:
        assert isinstance(o, dict) and "score" in o, o
        assert isinstance(o["score"], float) and math.isfinite(o["score"]), o
        if "reward" in o:
            assert math.isfinite(float(o["reward"])), o
        json.dumps(o)  # audit fields must be JSON-able (samples.jsonl)


# ------------------------------------------------------------------------------- checks
def check_identity(k: Kit):
    b = k.bench
    assert b.name == k.name
    assert isinstance(b.version, str) and b.version, "declare a VERSION string"
    assert isinstance(b.engine, str) and b.engine
    st = b.check_models()
    assert isinstance(st, ModelStatus) and st.available, st


def check_prompt_sets(k: Kit):
    sets = k.bench.prompt_sets()
    assert sets, "a benchmark ships at least one prompt set"
    assert k.bench.default_prompt_set in sets
    for key, ps in sets.items():
        assert isinstance(ps, PromptSet) and ps.name == key
        assert len(ps.prompts) == len(ps.metadata) > 0
        assert all(isinstance(p, str) and p for p in ps.prompts)
        assert all(isinstance(m, dict) for m in ps.metadata)
        ps.verify()  # sha256


def check_deterministic(k: Kit):
    prompts, meta = k.inputs()
    ims = k.images()
    a = k.bench.score_batch(ims, prompts, meta)
    b = k.bench.score_batch(ims, prompts, meta)
    _assert_valid_outputs(a, N)
    np.testing.assert_allclose(scores(a), scores(b), rtol=0, atol=1e-9)


def check_batch_size_invariance(k: Kit):
    prompts, meta = k.inputs()
    ims = k.images()
    full = scores(k.bench.score_batch(ims, prompts, meta))
    single = np.concatenate([scores(k.bench.score_batch([im], [p], [m])) for im, p, m in zip(ims, prompts, meta)])
    split = np.concatenate([scores(k.bench.score_batch(ims[:3], prompts[:3], meta[:3])),
                            scores(k.bench.score_batch(ims[3:], prompts[3:], meta[3:]))])
    np.testing.assert_allclose(single, full, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(split, full, rtol=1e-5, atol=ATOL)


def check_order_invariance(k: Kit):
    prompts, meta = k.inputs()
    ims = k.images()
    full = scores(k.bench.score_batch(ims, prompts, meta))
    perm = [2, 0, 3, 1]
    permuted = scores(k.bench.score_batch([ims[i] for i in perm], [prompts[i] for i in perm], [meta[i] for i in perm]))
    np.testing.assert_allclose(permuted, full[perm], rtol=1e-5, atol=ATOL)


def edge_images() -> dict[str, Image.Image]:
    base = pattern_image(7, (64, 64))
    return {
        "blank_white": Image.new("RGB", (64, 64), (255, 255, 255)),
        "blank_black": Image.new("RGB", (64, 64), (0, 0, 0)),
        "tiny_8x8": pattern_image(3, (8, 8)),
        "one_pixel": Image.new("RGB", (1, 1), (120, 30, 200)),
        "mode_L": base.convert("L"),
        "mode_RGBA": base.convert("RGBA"),
        "mode_RGBA_transparent": Image.new("RGBA", (48, 48), (0, 0, 0, 0)),
        "mode_P": base.convert("P"),
        "mode_1": base.convert("1"),
        "wide_200x40": pattern_image(4, (200, 40)),
        "tall_40x200": pattern_image(5, (40, 200)),
    }


def check_edge_images(k: Kit):
    """Blank, tiny, non-RGB and non-square images score to finite values (no crash, no NaN)."""
    edges = edge_images()
    names = list(edges)
    prompts, meta = k.inputs(len(edges))
    outs = k.bench.score_batch([edges[n] for n in names], prompts, meta)
    _assert_valid_outputs(outs, len(edges))
    # palette / grayscale / bilevel images score exactly like their RGB conversion
    for n in ("mode_L", "mode_P", "mode_1"):
        i = names.index(n)
        ref = k.bench.score_batch([edges[n].convert("RGB")], [prompts[i]], [meta[i]])[0]
        assert abs(ref["score"] - outs[i]["score"]) <= ATOL, (n, ref, outs[i])


def check_empty_batch(k: Kit):
    assert k.bench.score_batch([], [], []) == []
    r = k.bench.as_reward()([], [], [])
    assert isinstance(r, dict) and r
    for v in r.values():
        assert isinstance(v, np.ndarray) and v.shape == (0,)


def check_malformed_inputs(k: Kit):
    prompts, meta = k.inputs(1)
    im = k.images(1)
    bad = list(k.testing.malformed_metadata())
    assert len(bad) == 1
    with pytest.raises(BenchmarkError) as e:
        k.bench.score_batch(im, prompts, bad)
    assert str(e.value)
    with pytest.raises(BenchmarkError, match="metadata"):
        k.bench.score_batch(im, prompts, [])  # length mismatch
    with pytest.raises(BenchmarkError, match="prompts"):
        k.bench.score_batch(im, prompts + prompts, meta)
    with pytest.raises(BenchmarkError, match="PIL"):
        k.bench.score_batch([np.zeros((8, 8, 3), np.uint8)], prompts, meta)
    with pytest.raises(BenchmarkError):
        k.bench.score_batch(im, [None], meta)


def check_missing_models(k: Kit):
    ub = k.testing.make_unavailable_benchmark(k.tmp_path)
    st = ub.check_models()
    assert isinstance(st, ModelStatus) and not st.available and st.detail
    prompts, meta = k.inputs(1)
    with pytest.raises(ModelUnavailableError) as e:
        ub.score_batch(k.images(1), prompts, meta)
    msg = str(e.value)
    assert str(k.tmp_path) in msg, f"message must name the missing path: {msg}"
    assert any(w in msg.lower() for w in ("set ", "install", "download", "provide")), f"no how-to in: {msg}"
    ub.close()


def check_reward(k: Kit):
    prompts, meta = k.inputs()
    ims = k.images()
    reward_fn = k.bench.as_reward()
    r = reward_fn(ims, prompts, meta)
    assert isinstance(r, dict) and r
    outs = k.bench.score_batch(ims, prompts, meta)
    for name, v in r.items():
        assert isinstance(name, str) and name
        assert isinstance(v, np.ndarray) and v.shape == (N,) and np.issubdtype(v.dtype, np.floating)
        assert np.all(np.isfinite(v))
    if k.name in r:
        expected = np.array([o.get("reward", o["score"]) for o in outs], dtype=np.float64)
        np.testing.assert_allclose(r[k.name], expected, rtol=1e-5, atol=ATOL)


def check_reward_module(k: Kit):
    mod = importlib.import_module(f"{benchmark_package(k.name)}.reward")
    assert callable(mod.make_reward)


def check_aggregate(k: Kit):
    prompts, meta = k.inputs()
    ims = k.images()
    # two samples for two of the prompts, one for the others
    recs = k.bench.score_records(ims, prompts, meta, [0, 1, 2, 3], [0, 0, 0, 0])
    recs += k.bench.score_records(ims[:2], prompts[:2], meta[:2], [0, 1], [1, 1])
    s1 = k.bench.aggregate(recs, n_boot=200, seed=3)
    s2 = k.bench.aggregate(list(reversed(recs)), n_boot=200, seed=3)
    assert isinstance(s1, BenchmarkSummary)
    assert s1.benchmark == k.name and s1.version == k.bench.version and s1.engine == k.bench.engine
    assert s1.n == len(recs)
    assert math.isfinite(s1.score) and s1.ci_low <= s1.score + 1e-12 and s1.score <= s1.ci_high + 1e-12
    assert s1.to_dict() == s2.to_dict()  # seeded, order independent
    d = s1.to_dict()
    for key in ("benchmark", "version", "engine", "n", "score", "ci_low", "ci_high"):
        assert key in d
    json.dumps(d)
    with pytest.raises(BenchmarkError):
        k.bench.aggregate([])


CHECKS = {
    f.__name__.removeprefix("check_"): f
    for f in (
        check_identity,
        check_prompt_sets,
        check_deterministic,
        check_batch_size_invariance,
        check_order_invariance,
        check_edge_images,
        check_empty_batch,
        check_malformed_inputs,
        check_missing_models,
        check_reward,
        check_reward_module,
        check_aggregate,
    )
}
