"""Which image files the leaderboard may serve, and which file it shows for a sample.

An image path comes from the store (an evaluation's `images_dir`) plus a prompt and sample index;
the store is data, so every path is checked before a byte is read: it is resolved (symlinks
followed, `..` collapsed) and must then lie inside one of the allowed roots, resolved the same
way. Allowed roots: `$AWM_HOME/evals`, the evals folder an evaluation's recorded `images_dir` is in
(`<root>/<eval key>/images`, the layout `awm_platform.evals.images` writes, and only when `<root>`
holds the image cache `<root>/images/`), and the folders given
with `awm ui --image-root`. Anything else (`..`, a symlink pointing out, an absolute path
elsewhere, a device file) raises `MediaError`.

The page shows the WebP thumbnail written with each PNG (`images.thumb_path`) and falls back to
the PNG only for images cached before thumbnails existed; nothing is resized per view.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from awm_platform.evals import images

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")


class MediaError(ValueError):
    """A path the UI refuses to serve; the message says which and why (one line)."""


def _resolved(root: Path | str) -> Path | None:
    try:
        return Path(root).resolve(strict=True)
    except (OSError, RuntimeError):  # a missing root allows nothing; a symlink loop neither
        return None


def allowed_roots(extra: Iterable[Path | str] = (), images_dirs: Iterable[str | None] = (),
                  home_evals: Path | None = None) -> tuple[Path, ...]:
    """The resolved roots images may come from (module docstring); missing folders are left out."""
    candidates: list[Path | str] = [home_evals if home_evals is not None else images.evals_root()]
    candidates += list(extra)
    for d in images_dirs:
        root = evaluation_root(d)
        # only a folder laid out as an evals root (it holds the image cache): a stray images_dir
        # such as /etc/x/images must not open /etc
        if root is not None and (root / images.IMAGES_DIR).is_dir():
            candidates.append(root)
    out: list[Path] = []
    for c in candidates:
        r = _resolved(c)
        if r is not None and r not in out:
            out.append(r)
    return tuple(out)


def evaluation_root(images_dir: str | None) -> Path | None:
    """`<root>` of a recorded `<root>/<eval key>/images` (absolute, that layout), else None."""
    if not images_dir:
        return None
    p = Path(images_dir)
    if not p.is_absolute() or p.name != images.IMAGES_DIR or ".." in p.parts or len(p.parts) < 3:
        return None
    return p.parent.parent


def safe_image(path: Path | str, roots: Sequence[Path]) -> Path:
    """`path` resolved, if it is an existing regular image file inside one of `roots` (resolved
    roots, from `allowed_roots`); else MediaError."""
    raw = Path(path)
    if raw.suffix.lower() not in IMAGE_SUFFIXES:
        raise MediaError(f"{raw}: not an image file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        real = raw.resolve(strict=True)
    except FileNotFoundError:
        raise MediaError(f"{raw}: no such image") from None
    except (OSError, RuntimeError) as exc:
        raise MediaError(f"{raw}: cannot resolve ({exc})") from None
    if not any(real.is_relative_to(root) for root in roots):
        raise MediaError(f"{raw}: outside the image roots ({', '.join(map(str, roots)) or 'none'}); not served")
    if real.suffix.lower() not in IMAGE_SUFFIXES:  # a symlink named .png pointing at something else
        raise MediaError(f"{raw}: resolves to {real.name}, not an image file")
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise MediaError(f"{raw}: not a regular file")
    return real


def sample_image(images_dir: str | None, prompt_index: int, sample_index: int, roots: Sequence[Path], *,
                 thumbnail: bool = True) -> Path | None:
    """The file to show for (prompt, sample) of an evaluation: its thumbnail when there is one (and
    `thumbnail`), else its PNG; None when the evaluation has no images (never generated, pruned).
    MediaError when the file is outside `roots`."""
    if not images_dir:
        return None
    png = Path(images_dir) / images.image_name(prompt_index, sample_index)
    for candidate in ((images.thumb_path(png), png) if thumbnail else (png,)):
        if candidate.exists() or candidate.is_symlink():
            return safe_image(candidate, roots)
    return None
