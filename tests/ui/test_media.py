"""Image serving safety (`awm_platform.ui.media`) and the thumbnails `ImageCache.save` writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from awm_platform.evals import images
from awm_platform.ui import media
from awm_platform.ui.media import MediaError


def _png(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


@pytest.fixture
def evals(tmp_path: Path) -> Path:
    """An evals root laid out as the evaluation service writes it: cache + eval folder link."""
    root = tmp_path / "evals"
    cache = images.ImageCache("ab" * 8, root)
    cache.save(0, 0, Image.new("RGB", (1024, 512), (0, 128, 255)))
    images.link_images("cd" * 8, "ab" * 8, root)
    return root


def test_save_writes_a_256px_webp_thumbnail_once_with_the_png(evals: Path) -> None:
    png = images.ImageCache("ab" * 8, evals).path(0, 0)
    thumb = images.thumb_path(png)
    assert thumb == png.parent / "thumbs" / "00000_00.webp"
    with Image.open(thumb) as im:
        assert im.format == "WEBP" and im.size == (256, 128)  # longer side 256, aspect kept
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1024, 512)  # the PNG itself untouched
    assert oct(thumb.stat().st_mode & 0o777) == "0o640"
    small = images.ImageCache("ab" * 8, evals).save(1, 0, Image.new("RGB", (64, 32)))
    with Image.open(images.thumb_path(small)) as im:
        assert im.size == (64, 32)  # never enlarged


def test_the_ui_shows_the_thumbnail_and_falls_back_to_the_png(evals: Path) -> None:
    roots = media.allowed_roots(home_evals=evals)
    images_dir = str(images.eval_images_dir("cd" * 8, evals))
    shown = media.sample_image(images_dir, 0, 0, roots)
    assert shown is not None and shown.suffix == ".webp" and shown.parent.name == "thumbs"
    old = _png(evals / "images" / ("ab" * 8) / "00002_00.png")  # cached before thumbnails existed
    assert media.sample_image(images_dir, 2, 0, roots) == old.resolve()
    assert media.sample_image(images_dir, 7, 0, roots) is None  # never generated
    assert media.sample_image(None, 0, 0, roots) is None


def test_refuses_dot_dot_symlinks_and_absolute_paths_outside_the_roots(evals: Path, tmp_path: Path) -> None:
    secret = _png(tmp_path / "private" / "secret.png")
    roots = media.allowed_roots(home_evals=evals)
    inside = evals / "images" / ("ab" * 8) / "00000_00.png"
    assert media.safe_image(inside, roots) == inside.resolve()
    with pytest.raises(MediaError, match="outside the image roots"):
        media.safe_image(evals / ".." / "private" / "secret.png", roots)  # `..`
    with pytest.raises(MediaError, match="outside the image roots"):
        media.safe_image(secret, roots)  # absolute path elsewhere
    link = evals / "images" / ("ab" * 8) / "00005_00.png"
    os.symlink(secret, link)  # a symlink inside pointing out
    with pytest.raises(MediaError, match="outside the image roots"):
        media.safe_image(link, roots)
    with pytest.raises(MediaError, match="outside the image roots"):
        media.sample_image(str(images.eval_images_dir("cd" * 8, evals)), 5, 0, roots)
    # an evaluation folder whose `images` link was pointed outside: refused too
    bad = evals / ("ef" * 8)
    bad.mkdir()
    os.symlink(secret.parent, bad / "images")
    os.rename(secret, secret.parent / "00000_00.png")
    with pytest.raises(MediaError, match="outside the image roots"):
        media.sample_image(str(bad / "images"), 0, 0, roots)
    # a symlink named .png to a non-image inside the root, and a non-image name
    notes = evals / "notes.txt"
    notes.write_text("x")
    os.symlink(notes, evals / "fake.png")
    with pytest.raises(MediaError, match="not an image file"):
        media.safe_image(evals / "fake.png", roots)
    with pytest.raises(MediaError, match="not an image file"):
        media.safe_image(notes, roots)
    with pytest.raises(MediaError, match="no such image"):
        media.safe_image(evals / "missing.png", roots)


def test_roots_are_home_evals_recorded_evaluation_roots_and_extra_folders(evals: Path, tmp_path: Path) -> None:
    other = tmp_path / "cluster" / "evals"
    img = _png(other / "images" / ("12" * 8) / "00000_00.png")
    extra = tmp_path / "extra"
    extra_img = _png(extra / "x.png")
    roots = media.allowed_roots(home_evals=evals)
    with pytest.raises(MediaError):
        media.safe_image(img, roots)
    recorded = str(other / ("34" * 8) / "images")  # another machine's $AWM_HOME/evals, as the store recorded it
    # a recorded path that climbs with `..` is refused even where it lands on a real image cache
    (tmp_path / "a").mkdir()
    climbed_img = _png(tmp_path / "b" / "images" / ("78" * 8) / "00000_00.png")
    climbing = str(tmp_path / "a" / ".." / "b" / ("9a" * 8) / "images")
    roots = media.allowed_roots(images_dirs=[recorded, None, "relative/images", climbing], home_evals=evals)
    assert media.safe_image(img, roots) == img.resolve()
    assert (tmp_path / "b").resolve() not in roots
    with pytest.raises(MediaError, match="outside the image roots"):
        media.safe_image(climbed_img, roots)
    stray = tmp_path / "stray"
    stray_img = _png(stray / "ssl" / "x.png")  # recorded as <stray>/<key>/images, but no image cache there
    roots = media.allowed_roots(images_dirs=[str(stray / ("56" * 8) / "images")], home_evals=evals)
    with pytest.raises(MediaError, match="outside the image roots"):
        media.safe_image(stray_img, roots)
    with pytest.raises(MediaError):
        media.safe_image(extra_img, roots)
    roots = media.allowed_roots(extra=[extra], home_evals=evals)
    assert media.safe_image(extra_img, roots) == extra_img.resolve()
    assert media.allowed_roots(extra=[tmp_path / "missing"], home_evals=tmp_path / "none") == ()
