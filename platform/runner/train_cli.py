"""The one training entry point: `awm train CONFIG` and the runner's worker
(`python -m awm_platform.runner.worker RUN_DIR`, started by the job controller) both run a trainer
process through here, so they stop on the same signals (SIGUSR1, SIGUSR2, SIGTERM), log alike and
exit with the same codes (trainers.awm.process: 0 completed, 3 interrupted, 2 bad config or a model
that cannot be loaded, 1 any other error).

Standalone, e.g. under accelerate (one process per rank; gloo on CPU)::

    python -m awm_platform.runner.train_cli CONFIG [--set k=v]... [--run-dir DIR]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no -m awm_platform.runner.train_cli CONFIG

A CLI command module: torch, diffusers and mlflow are imported inside the functions, after the
stop signals are installed (a signal during start-up must not kill the process).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from awm_platform.cli.common import OverridesOpt
from awm_platform.paths import PlatformHomeError, awm_home, restrict_umask
from trainers.awm.process import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    StopFlag,
    exit_code,
    process_rank,
    trainer_process,
)

if TYPE_CHECKING:  # pragma: no cover
    from trainers.awm.config import TrainerConfig
    from trainers.awm.logging import MetricLogger

WORKER_ERROR_FILE = "worker_error.txt"  # the job controller reports its tail as the run's error


def _no_event(name: str, **fields: object) -> None:
    pass


def run_training(
    cfg: TrainerConfig,
    run_dir: Path,
    *,
    stop: StopFlag,
    make_logger: Callable[[], MetricLogger] | None = None,
    record: Callable[..., None] = _no_event,
    error_file: Path | None = None,
) -> int:
    """Train (or resume) `cfg` in `run_dir` in this process and return the exit code.

    `make_logger` builds rank 0's logger once the trainer is imported (default: the trainer's
    own `metrics.jsonl`); it is told how the run ended (`finish`) and closed here. `record` marks
    the timeline (`capsule.event`); `error_file` receives the message of a model that cannot be
    loaded. A model that cannot be loaded removes the folders this call would have created (no
    run dir left to block the name) and exits 2; other errors propagate."""
    from trainers.awm.model import ModelLoadError
    from trainers.awm.recipe import train

    rank = process_rank()
    record("trainer_imported", rank=rank)
    # the topmost folder this run creates: removed again if the model cannot even be loaded
    created = next((p for p in reversed((run_dir, *run_dir.parents)) if not p.exists()), None)
    logger = make_logger() if make_logger is not None and rank == 0 else None
    status = "failed"
    try:
        record("train_call", rank=rank)
        result = train(cfg, run_dir, logger=logger, stop=stop, cache_dir=_prompt_cache())
        status = str(result.status)
        record("train_return", status=status)
    except ModelLoadError as exc:
        if created is not None and rank == 0:  # nothing trained: leave no run dir that blocks the name
            shutil.rmtree(created, ignore_errors=True)
        message = f"error: {exc}"
        print(message, file=sys.stderr, flush=True)
        if error_file is not None and error_file.parent.is_dir():
            error_file.write_text(message + "\n")
        return EXIT_BAD_INPUT
    finally:
        if logger is not None:
            try:
                finish = getattr(logger, "finish", None)
                if finish is not None:
                    finish(status)
                logger.close()
                record("logger_closed")
            except Exception as exc:  # noqa: BLE001 - the run's outcome stands; say why tracking lags
                print(f"[awm-train] warning: closing the logger failed: {exc}", file=sys.stderr, flush=True)
    if rank == 0:
        print(f"{result.status}: step {result.global_step}, epochs {result.epoch}, "
              f"last checkpoint {result.last_checkpoint}", file=sys.stderr, flush=True)
    return exit_code(status)


def _prompt_cache() -> Path | None:
    """Where generated prompt sets are kept between runs (`$AWM_HOME/cache`); None (generate them
    in memory) when the home cannot hold it."""
    try:
        return awm_home(create=False) / "cache"
    except PlatformHomeError:
        return None


# ------------------------------------------------------------------ `awm train` ----
def train_command(
    config: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="experiment YAML")],
    set_: OverridesOpt = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="default: $AWM_HOME/runs/<name>")] = None,
) -> None:
    """Train (or resume) an AWM run in this process (accelerate-launchable)."""
    restrict_umask()  # as `awm` itself does: also when run standalone
    with trainer_process() as stop:
        code = _train(config, list(set_ or []), run_dir, stop)
    raise typer.Exit(code)


def _train(config: Path, overrides: list[str], run_dir: Path | None, stop: StopFlag) -> int:
    from awm_platform.config import ConfigError, load_config
    from awm_platform.paths import run_dir as default_run_dir

    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = load_config(config, overrides=overrides, world_size=world)
    except ConfigError as exc:
        return _bad_input(str(exc))
    blocking = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None) \
        if run_dir is not None else None
    if blocking is not None:
        return _bad_input(f"--run-dir {run_dir}: {blocking} is a file; give a directory (created if missing)")
    import torch

    cpu_only = (not torch.cuda.is_available()
                or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"))
    if cfg.mixed_precision == "fp16" and cpu_only:
        return _bad_input(f"{config}: mixed_precision=fp16 needs a GPU and none is visible; set "
                          "mixed_precision: no (or bf16) to train on CPU, e.g. --set mixed_precision=no")
    if run_dir is None:
        try:
            run_dir = default_run_dir(cfg.name)
        except PlatformHomeError as exc:
            return _bad_input(str(exc))
    return run_training(cfg, run_dir, stop=stop)


def _bad_input(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return EXIT_BAD_INPUT


def register(root: typer.Typer) -> None:
    """Mount `train` on the platform's root Typer app."""
    root.command("train")(train_command)


