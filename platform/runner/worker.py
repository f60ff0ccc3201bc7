"""The trainer process a job runs: `python -m awm_platform.runner.worker RUN_DIR`
(or under `accelerate launch ... -m awm_platform.runner.worker RUN_DIR`).

SIGUSR1, SIGUSR2 and SIGTERM set the trainer's stop flag; the trainer checkpoints at the next
safe point and we exit 3 (`EXIT_INTERRUPTED`); 0 = completed, 1 = failed (traceback in
`run_dir/worker_error.txt` and on stderr). Rank 0 reports metrics to the composite logger
(JSONL + store + MLflow); other ranks log nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from awm_platform.runner.spec import EXIT_INTERRUPTED, JobSpec


class StopFlag:
    """`stop` object of the trainer contract (is_set()), settable from a signal handler."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.signal = signal.Signals(signum).name
            print(
                f"[awm-worker] {self.signal}: checkpointing at the next safe point",
                file=sys.stderr,
                flush=True,
            )
            self._event.set()

        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, handler)


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


# Set by the controller when the trainer runs under a launcher (accelerate/torchrun), whose own
# exit code is 1 whenever a rank exits non-zero: each rank leaves its exit code in this directory.
EXIT_DIR_ENV = "AWM_EXIT_DIR"


def record_exit_code(code: int) -> None:
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return
    try:
        (Path(directory) / f"rank-{_rank()}").write_text(f"{code}\n")
    except OSError as exc:
        print(f"[awm-worker] warning: could not record the exit code: {exc}", file=sys.stderr, flush=True)


def read_exit_codes(directory: Path) -> list[int]:
    """The exit codes `record_exit_code` left in `directory` (one per rank that got that far)."""
    codes = []
    for path in sorted(Path(directory).glob("rank-*")):
        try:
            codes.append(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return codes


def _trainer_logging() -> None:
    """The trainer's own log lines (which checkpoint it resumed from, or that none was valid)
    go to the job log (stderr), as with `awm train`; other libraries' INFO chatter does not."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    trainer_log = logging.getLogger("trainers")
    trainer_log.addHandler(handler)
    trainer_log.setLevel(logging.INFO if _rank() == 0 else logging.WARNING)
    trainer_log.propagate = False


def run(run_dir: Path, stop: StopFlag | None = None) -> int:
    os.environ.pop("MLFLOW_RUN_ID", None)
    stop = stop or StopFlag()
    spec = JobSpec.load(run_dir)
    cfg = spec.experiment_config()
    from awm_platform.runner.capsule import event
    from trainers.awm.recipe import train

    event(run_dir, "trainer_imported", rank=_rank())

    logger: Any
    if _rank() == 0:
        from awm_platform.runner.tracking import build_logger

        logger = build_logger(spec, run_dir)
    else:
        from awm_platform.runner.tracking import NullLogger

        logger = NullLogger()
    status = "failed"
    try:
        event(run_dir, "train_call", rank=_rank())
        result = train(cfg, run_dir, logger=logger, stop=stop)
        status = str(result.status)
        event(run_dir, "train_return", status=status)
    finally:
        try:
            if hasattr(logger, "finish"):
                logger.finish(status)
            logger.close()
            event(run_dir, "logger_closed")
        except Exception as exc:  # pragma: no cover
            print(f"[awm-worker] warning: closing the logger failed: {exc}", file=sys.stderr, flush=True)
    return 0 if status == "completed" else EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m awm_platform.runner.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    import faulthandler

    faulthandler.register(signal.SIGQUIT, all_threads=True)  # `kill -QUIT pid`: stacks of a hung job
    from awm_platform.paths import restrict_umask
    from awm_platform.runner.capsule import event

    restrict_umask()
    stop = StopFlag()
    stop.install()  # before the heavy imports: a signal during start-up must not kill us
    _trainer_logging()
    event(run_dir, "worker_start", rank=_rank())
    try:
        return run(run_dir, stop)
    except Exception:
        tb = traceback.format_exc()
        try:  # the traceback reaches the job log and the store's error column: no secrets
            tb = JobSpec.load(run_dir).scrub(tb)
        except Exception:  # noqa: BLE001 - no job spec: URL credentials at least
            from awm_platform.redaction import scrub

            tb = scrub(tb, set())
        print(tb, file=sys.stderr, flush=True)
        try:
            (run_dir / "worker_error.txt").write_text(tb)
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    code = main()
    record_exit_code(code)
    # Everything is flushed and closed by now (JSONL, store, MLflow, checkpoints are atomic
    # writes): skip the interpreter teardown, which takes ~3 s after torch/diffusers/mlflow
    # imports and would delay COMPLETED and every requeue.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
