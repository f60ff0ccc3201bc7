"""Trainer-only commands, mounted by the platform CLI as `awm model ...` (`register(root_app)`).

`awm train` is the platform's (platform/runner/train_cli.py): it reads the platform's experiment
config. torch/diffusers are imported inside the command functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainers.awm.process import EXIT_BAD_INPUT

model_app = typer.Typer(help="Model utilities (tiny test pipelines).", no_args_is_help=True, add_completion=False)


def make_tiny_command(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the diffusers pipeline into")],
    family: Annotated[str, typer.Option("--family", help="sd3 (StableDiffusion3Pipeline) or flux (FluxPipeline)")] = "sd3",
    dual_attention: Annotated[bool, typer.Option("--dual-attention", help="SD3.5-M style blocks with attn2 (sd3)")] = False,
    preset: Annotated[str, typer.Option("--preset", help="tiny (~0.1M), small (~0.6M) or perf (~3.5M)")] = "tiny",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a tiny random-weight SD3 or FLUX pipeline (offline; in-memory tokenizers)."""
    from trainers.awm.tiny import FAMILIES, FLUX_PRESETS, PRESETS, make_tiny

    if family not in FAMILIES:
        typer.echo(f"error: --family {family!r} is not a family; choose one of {', '.join(FAMILIES)}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    presets = FLUX_PRESETS if family == "flux" else PRESETS
    if preset not in presets:
        typer.echo(f"error: unknown preset {preset!r}; choose one of {', '.join(presets)}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    if dual_attention and family != "sd3":
        typer.echo("error: --dual-attention is an SD3.5 option (attn2); FLUX has no second attention", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    out = make_tiny(out_dir, family=family, preset=preset, dual_attention=dual_attention, seed=seed)
    typer.echo(str(out))


model_app.command("make-tiny")(make_tiny_command)


def register(root: typer.Typer) -> None:
    """Mount the `model` group on the platform's root Typer app."""
    root.add_typer(model_app, name="model")