# ------------------------------------------------------------- the runner's worker ----
def worker_main(argv: list[str]) -> int:
    """`python -m awm_platform.runner.worker RUN_DIR`: train the run its job controller started.
    Rank 0 reports metrics to the composite logger (JSONL + store + MLflow); other ranks log
    nothing. A failure's traceback goes to stderr and `run_dir/worker_error.txt`."""
    if len(argv) != 1:
        print("usage: python -m awm_platform.runner.worker RUN_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = Path(argv[0])
    restrict_umask()
    with trainer_process() as stop:  # before the heavy imports: a signal during start-up must not kill us
        from awm_platform.runner.capsule import event

        event(run_dir, "worker_start", rank=process_rank())
        try:
            return _run_job(run_dir, stop)
        except Exception:
            _report_failure(run_dir, traceback.format_exc())
            return EXIT_ERROR


def _run_job(run_dir: Path, stop: StopFlag) -> int:
    from awm_platform.runner.capsule import event
    from awm_platform.runner.proc import scrub_environ
    from awm_platform.runner.spec import JobSpec

    scrub_environ()
    spec = JobSpec.load(run_dir)
    cfg = spec.experiment_config()

    def make_logger() -> Any:
        from awm_platform.runner.tracking import build_logger

        return build_logger(spec, run_dir)

    return run_training(cfg, run_dir, stop=stop, make_logger=make_logger,
                        record=functools.partial(event, run_dir), error_file=run_dir / WORKER_ERROR_FILE)


def _report_failure(run_dir: Path, tb: str) -> None:
    from awm_platform.redaction import scrub
    from awm_platform.runner.spec import JobSpec

    try:  # the traceback reaches the job log and the store's error column: no secrets
        tb = JobSpec.load(run_dir).scrub(tb)
    except Exception:  # noqa: BLE001 - no job spec: URL credentials at least
        tb = scrub(tb, set())
    print(tb, file=sys.stderr, flush=True)
    try:
        (run_dir / WORKER_ERROR_FILE).write_text(tb)
    except OSError:
        pass


app = typer.Typer(help="Train (or resume) an AWM run in this process.", add_completion=False,
                  pretty_exceptions_enable=False)
app.command()(train_command)

if __name__ == "__main__":  # pragma: no cover
    app()
