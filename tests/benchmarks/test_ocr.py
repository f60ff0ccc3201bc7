"""OCR benchmark: the Flow-GRPO formula (hand-checked values) and the real RapidOCR engine on renders."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmarks.errors import BenchmarkError, ModelUnavailableError
from benchmarks.ocr import VERSION
from benchmarks.ocr.benchmark import OcrBenchmark
from benchmarks.ocr.scoring import concat_recognitions, extract_target, normalize, ocr_reward
from benchmarks.ocr.testing import render_text

HW = "Hello World 2025"


# ------------------------------------------------------------------------ formula (pure)
@pytest.mark.parametrize(
    "recognized, expected",
    [
        ("Hello World2025", 1.0),  # spaces ignored
        ("Hello Wrold 2052", 1 - 4 / 14),  # benchmarks.md §3.3: distance 4, L = 14
        ("", 0.0),
        ("SALE Hello World 2025 now", 1.0),  # substring => perfect, extra text is free
        ("HELLO WORLD 2025", 1.0),  # case folded
        ("completely different text that is long", 0.0),  # capped at L
    ],
)
def test_hand_checked_values(recognized, expected):
    reward, dist = ocr_reward(recognized, HW)
    assert reward == pytest.approx(expected, abs=1e-12)
    assert 0 <= dist <= 14


def test_distance_is_against_whole_concatenation():
    # unrelated text raises the distance (no best-box matching), unless the target is a substring
    r1, d1 = ocr_reward("helloworld2O25", HW)
    r2, d2 = ocr_reward("EXIT helloworld2O25", HW)
    assert d1 == 1 and d2 == 5 and r2 < r1


def test_punctuation_kept_and_unicode_apostrophe_differs():
    assert normalize("World's  Best") == "world'sbest"
    assert ocr_reward("Worlds Best", "World's Best")[0] == pytest.approx(1 - 1 / 11)
    assert ocr_reward("You're", "You’re")[0] == pytest.approx(1 - 1 / 6)
    assert normalize("a\tb") == "a\tb"  # only ASCII spaces are removed


def test_extract_target_first_pair_of_straight_quotes():
    assert extract_target('A sign that says "Hello" and "World"') == "Hello"
    assert extract_target('x "a b" y') == "a b"
    with pytest.raises(BenchmarkError, match="double quotes"):
        extract_target("A sign that says “Hello”")  # curly quotes are not delimiters
    with pytest.raises(BenchmarkError, match="double quotes"):
        extract_target('only one " quote')
    with pytest.raises(BenchmarkError):
        ocr_reward("abc", "   ")  # empty after removing spaces: no made-up score


def test_threshold_drops_low_confidence():
    res = [("Hello", 0.99), ("XYZ", 0.49), ("World", 0.5)]
    assert concat_recognitions(res) == "HelloWorld"
    assert concat_recognitions(res, threshold=0.0) == "HelloXYZWorld"


# ------------------------------------------------------------------------ real engine
@pytest.fixture(scope="module")
def bench():
    b = OcrBenchmark(workers=1)
    yield b
    b.close()


def test_identity(bench):
    from benchmarks.ocr.benchmark import auto_workers

    assert OcrBenchmark().workers == auto_workers() >= 1
    assert bench.version == VERSION == "ocr-1.0"
    assert bench.engine.startswith("rapidocr-onnxruntime-") and "ch_PP-OCRv4" in bench.engine
    assert bench.check_models().available


def test_clean_renders_score_high(bench):
    prompts = [p for p in bench.prompt_sets()["test"].prompts if extract_target(p).isascii()][:12]
    images = [render_text(extract_target(p), size=(512, 512), font_size=40) for p in prompts]
    outs = bench.score_batch(images, prompts, [{}] * len(prompts))
    scores = [o["score"] for o in outs]
    assert np.mean(scores) >= 0.9, outs
    for o, p in zip(outs, prompts):
        assert o["target"] == extract_target(p)
        assert o["score"] == ocr_reward(o["recognized"], o["target"])[0]


def test_known_misspelling_scores_formula_value(bench):
    out = bench.score_batch([render_text("Hello Wrold 2052")], [f'A sign that says "{HW}"'], [{}])[0]
    assert normalize(out["recognized"]) == "hellowrold2052", out
    assert out["distance"] == 4
    assert out["score"] == 1 - 4 / 14


def test_blank_image_scores_zero_not_error(bench):
    out = bench.score_batch([Image.new("RGB", (512, 512), "white")], [f'"{HW}"'], [{}])[0]
    assert out == {"score": 0.0, "target": HW, "recognized": "", "distance": 14}


def test_metadata_target_overrides_prompt(bench):
    img = render_text("Fresh Bread")
    out = bench.score_batch([img], ["a bakery sign without quotes"], [{"target": "Fresh Bread"}])[0]
    assert out["target"] == "Fresh Bread" and out["score"] == 1.0
    with pytest.raises(BenchmarkError, match="no text between"):
        bench.score_batch([img], ["a bakery sign without quotes"], [{}])
    with pytest.raises(BenchmarkError, match="target"):
        bench.score_batch([img], ['a "sign"'], [{"target": ""}])


def test_worker_pool_matches_in_process(bench):
    texts = ["OPEN 24 HOURS", "No Parking", "Cafe Luna", "Hello Wrold 2052", "Fresh Bread"]
    images = [render_text(t, size=(320, 96), font_size=28) for t in texts]
    prompts = [f'a sign "{t}"' for t in ["OPEN 24 HOURS", "No Parking", "Cafe Luna", HW, "Fresh Bread"]]
    ref = bench.score_batch(images, prompts)
    pooled = OcrBenchmark(workers=2)
    try:
        assert pooled.score_batch(images, prompts) == ref
        assert pooled.engine == bench.engine
    finally:
        pooled.close()


def test_reward_module():
    from benchmarks.ocr.reward import make_reward

    fn = make_reward()
    r = fn([render_text(HW)], [f'"{HW}"'], [{}])
    assert set(r) == {"ocr"} and r["ocr"].dtype == np.float32 and r["ocr"].tolist() == [1.0]


# ------------------------------------------------------------------------ engines / errors
def test_unknown_engine_and_options():
    with pytest.raises(BenchmarkError, match="unknown engine"):
        OcrBenchmark(engine="easyocr")
    with pytest.raises(BenchmarkError, match="does not accept"):
        OcrBenchmark(det_model_dir="/x")  # a paddleocr option given to rapidocr
    with pytest.raises(BenchmarkError, match="workers"):
        OcrBenchmark(workers=0)


def test_missing_model_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "rec.onnx"
    b = OcrBenchmark(rec_model_path=str(missing))
    st = b.check_models()
    assert not st.available and str(missing) in st.detail
    with pytest.raises(ModelUnavailableError, match="rec_model_path") as e:
        b.score_batch([render_text("x y")], ['"x y"'])
    assert str(missing) in str(e.value) and "rapidocr-onnxruntime" in str(e.value)
    assert "+rec" in b.engine  # custom models are labelled differently


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr installed")
def test_paddleocr_not_installed_is_clear():
    b = OcrBenchmark(engine="paddleocr")
    assert not b.check_models().available
    with pytest.raises(ModelUnavailableError, match="pip install"):
        b.score_batch([render_text("abc")], ['"abc"'])


def test_tesseract_not_installed_is_clear(tmp_path):
    # a binary path that does not exist: the same message as on a machine without tesseract-ocr
    b = OcrBenchmark(engine="tesseract", tesseract_cmd=str(tmp_path / "no-tesseract"))
    assert not b.check_models().available
    with pytest.raises(ModelUnavailableError, match="tesseract"):
        b.score_batch([render_text("abc")], ['"abc"'])


@pytest.mark.skipif(importlib.util.find_spec("pytesseract") is None or shutil.which("tesseract") is None,
                    reason="tesseract not installed")
def test_tesseract_engine_when_installed():  # pragma: no cover - optional engine
    b = OcrBenchmark(engine="tesseract")
    assert b.engine.startswith("tesseract-")
    out = b.score_batch([render_text(HW)], [f'"{HW}"'])[0]
    assert out["score"] >= 0.9


def test_summary_is_labelled_with_engine(bench):
    recs = bench.score_records([render_text(HW), render_text("Hello Wrold 2052")], [f'"{HW}"'] * 2, None, [0, 0], [0, 1])
    s = bench.aggregate(recs)
    assert s.engine == bench.engine and s.version == "ocr-1.0"
    assert s.score == pytest.approx((1 + (1 - 4 / 14)) / 2)
    assert s.ci_low == s.ci_high == s.score  # a single prompt: no spread over prompts


def test_rapidocr_not_installed_is_clear(monkeypatch):
    from benchmarks.ocr import engines

    monkeypatch.setattr(engines, "_rapidocr_default_models", lambda: None)
    b = OcrBenchmark()
    st = b.check_models()
    assert not st.available and "pip install" in st.detail
    with pytest.raises(ModelUnavailableError, match="rapidocr-onnxruntime"):
        b.score_batch([render_text("abc")], ['"abc"'])
