"""The accelerate adapter (trainers/awm/accelerate_compat.py): fails loudly when the private API it
pins changes behaviour."""

from __future__ import annotations

import pytest
from accelerate import Accelerator

from trainers.awm.accelerate_compat import reset_accelerate_state


def test_a_reset_lets_the_next_accelerator_take_other_settings() -> None:
    reset_accelerate_state()
    try:
        first = Accelerator(cpu=True, mixed_precision="no")
        assert first.mixed_precision == "no"
        # why the adapter exists: the state is process-wide and refuses other settings...
        with pytest.raises(ValueError, match="mixed_precision"):
            Accelerator(cpu=True, mixed_precision="bf16")
        # ...until it is reset
        reset_accelerate_state()
        second = Accelerator(cpu=True, mixed_precision="bf16")
        assert second.mixed_precision == "bf16"
        assert second.state.mixed_precision == "bf16"
    finally:
        reset_accelerate_state()
