"""Code snapshot: every attempt of a job runs the code it was submitted with.

A job may wait in the queue or be requeued hours after `awm submit`; meanwhile the checkout
changes (`git pull`, edits). So at submit time the first-party packages (`awm_platform`,
`trainers`, `benchmarks`), as the submitting process imports them (working tree, uncommitted
edits and untracked files included), are copied into a content-addressed directory
`$AWM_HOME/code/<sha256[:16]>/` (one copy per distinct code version, shared by every run and
job array submitted with it; ~9 MB) and linked as `run_dir/code`. The capsule records the
hash (`capsule/code.json`).

The job imports from the snapshot: its environment gets `PYTHONPATH=run_dir/code` (first) and
`PYTHONSAFEPATH=1`. The latter matters: `python -m ...` otherwise puts the working directory
(often a checkout, holding `trainers/` and `benchmarks/`) first on `sys.path`, ahead of
PYTHONPATH. The editable install's finder comes after `sys.path` lookups, so the snapshot wins
for all three packages (`awm_platform` is a namespace package: the snapshot's portion comes
first in its `__path__`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import awm_platform.runner
import benchmarks
import trainers
from awm_platform.runner.proc import scoped_environ
from benchmarks.files import atomic_write

PACKAGES = ("awm_platform", "trainers", "benchmarks")
CODE_DIR = "code"  # run_dir/code -> $AWM_HOME/code/<hash>
RECORD = "code.json"  # in run_dir/capsule/
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class CodeSnapshot:
    sha256: str  # over every file's package-relative path and bytes
    path: str  # the content-addressed directory
    files: int
    bytes: int
    sources: dict[str, str]  # package -> directory it was copied from


def package_sources() -> dict[str, Path]:
    """Where this process imports each first-party package from (a checkout, an installed
    wheel, or itself a snapshot)."""
    # awm_platform is a namespace package (platform/ has no __init__.py): take the directory
    # its `runner` subpackage, i.e. this very code, was imported from
    return {
        "awm_platform": Path(awm_platform.runner.__file__).resolve().parents[1],
        "trainers": Path(trainers.__file__).resolve().parent,
        "benchmarks": Path(benchmarks.__file__).resolve().parent,
    }


def _collect(sources: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """(package-relative path, file) for every file of the packages, in a stable order.
    Byte-code caches and dot-files are not code."""
    out: list[tuple[str, Path]] = []
    for package in sorted(sources):
        root = sources[package]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            rel_dir = Path(dirpath).relative_to(root)
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                if path.is_file():
                    out.append(((Path(package) / rel_dir / name).as_posix(), path))
    return out


def snapshot_code(home: Path, sources: Mapping[str, Path] | None = None) -> CodeSnapshot:
    """Copy the packages into `home/code/<hash>/` unless that version is there already.

    Each file is read once (hashed and written from memory). The copy is staged in a
    temporary directory and renamed into place, so a snapshot directory is always complete;
    concurrent submits of the same code both end up using one directory. Files are made
    read-only: other runs may share them."""
    sources = {k: Path(v) for k, v in (sources or package_sources()).items()}
    files = [(rel, path.read_bytes()) for rel, path in _collect(sources)]
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    sha = digest.hexdigest()
    store = Path(home) / CODE_DIR
    target = store / sha[:16]
    if not target.is_dir():
        tmp = store / f".tmp-{sha[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            for rel, data in files:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                dest.chmod(0o444)
            tmp.mkdir(parents=True, exist_ok=True)  # no files at all: still a (empty) snapshot
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a concurrent submit of the same code: a real error
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return CodeSnapshot(
        sha256=sha,
        path=str(target),
        files=len(files),
        bytes=sum(len(data) for _, data in files),
        sources={k: str(v) for k, v in sorted(sources.items())},
    )


def link_snapshot(run_dir: Path, snap: CodeSnapshot) -> Path:
    """`run_dir/code` -> the snapshot (a relative link: moving `$AWM_HOME` keeps it valid) and
    `run_dir/capsule/code.json`. Made once, at submission: requeues and `awm rerun --resume`
    run the same directory."""
    link = Path(run_dir) / CODE_DIR
    link.symlink_to(os.path.relpath(snap.path, Path(run_dir)), target_is_directory=True)
    atomic_write(Path(run_dir) / "capsule" / RECORD, json.dumps(asdict(snap), indent=2) + "\n")
    return link


def code_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CODE_DIR


def with_code_path(env: Mapping[str, str], code: Path) -> dict[str, str]:
    """`env` with the snapshot first on PYTHONPATH (once) and PYTHONSAFEPATH=1."""
    out = dict(env)
    entries = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(code)]
    out["PYTHONPATH"] = os.pathsep.join([str(code), *entries])
    out["PYTHONSAFEPATH"] = "1"
    return out


def setup_line(code: Path) -> str:
    """The same as `with_code_path`, as a line of the sbatch script (after the user's setup
    lines: a `module load` that resets PYTHONPATH must not drop the snapshot)."""
    return f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}} PYTHONSAFEPATH=1"


def code_environ(code: Path) -> contextlib.AbstractContextManager[None]:
    """os.environ as `with_code_path` makes it, for the duration of a submission: submitit's
    local executor starts the job's controller with a copy of os.environ."""
    env = with_code_path(os.environ, code)
    return scoped_environ({key: env[key] for key in ("PYTHONPATH", "PYTHONSAFEPATH")})