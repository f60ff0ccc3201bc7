"""Run-directory files written whole: one `atomic_write` for the trainer and the platform.

Torch-free on purpose: the platform's capsule, tracking and job spec write through it, and
they must not load torch to do so.
"""

from __future__ import annotations

import os
from pathlib import Path

# Files under a run directory may hold configuration: never world-readable, whatever the
# process umask (0640 by default; job.json and setup.sh, which hold secrets, pass 0600).
FILE_MODE = 0o640


def atomic_write(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write `text` to `path` through a temp file, fsync and a rename: readers see the old or
    the new content, never a part; the file gets `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)  # an existing tmp file keeps its old mode under O_CREAT
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
