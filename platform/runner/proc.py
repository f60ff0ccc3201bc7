"""Process-tree helpers for the job controller: signal forwarding and no-orphan cleanup.

torch's elastic launcher (under `accelerate launch`) starts each rank with
`start_new_session=True`, so signalling the child's process group does not reach the
ranks. We walk /proc instead and signal every descendant.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces/parentheses: parse after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        ppid = int(fields[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (children first), not including `pid`."""
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def is_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def signal_tree(pid: int, sig: int, *, include_root: bool = True) -> None:
    targets = descendants(pid)
    if include_root:
        targets.insert(0, pid)
    for p in targets:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(pid: int, *, grace_s: float = 5.0) -> None:
    """SIGTERM the tree, then SIGKILL whatever is left after `grace_s` (no orphans)."""
    tree = [pid, *descendants(pid)]
    try:
        os.killpg(pid, signal.SIGTERM)  # the child leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p) for p in tree):
        time.sleep(0.05)
    for p in [*tree, *descendants(pid)]:
        if is_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
