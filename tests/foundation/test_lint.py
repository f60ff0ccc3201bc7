"""The repository passes `ruff check` with the rules pyproject.toml names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_ruff_check_passes(repo_root: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(repo_root)], cwd=repo_root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
