"""Files written whole: the one `atomic_write` of every layer (benchmark results, the trainer's
`config.resolved.json`, the platform's run-directory and sweep files).

In the lowest layer because benchmarks write their results with it; standard library only, so
the platform's light modules (capsule, tracking, job spec) can use it without loading anything.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# Files under a run directory may hold configuration: never world-readable, whatever the
# process umask (0640 by default; job.json, setup.sh and sweep.json, which hold secrets, pass 0600).
FILE_MODE = 0o640


def atomic_write(path: Path, text: str | bytes, mode: int = FILE_MODE) -> None:
    """Write `text` (a str is written as UTF-8; bytes as they are, e.g. a PNG) to `path` through a
    temp file in the same folder, fsync and a rename: readers see the old or the new content, never
    a part; the file gets `mode`. A failed write leaves no temp file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp creates 0600
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
