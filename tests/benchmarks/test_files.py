"""benchmarks.files.atomic_write: the one whole-file writer of every layer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from benchmarks.files import FILE_MODE, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_the_text_with_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"  # (the suite's fixtures put an awm_home beside it)
    old = os.umask(0)  # a permissive umask must not make the file world-readable
    try:
        atomic_write(tmp_path / "a" / "b.json", "é\n")
        atomic_write(tmp_path / "secret.json", "{}", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b.json").read_text(encoding="utf-8") == "é\n"
    assert _mode(tmp_path / "a" / "b.json") == FILE_MODE == 0o640
    assert _mode(tmp_path / "secret.json") == 0o600
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.json", "secret.json"]  # no temp file left


def test_replacing_gives_the_new_mode_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    target = tmp_path / "f.txt"
    target.write_text("old")
    target.chmod(0o644)
    atomic_write(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "\udcff")  # a lone surrogate cannot be encoded: the write fails midway
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # the temp file was removed
