"""The evaluation service's images on disk: the image cache, each evaluation's folder, its manifest.

Layout (under `$AWM_HOME/evals/`)::

    images/<generation_key>/{prompt:05d}_{sample:02d}.png   the cache: one PNG per (prompt, sample)
    images/<generation_key>/thumbs/{prompt:05d}_{sample:02d}.webp   its thumbnail (THUMB_SIZE px max side)
    <eval_key>/images -> ../images/<generation_key>         relative symlink (the folder moves with $AWM_HOME)
    <eval_key>/manifest.json                                spec, keys, checkpoint, prompt file sha, seeds rule

An image depends only on the generation key (checkpoint sha256, the spec, the prompt file's
sha256: `awm_platform.evals.spec.generation_key`), not on the benchmark version, so a new scorer
version re-scores the cached PNGs without generating anything. Every file is written whole
(`benchmarks.files.atomic_write`: temp file + rename, 0640): a PNG that exists is complete, and a
worker killed mid-write leaves no partial file to reuse. PNG is lossless, so scoring a cached image
gives the same numbers as scoring the freshly generated one.

The thumbnail is made once, with the PNG (the leaderboard shows hundreds of images a page and never
resizes one per view); it is written before the PNG, so a PNG that exists has its thumbnail, unless
it was cached before thumbnails existed (the UI then falls back to the PNG).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from awm_platform.paths import awm_home
from benchmarks.files import atomic_write

IMAGES_DIR = "images"
MANIFEST = "manifest.json"
IMAGE_PATTERN = "{prompt:05d}_{sample:02d}.png"
THUMBS_DIR = "thumbs"
THUMB_SIZE = 256  # px, the longer side; a 512-1024 px image shrinks to ~5-15 KB of WebP
THUMB_QUALITY = 80
# zlib level 1: the tiny model makes an image in a few ms, level 6 would cost more than that;
# the files are about 10 % larger
PNG_COMPRESS_LEVEL = 1
_KEY_RE = re.compile(r"^[0-9a-f]{8,64}$")


def evals_root(home: Path | None = None) -> Path:
    """`$AWM_HOME/evals` (or `home/evals`)."""
    return (home if home is not None else awm_home()) / "evals"


def _key(key: str, what: str) -> str:
    # keys become folder names: never let one climb out of the evals folder
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid {what} {key!r}: expected 8-64 lowercase hex digits")
    return key


def image_name(prompt_index: int, sample_index: int) -> str:
    return IMAGE_PATTERN.format(prompt=int(prompt_index), sample=int(sample_index))


def thumb_path(image: Path) -> Path:
    """`images/<gen>/thumbs/<p>_<s>.webp` of `images/<gen>/<p>_<s>.png`."""
    return image.parent / THUMBS_DIR / f"{image.stem}.webp"


def thumbnail_bytes(image: Image.Image) -> bytes:
    """The WebP thumbnail of `image`: THUMB_SIZE px on its longer side at most (never enlarged)."""
    thumb = image.convert("RGB") if image.mode != "RGB" else image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=THUMB_QUALITY, method=4)
    return buf.getvalue()


def eval_dir(eval_key: str, root: Path | None = None) -> Path:
    """`$AWM_HOME/evals/<eval_key>/`: the evaluation's folder (manifest + images link)."""
    return (root or evals_root()) / _key(eval_key, "evaluation key")


def eval_images_dir(eval_key: str, root: Path | None = None) -> Path:
    """`$AWM_HOME/evals/<eval_key>/images`: what the store records as the evaluation's images dir."""
    return eval_dir(eval_key, root) / IMAGES_DIR


class ImageCache:
    """The PNGs of one generation key: `$AWM_HOME/evals/images/<generation_key>/`."""

    def __init__(self, generation_key: str, root: Path | None = None) -> None:
        self.generation_key = _key(generation_key, "generation key")
        self.dir = (root or evals_root()) / IMAGES_DIR / self.generation_key

    def path(self, prompt_index: int, sample_index: int) -> Path:
        return self.dir / image_name(prompt_index, sample_index)

    def load(self, prompt_index: int, sample_index: int) -> Image.Image | None:
        """The cached image, or None when there is none (or it cannot be read: it is made again)."""
        path = self.path(prompt_index, sample_index)
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB") if im.mode != "RGB" else im.copy()
        except FileNotFoundError:
            return None
        except (OSError, SyntaxError, ValueError):  # not a PNG any more (a disk error, a hand edit)
            return None

    def save(self, prompt_index: int, sample_index: int, image: Image.Image) -> Path:
        """Write the thumbnail, then the PNG, each whole (temp file + rename, 0640); existing ones are
        replaced. Thumbnail first: a cached PNG (what `load` trusts) always has its thumbnail."""
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        path = self.path(prompt_index, sample_index)
        atomic_write(thumb_path(path), thumbnail_bytes(image))
        atomic_write(path, buf.getvalue())
        return path


def link_images(eval_key: str, generation_key: str, root: Path | None = None) -> Path:
    """Point `<eval_key>/images` at the cache folder of `generation_key` (relative symlink, created
    by a rename so a reader never sees a missing link); returns the link. Idempotent."""
    root = root or evals_root()
    cache = ImageCache(generation_key, root)
    cache.dir.mkdir(parents=True, exist_ok=True)
    link = eval_images_dir(eval_key, root)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(cache.dir, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return link
    tmp = link.with_name(f".{IMAGES_DIR}.{os.getpid()}.tmp")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def write_manifest(eval_key: str, *, generation_key: str, benchmark: str, benchmark_version: str,
                   spec: Mapping[str, Any], spec_hash: str, checkpoint_sha256: str, target: str,
                   checkpoint_path: str | None, prompt_set: str, prompt_file: str, prompt_file_sha256: str,
                   num_prompts: int, samples_per_prompt: int, seeds_rule: str,
                   root: Path | None = None) -> Path:
    """`<eval_key>/manifest.json` (atomic, 0640): what the images are and how they were made."""
    data = {
        "eval_key": _key(eval_key, "evaluation key"),
        "generation_key": _key(generation_key, "generation key"),
        "benchmark": benchmark,
        "benchmark_version": benchmark_version,
        "spec_hash": spec_hash,
        "spec": dict(spec),
        "target": target,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_path": checkpoint_path,
        "prompt_set": prompt_set,
        "prompt_file": prompt_file,
        "prompt_file_sha256": prompt_file_sha256,
        "num_prompts": int(num_prompts),
        "samples_per_prompt": int(samples_per_prompt),
        "images": f"{IMAGES_DIR}/{IMAGE_PATTERN}",
        "seeds": seeds_rule,
    }
    path = eval_dir(eval_key, root) / MANIFEST
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
