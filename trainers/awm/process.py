"""The contract of a trainer process (`awm train` and the runner's worker share it): its exit codes,
the signals that stop it, and where its log lines go.

Exit codes: 0 completed, 1 any other error, 2 bad input (an invalid config, a model that cannot be
loaded), 3 interrupted (a stop signal came in: the trainer checkpointed at the next safe point and
returned). SIGUSR1, SIGUSR2 and SIGTERM set the stop flag (SLURM's preemption/timeout signal is
USR2 for submitit, USR1 for the job controller, TERM for `scancel`).

Light on purpose (standard library only): a process installs its stop signals with this module
before it imports torch, so a signal during start-up is not lost.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2  # also the "bad input" code of every platform command (platform/cli/common.py)
EXIT_INTERRUPTED = 3

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
#: the loggers whose records a trainer process writes to stderr (its log, the job log)
TRAINER_LOGGER = "trainers"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("trainers.awm.process")


def process_rank() -> int:
    """This process's global rank under a launcher (accelerate/torchrun), 0 without one."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


def exit_code(status: str) -> int:
    """The exit code of a trainer result status ("completed" or "interrupted")."""
    return EXIT_OK if status == "completed" else EXIT_INTERRUPTED


class StopFlag:
    """The trainer's ``stop`` (``is_set()``), set by a stop signal; ``signal`` names the one received."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        log.warning("received %s: checkpointing at the next safe point", self.signal)
        self._event.set()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr`` (a test runner may swap it between two trainings)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


@contextmanager
def trainer_process(rank: int | None = None) -> Iterator[StopFlag]:
    """Set this process up as a trainer process for the duration of the block: the stop signals
    set the yielded flag, `kill -QUIT pid` dumps every thread's stack to stderr, and the trainer's
    log lines (which checkpoint it resumed from, a stop signal) go to stderr (INFO on rank 0,
    WARNING on the others; other libraries' INFO chatter does not). Everything is restored on
    exit, so repeated in-process trainings (tests, notebooks) start alike."""
    rank = process_rank() if rank is None else rank
    stop = StopFlag()
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    # the real stderr: a test runner's replacement of sys.stderr has no file descriptor
    faulthandler.register(signal.SIGQUIT, file=sys.__stderr__, all_threads=True)
    trainer_log = logging.getLogger(TRAINER_LOGGER)
    saved = (trainer_log.level, trainer_log.propagate)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    trainer_log.addHandler(handler)
    trainer_log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    trainer_log.propagate = False  # a library's basicConfig must not print our lines twice
    try:
        yield stop
    finally:
        trainer_log.removeHandler(handler)
        trainer_log.setLevel(saved[0])
        trainer_log.propagate = saved[1]
        faulthandler.unregister(signal.SIGQUIT)
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
