"""The one place that touches accelerate's private API (pinned: accelerate>=1.0,<2; checked by
tests/trainer/test_accelerate_compat.py).

accelerate keeps its state in process-wide singletons (``PartialState``, ``AcceleratorState``):
the first ``Accelerator(...)`` of a process fixes the device and the mixed precision, and a later
one with other settings raises. A trainer that runs several times in one process (tests, a
notebook, a sweep's in-process trials) must start each run from a clean state. accelerate has no
public API for that (1.15: its own test base class, ``AccelerateTestCase``, calls the private
``AcceleratorState._reset_state(True)`` too).
"""

from __future__ import annotations

from accelerate.state import AcceleratorState


def reset_accelerate_state() -> None:
    """Forget the process's accelerate state (device, mixed precision, distributed setup), so the
    next ``Accelerator(...)`` is configured afresh. Only for a single process: under a launcher
    the state describes the process group, which must stay."""
    AcceleratorState._reset_state(reset_partial_state=True)
