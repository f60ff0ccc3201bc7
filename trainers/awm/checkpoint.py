"""Atomic, verifiable checkpoints: ``<run_dir>/checkpoints/step-<N>/``.

Layout::

    step-<N>/
      lora/pytorch_lora_weights.safetensors    policy LoRA, diffusers format + adapter metadata
      lora_peft/{adapter_config.json, adapter_model.safetensors}   same weights, PEFT format
      lora_ema/pytorch_lora_weights.safetensors                    weight-EMA LoRA, diffusers format
      state/                                   everything needed for a bitwise resume
      manifest.json                            {"step", "epoch", "config_hash", "files": {rel: sha256}, ...}

Writing: every file goes into ``.tmp-step-<N>`` first, is fsynced, the manifest is written last,
then the folder is renamed to ``step-<N>`` (atomic on POSIX) and the parent fsynced. A crash at any
point leaves either no ``step-<N>`` or a complete one. Reading: :func:`find_latest_valid` walks
the steps newest first and skips (with a warning) folders with a missing/unparsable manifest, a
missing file or a sha256 mismatch. Tensors are read only with safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    pass


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{int(step)}"


def tmp_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f".tmp-step-{int(step)}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prepare_tmp(run_dir: str | Path, step: int) -> Path:
    """Create an empty temp folder for ``step`` (main process; removes a stale one)."""
    tmp = tmp_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def finalize(run_dir: str | Path, step: int, epoch: int, *, config_hash: str, formats: list[str],
             extra: dict[str, Any] | None = None) -> Path:
    """fsync every file of the temp folder, write the manifest, rename to ``step-<N>``."""
    tmp = tmp_dir(run_dir, step)
    files: dict[str, str] = {}
    for p in sorted(tmp.rglob("*")):
        if p.is_file():
            _fsync_file(p)
            files[p.relative_to(tmp).as_posix()] = sha256_file(p)
    for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}):
        _fsync_dir(d)
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "config_hash": config_hash,
        "created": time.time(),
        "formats": list(formats),
        "files": files,
    }
    if extra:
        manifest.update(extra)
    mpath = tmp / MANIFEST
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    final = step_dir(run_dir, step)
    old = None
    if final.exists():  # re-saving the same step (e.g. after a resume): swap atomically-ish
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    epoch: int
    manifest: dict[str, Any]


def list_step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def validate(path: Path, *, verify_hashes: bool = True) -> CheckpointInfo:
    """Raise CheckpointError when the folder is incomplete or corrupt."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        step, epoch = int(manifest["step"]), int(manifest["epoch"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc})") from exc
    for rel, digest in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: missing file {rel}")
        if verify_hashes and sha256_file(f) != digest:
            raise CheckpointError(f"{path}: sha256 mismatch for {rel} (truncated or modified)")
    return CheckpointInfo(path, step, epoch, manifest)


def find_latest_valid(run_dir: str | Path, *, verify_hashes: bool = True,
                      set_aside_invalid: bool = False) -> CheckpointInfo | None:
    """Newest checkpoint that validates; invalid ones are skipped with ONE warning each.

    With ``set_aside_invalid`` (the trainer, before resuming) every skipped folder is renamed to
    ``step-<N>.invalid-<UTC time>``: training from an older checkpoint (or from step 0) would
    otherwise overwrite it when it reaches step N, and retention ignores the new name, so a
    corrupt checkpoint stays there to be looked at."""
    for _step, path in reversed(list_step_dirs(run_dir)):
        try:
            return validate(path, verify_hashes=verify_hashes)
        except CheckpointError as exc:
            msg = f"skipping invalid checkpoint: {exc}"
            if set_aside_invalid:
                msg += f"; kept aside as {set_aside(path).name}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return None


def set_aside(path: Path) -> Path:
    """Rename an invalid checkpoint folder out of the ``step-<N>`` namespace (never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.invalid-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.invalid-{stamp}-{n}")
        n += 1
    os.rename(path, target)
    return target


def apply_retention(run_dir: str | Path, *, keep_last: int | None, keep_every: int = 0,
                    protect: Path | None = None) -> list[Path]:
    """Delete checkpoints beyond the last ``keep_last`` unless ``step % keep_every == 0``.

    ``protect`` (the checkpoint just written) is never deleted. Returns the deleted paths.
    Stale ``.tmp-*`` folders are removed too.
    """
    root = checkpoints_dir(run_dir)
    for p in root.glob(".tmp-step-*") if root.is_dir() else []:
        if protect is None or p != protect:
            shutil.rmtree(p, ignore_errors=True)
    if not keep_last:
        return []
    steps = list_step_dirs(run_dir)
    keep = {p for _, p in steps[-keep_last:]}
    if keep_every:
        keep |= {p for s, p in steps if s % keep_every == 0}
    if protect is not None:
        keep.add(protect)
    deleted = []
    for _, p in steps:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    return deleted


# ----------------------------------------------------------------- tensor I/O
def save_tensors(path: Path, tensors: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, Any]:
    return load_file(str(path))


def save_torch(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, str(path))


def load_torch(path: Path) -> Any:
    return torch.load(str(path), map_location="cpu", weights_only=True)
