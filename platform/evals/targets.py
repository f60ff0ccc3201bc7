"""What `awm eval run TARGET` evaluates: TARGET strings -> `EvalTarget`s.

Forms (docs/evals.md, "Targets"):

* `RUN`            the run's newest checkpoint in the store
* `RUN@STEP`       the run's checkpoint at STEP
* `RUN@all`        every checkpoint of the run
* a directory      a checkpoint folder with a `manifest.json` (`.../checkpoints/step-N`); when the
                   store knows it (its run's checkpoint at that step, same manifest sha256) it is
                   that `run@step`, else `dir:PATH` (no run, no checkpoint row)
* `sweep:NAME`     each trial run's best checkpoint: among the steps that have a checkpoint, the one
                   with the best value of the sweep's (first) objective metric in the store's metric
                   history; the newest checkpoint when no checkpointed step has a value
* `base:MODEL`     the base model with no LoRA; its "checkpoint sha256" is sha256("base:" + model +
                   "@" + revision), so every base evaluation has a key like any checkpoint's

A checkpoint's identity is the sha256 of its manifest bytes (what `StoreLogger` registers): the
manifest lists the sha256 of every file, so it names the weights exactly.

The model (`spec.ModelContext`: model, revision, family, resolution, precision, max_sequence_length,
uses_cfg) comes
from the checkpoint's run config (the store's resolved config, or `capsule/config.yaml` next to an
unregistered checkpoint folder); for `base:MODEL` and folders without a run config, from the eval
command's config (`--config` / `--set`, else the defaults).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from awm_platform.evals.spec import ModelContext
from awm_platform.store import NotFoundError, Store
from trainers.awm.checkpoint import MANIFEST
from trainers.awm.config import TrainerConfig

BASE_PREFIX = "base:"
SWEEP_PREFIX = "sweep:"
DIR_PREFIX = "dir:"
ALL_STEPS = "all"
# checkpoint formats (manifest `formats`) that hold a weight-EMA LoRA (trainers/awm/recipe.py)
EMA_FORMAT = "diffusers_ema"


class TargetError(ValueError):
    """A TARGET that names nothing evaluable; the message says which part and why."""


@dataclass(frozen=True)
class EvalTarget:
    """One thing to evaluate: a checkpoint (LoRA over its run's base model) or a base model."""

    label: str                      # `run@step`, `dir:PATH` or `base:MODEL` (the evaluations' `target`)
    checkpoint_sha256: str          # sha256 of the manifest bytes; base: sha256("base:" + model + "@" + revision)
    # the model being evaluated (model, revision, family, resolution, precision = pretrained.dtype,
    # max_sequence_length, uses_cfg): what `spec.resolve_spec` takes from it
    ctx: ModelContext
    run_name: str | None = None
    step: int | None = None
    checkpoint_id: int | None = None
    path: Path | None = None        # the checkpoint folder (LoRA in `lora/`, EMA in `lora_ema/`); None for base
    has_ema: bool = False

    @property
    def is_base(self) -> bool:
        return self.ctx.is_base

    def lora_dir(self, weights: str) -> Path | None:
        """The diffusers-format LoRA folder for `weights` (policy | ema); None for the base model."""
        if self.path is None:
            return None
        return self.path / ("lora_ema" if weights == "ema" else "lora")


def manifest_sha256(checkpoint_dir: Path) -> str:
    """The checkpoint's identity: sha256 of its manifest bytes (as `StoreLogger` registers it)."""
    return hashlib.sha256((Path(checkpoint_dir) / MANIFEST).read_bytes()).hexdigest()


def base_sha256(model: str, revision: str) -> str:
    return hashlib.sha256(f"{BASE_PREFIX}{model}@{revision}".encode()).hexdigest()


def read_manifest(checkpoint_dir: Path) -> dict[str, Any]:
    """The parsed manifest of a checkpoint folder; TargetError when there is none or it is unreadable."""
    path = Path(checkpoint_dir) / MANIFEST
    if not path.is_file():
        raise TargetError(f"{checkpoint_dir} is not a checkpoint directory (no {MANIFEST}; expected a "
                          "run's checkpoints/step-N folder)")
    try:
        data = json.loads(path.read_text())
        int(data["step"])
        dict(data["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TargetError(f"{path} is not a valid checkpoint manifest ({exc})") from None
    return data


def run_context(resolved: Mapping[str, Any]) -> ModelContext:
    """The model of a run from its resolved config (the store's, or `capsule/config.yaml`); the
    trainer's defaults fill any section an older run's config lacks."""
    defaults = TrainerConfig().model_dump(mode="json")
    conf = {**defaults, **dict(resolved)}
    for section in ("pretrained", "sample"):
        conf[section] = {**defaults[section], **dict(resolved.get(section) or {})}
    return ModelContext.from_resolved(conf)


def resolve_targets(store: Store, text: str, *, defaults: TrainerConfig | None = None,
                    warn: Callable[[str], None] | None = None) -> list[EvalTarget]:
    """TARGET -> the checkpoints (or base model) it names, in step order.

    `defaults`: the eval command's experiment config (`--config` / `--set`; None: the defaults), for
    `base:MODEL` (revision, family, dtype, resolution, max_sequence_length) and for checkpoint
    folders whose run config is unknown. `warn` hears about skipped members of a multi-checkpoint
    target (`RUN@all`, `sweep:NAME`) whose folder is gone. Raises TargetError."""
    text = text.strip()
    if not text:
        raise TargetError("empty TARGET: give a run name, RUN@STEP, RUN@all, a checkpoint directory, "
                          "sweep:NAME or base:MODEL")
    defaults = defaults if defaults is not None else TrainerConfig()
    if text.startswith(BASE_PREFIX):
        return [_base_target(text.removeprefix(BASE_PREFIX), defaults)]
    if text.startswith(SWEEP_PREFIX):
        return _sweep_targets(store, text.removeprefix(SWEEP_PREFIX), warn)
    if store.find_run(text) is not None:
        return [_newest(store, text)]
    run, sep, step = text.rpartition("@")
    if sep and run and store.find_run(run) is not None:
        if step == ALL_STEPS:
            ckpts = store.list_checkpoints(run)
            if not ckpts:
                raise TargetError(f"run {run!r} has no checkpoints yet")
            return _present([checkpoint_target(store, run, c) for c in ckpts], f"{run}@all", warn)
        try:
            n = int(step)
        except ValueError:
            raise TargetError(f"{text}: STEP must be an integer or '{ALL_STEPS}', got {step!r}") from None
        try:
            ckpt = store.get_checkpoint(run, n)
        except NotFoundError:
            steps = [c.step for c in store.list_checkpoints(run)]
            raise TargetError(f"run {run!r} has no checkpoint at step {n} (its checkpoints: "
                              f"{', '.join(map(str, steps)) or 'none yet'})") from None
        return [_require_present(checkpoint_target(store, run, ckpt))]
    path = Path(text).expanduser()
    if path.is_dir():
        return [_dir_target(store, path, defaults)]
    if sep and run:
        raise TargetError(f"{text}: no run named {run!r} in {store.redacted_url}")
    if "/" in text or path.exists():
        raise TargetError(f"{text} is not a checkpoint directory (not a directory)")
    raise TargetError(f"{text!r}: no run of that name in {store.redacted_url}, and not a directory "
                      "(TARGET: RUN, RUN@STEP, RUN@all, a checkpoint directory, sweep:NAME or base:MODEL)")


# ------------------------------------------------------------------------ forms ----
def _run_conf(store: Store, run_name: str) -> dict[str, Any]:
    return dict(store.get_run(run_name).resolved_config or {})


def checkpoint_target(store: Store, run_name: str, ckpt: Any, conf: Mapping[str, Any] | None = None) -> EvalTarget:
    """The target of a store checkpoint row `ckpt` of `run_name` (`conf`: the run's resolved config,
    read from the store when not given)."""
    conf = _run_conf(store, run_name) if conf is None else conf
    return EvalTarget(label=f"{run_name}@{ckpt.step}", checkpoint_sha256=ckpt.sha256, ctx=run_context(conf),
                      run_name=run_name, step=int(ckpt.step), checkpoint_id=int(ckpt.id), path=Path(ckpt.path),
                      has_ema=EMA_FORMAT in list(ckpt.formats or []))


def _newest(store: Store, run_name: str) -> EvalTarget:
    ckpts = store.list_checkpoints(run_name)
    if not ckpts:
        raise TargetError(f"run {run_name!r} has no checkpoints yet")
    return _require_present(checkpoint_target(store, run_name, ckpts[-1]))


def _require_present(target: EvalTarget) -> EvalTarget:
    if target.path is not None and not (target.path / MANIFEST).is_file():
        raise TargetError(f"{target.label}: its checkpoint directory {target.path} is gone (deleted run or "
                          "pruned checkpoint)")
    return target


def _present(targets: list[EvalTarget], what: str, warn: Callable[[str], None] | None) -> list[EvalTarget]:
    out = []
    for t in targets:
        if t.path is not None and not (t.path / MANIFEST).is_file():
            if warn is not None:
                warn(f"skipping {t.label}: its checkpoint directory {t.path} is gone")
            continue
        out.append(t)
    if not out:
        raise TargetError(f"{what}: every checkpoint directory is gone")
    return out


def _base_target(model: str, defaults: TrainerConfig) -> EvalTarget:
    model = model.strip()
    if not model:
        raise TargetError("base:MODEL needs a model: a hub id or a local pipeline directory, e.g. "
                          "base:stabilityai/stable-diffusion-3.5-medium")
    cfg = defaults.model_copy(update={"pretrained": defaults.pretrained.model_copy(update={"model": model})})
    # the base model is evaluated like a run of the command's config: CFG (4.5) when its
    # sample.guidance_scale > 1, else without (pin eval.service.guidance_scale for either)
    ctx = ModelContext.from_config(cfg, is_base=True)
    return EvalTarget(label=f"{BASE_PREFIX}{model}", checkpoint_sha256=base_sha256(model, str(ctx.revision)), ctx=ctx)


def _dir_target(store: Store, path: Path, defaults: TrainerConfig) -> EvalTarget:
    path = path.resolve()
    manifest = read_manifest(path)
    sha = manifest_sha256(path)
    step = int(manifest["step"])
    # a run's checkpoint folder (<run dir>/checkpoints/step-N) the store knows: that run@step
    run_name = path.parent.parent.name
    run = store.find_run(run_name)
    if run is not None and Path(run.output_dir).resolve() == path.parent.parent:
        try:
            ckpt = store.get_checkpoint(run_name, step)
        except NotFoundError:
            ckpt = None
        if ckpt is not None and ckpt.sha256 == sha:
            return checkpoint_target(store, run_name, ckpt, run.resolved_config or {})
    capsule = path.parent.parent / "capsule" / "config.yaml"
    ctx = ModelContext.from_config(defaults)
    if capsule.is_file():
        try:
            conf = yaml.safe_load(capsule.read_text())
        except (OSError, yaml.YAMLError):
            conf = None
        if isinstance(conf, dict):
            ctx = run_context(conf)
    return EvalTarget(label=f"{DIR_PREFIX}{path}", checkpoint_sha256=sha, ctx=ctx, step=step, path=path,
                      has_ema=EMA_FORMAT in list(manifest.get("formats") or []))


def _sweep_targets(store: Store, name: str, warn: Callable[[str], None] | None) -> list[EvalTarget]:
    try:
        sweep = store.get_sweep(name)
    except NotFoundError as exc:
        raise TargetError(str(exc)) from None
    objectives = list(((sweep.resolved_config or {}).get("sweep") or {}).get("objective") or [])
    objective = objectives[0] if objectives else None
    out = []
    for run in store.list_runs(sweep_name=name):
        ckpts = store.list_checkpoints(run.name)
        if not ckpts:
            continue
        ckpt = best_checkpoint(store, run.name, ckpts, objective)
        out.append(checkpoint_target(store, run.name, ckpt, run.resolved_config or {}))
    if not out:
        raise TargetError(f"sweep {name!r}: none of its trial runs has a checkpoint yet")
    return _present(out, f"sweep:{name}", warn)


def best_checkpoint(store: Store, run_name: str, ckpts: list[Any], objective: Mapping[str, Any] | None) -> Any:
    """The checkpoint at the step with the best value of `objective` (`{metric, direction}`) among
    the checkpointed steps; the newest when no checkpointed step has a value (or no objective)."""
    if objective:
        values = {step: v for step, v in store.get_metric_history(run_name, str(objective["metric"]))
                  if math.isfinite(v)}
        sign = -1.0 if objective.get("direction", "maximize") == "minimize" else 1.0
        scored = [c for c in ckpts if c.step in values]
        if scored:
            # ties: the later checkpoint (it trained longer for the same value)
            return max(scored, key=lambda c: (sign * values[c.step], c.step))
    return ckpts[-1]
