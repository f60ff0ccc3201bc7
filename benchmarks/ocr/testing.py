"""Conformance-suite hooks for OCR: the real RapidOCR engine runs offline (models ship in its wheel)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from benchmarks.ocr.benchmark import OcrBenchmark


def make_test_benchmark(tmp_path):
    return OcrBenchmark(workers=1)


def make_unavailable_benchmark(tmp_path):
    return OcrBenchmark(det_model_path=str(Path(tmp_path) / "missing" / "det_model.onnx"))


def sample_inputs(n: int) -> tuple[list[str], list[dict]]:
    words = ["Hello World", "OPEN 24 HOURS", "Fresh Bread", "No Parking", "Cafe Luna"]
    prompts = [f'A storefront sign that says "{words[i % len(words)]} {i}" in bold letters' for i in range(n)]
    return prompts, [{} for _ in range(n)]


def malformed_metadata() -> list:
    return [{"target": 123}]


def font(size: int):
    """DejaVu Sans if installed (fonts-dejavu-core), else Pillow's scalable default font."""
    for p in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(p, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render_text(text: str, size=(512, 512), font_size: int = 48, fg="black", bg="white"):
    """Render ``text`` centred on a plain canvas (test images for the real engine)."""
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    f = font(font_size)
    left, top, right, bottom = d.textbbox((0, 0), text, font=f)
    x = max(0, (size[0] - (right - left)) // 2 - left)
    y = max(0, (size[1] - (bottom - top)) // 2 - top)
    d.text((x, y), text, fill=fg, font=f)
    return im


def sample_images(n: int):
    """Rendered text matching ``sample_inputs(n)`` for even i, a misspelling for odd i."""
    words = ["Hello World", "OPEN 24 HOURS", "Fresh Bread", "No Parking", "Cafe Luna"]
    out = []
    for i in range(n):
        text = f"{words[i % len(words)]} {i}"
        if i % 2:
            text = text[::-1]
        out.append(render_text(text, size=(320, 96), font_size=28))
    return out
