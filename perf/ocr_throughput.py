"""OCR scoring throughput: images/s with 1 and 2 worker processes, and the ratio.

    python perf/ocr_throughput.py [--images 48] [--size 512] [--workers 1 2]

Each worker runs the engine with 1 intra-op thread (OMP/ORT threads = 1), so the ratio
shows how scoring scales with processes (target >= 1.8x on 2 cores).  Images are
rendered with Pillow (text from the shipped OCR test prompts), pools are warmed up first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(n: int, size: int):
    from PIL import Image, ImageDraw

    from benchmarks.ocr.benchmark import DATA_DIR
    from benchmarks.ocr.scoring import extract_target
    from benchmarks.ocr.testing import font as _font

    prompts = (DATA_DIR / "test.txt").read_text(encoding="utf-8").split("\n")[:n]
    font = _font(max(12, size // 14))
    images = []
    for p in prompts:
        im = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(im).text((size // 20, size // 2 - size // 14), extract_target(p), fill="black", font=font)
        images.append(im)
    return images, prompts


def measure(workers: int, images, prompts, repeats: int) -> float:
    from benchmarks.ocr.benchmark import OcrBenchmark

    bench = OcrBenchmark(workers=workers, threads_per_worker=1)
    try:
        bench.warmup()
        bench.score_batch(images[: max(2, workers * 2)], prompts[: max(2, workers * 2)])
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            bench.score_batch(images, prompts)
            best = max(best, len(images) / (time.perf_counter() - t0))
        return best
    finally:
        bench.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    # in-process (1 worker) engine: 1 thread as well, so the comparison is per-process scaling
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    images, prompts = make_images(args.images, args.size)
    print(f"cpus={os.cpu_count()} images={len(images)} size={args.size} repeats={args.repeats}")
    rates = {}
    for w in args.workers:
        rates[w] = measure(w, images, prompts, args.repeats)
        print(f"workers={w}: {rates[w]:.2f} images/s")
    if 1 in rates and len(rates) > 1:
        for w, r in rates.items():
            if w != 1:
                print(f"speedup {w} vs 1 worker: {r / rates[1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
