"""The trainer process a job runs: `python -m awm_platform.runner.worker RUN_DIR`
(or under `accelerate launch ... -m awm_platform.runner.worker RUN_DIR`).

It runs the one training entry point (`awm_platform.runner.train_cli.worker_main`), the one
`awm train` runs too: SIGUSR1, SIGUSR2 and SIGTERM set the trainer's stop flag; the trainer
checkpoints at the next safe point and we exit 3 (`EXIT_INTERRUPTED`); 0 = completed, 2 = a model
that cannot be loaded, 1 = failed (traceback in `run_dir/worker_error.txt` and on stderr).
Exit codes: `trainers.awm.process`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from awm_platform.runner.train_cli import worker_main
from trainers.awm.process import process_rank

# Set by the controller when the trainer runs under a launcher (accelerate/torchrun), whose own
# exit code is 1 whenever a rank exits non-zero: each rank leaves its exit code in this directory.
EXIT_DIR_ENV = "AWM_EXIT_DIR"


def record_exit_code(code: int) -> None:
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return
    try:
        (Path(directory) / f"rank-{process_rank()}").write_text(f"{code}\n")
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


if __name__ == "__main__":
    code = worker_main(sys.argv[1:])
    record_exit_code(code)
    # Everything is flushed and closed by now (JSONL, store, MLflow, checkpoints are atomic
    # writes): skip the interpreter teardown, which takes ~3 s after torch/diffusers/mlflow
    # imports and would delay COMPLETED and every requeue.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
