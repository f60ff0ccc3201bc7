"""Typer commands of the trainer, mounted by the platform CLI (``awm train``, ``awm model ...``).

Mount with :func:`register` (``register(root_app)``) or pick ``train_command`` / ``model_app``.
Standalone (e.g. under accelerate)::

    python -m trainers.awm.cli train CONFIG [--set k=v]... [--run-dir DIR]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no -m trainers.awm.cli train CONFIG

Imports of torch/diffusers happen inside the command functions only.
Exit codes of ``train``: 0 completed, 3 interrupted (SIGUSR1/SIGTERM -> checkpoint -> exit),
2 invalid config or model not loadable, 1 any other error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 3

app = typer.Typer(help="AWM trainer commands.", no_args_is_help=True, add_completion=False)
model_app = typer.Typer(help="Model utilities (tiny test pipelines).", no_args_is_help=True, add_completion=False)


def train_command(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="experiment YAML")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="dotted override, e.g. --set train.beta=0.003 (repeatable)")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="default: $AWM_HOME/runs/<name>")] = None,
) -> None:
    """Train (or resume) an AWM run in this process (accelerate-launchable)."""
    import logging
    import os
    import signal
    import sys
    import threading

    from awm_platform.config import ConfigError, load_config

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config, overrides=list(set_ or []), world_size=world)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    blocking = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None) \
        if run_dir is not None else None
    if blocking is not None:
        typer.echo(f"error: --run-dir {run_dir}: {blocking} is a file; give a directory (created if missing)",
                   err=True)
        raise typer.Exit(EXIT_CONFIG)
    import torch

    cpu_only = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    if cfg.mixed_precision == "fp16" and cpu_only:
        typer.echo(f"error: {config}: mixed_precision=fp16 needs a GPU and none is visible; set "
                   "mixed_precision: no (or bf16) to train on CPU, e.g. --set mixed_precision=no", err=True)
        raise typer.Exit(EXIT_CONFIG)
    if run_dir is None:
        from awm_platform.paths import PlatformHomeError
        from awm_platform.paths import run_dir as default_run_dir

        try:
            run_dir = default_run_dir(cfg.name)
        except PlatformHomeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_CONFIG) from None
    # the topmost folder this run creates: removed again if the model cannot even be loaded
    created = next((p for p in reversed((run_dir, *run_dir.parents)) if not p.exists()), None)

    stop = threading.Event()

    def _handler(signum, _frame):
        logging.getLogger("trainers.awm").warning("received %s: checkpointing at the next safe point",
                                                  signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, _handler)

    from trainers.awm.model import ModelLoadError
    from trainers.awm.recipe import train

    try:
        result = train(cfg, run_dir, stop=stop)
    except ModelLoadError as exc:
        if created is not None and rank == 0:  # nothing trained: leave no run dir that blocks the name
            import shutil

            shutil.rmtree(created, ignore_errors=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    if rank == 0:
        typer.echo(f"{result.status}: step {result.global_step}, epochs {result.epoch}, "
                   f"last checkpoint {result.last_checkpoint}", file=sys.stderr)
    raise typer.Exit(EXIT_INTERRUPTED if result.status == "interrupted" else EXIT_OK)


def make_tiny_command(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the diffusers pipeline into")],
    dual_attention: Annotated[bool, typer.Option("--dual-attention", help="SD3.5-M style blocks with attn2")] = False,
    preset: Annotated[str, typer.Option("--preset", help="tiny (~0.1M), small (~0.6M) or perf (~3.5M)")] = "tiny",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a tiny random-weight SD3 pipeline (offline; in-memory tokenizers)."""
    from trainers.awm.tiny import PRESETS, make_tiny

    if preset not in PRESETS:
        typer.echo(f"error: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", err=True)
        raise typer.Exit(EXIT_CONFIG)
    out = make_tiny(out_dir, preset=preset, dual_attention=dual_attention, seed=seed)
    typer.echo(str(out))


app.command("train")(train_command)
model_app.command("make-tiny")(make_tiny_command)
app.add_typer(model_app, name="model")


def register(root: typer.Typer) -> None:
    """Mount ``train`` and the ``model`` group on the platform's root Typer app."""
    root.command("train")(train_command)
    root.add_typer(model_app, name="model")


if __name__ == "__main__":  # pragma: no cover
    app()
