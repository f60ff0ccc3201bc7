"""The trainer-process contract (trainers/awm/process.py): every stop signal sets the flag, the
process set-up is undone afterwards, exit codes of a result."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from trainers.awm.process import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    STOP_SIGNALS,
    TRAINER_LOGGER,
    exit_code,
    trainer_process,
)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_each_stop_signal_sets_the_flag_and_handlers_are_restored(sig: signal.Signals, capfd) -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    trainer_log = logging.getLogger(TRAINER_LOGGER)
    log_state = (trainer_log.level, trainer_log.propagate, list(trainer_log.handlers))
    with trainer_process(rank=0) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        assert stop.is_set() and stop.signal == sig.name
        logging.getLogger("trainers.awm.recipe").info("resumed from somewhere")
    err = capfd.readouterr().err
    assert f"received {sig.name}: checkpointing at the next safe point" in err
    assert "INFO trainers.awm.recipe: resumed from somewhere" in err
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    assert (trainer_log.level, trainer_log.propagate, list(trainer_log.handlers)) == log_state


def test_other_ranks_log_warnings_only(capfd) -> None:
    with trainer_process(rank=1):
        logging.getLogger("trainers.awm.recipe").info("chatter")
        logging.getLogger("trainers.awm.recipe").warning("a real problem")
    err = capfd.readouterr().err
    assert "a real problem" in err and "chatter" not in err


def test_exit_code_of_a_result() -> None:
    assert (exit_code("completed"), exit_code("interrupted")) == (EXIT_OK, EXIT_INTERRUPTED) == (0, 3)
