"""The debug backend: submitit's `DebugExecutor`, the job runs inside the submitting process when
its result is asked for (`submit_run` waits for it); its controller reports everything itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import submitit

from awm_platform.runner.backends.base import JobObservation, OneMachineBackend
from awm_platform.runner.launch import submitit_folder
from awm_platform.runner.proc import scrubbed_environ


class DebugBackend(OneMachineBackend):
    name: ClassVar[str] = "debug"
    runs_in_process: ClassVar[bool] = True

    def submit(self, cfg: Any, run_dir: Path, job: Any) -> Any:
        with scrubbed_environ():
            return submitit.DebugExecutor(folder=submitit_folder(run_dir)).submit(job)

    def poll(self, runs: Sequence[Any]) -> dict[str, JobObservation]:
        return {}  # the job ran in a process that reported its own end

    def cancel(self, run: Any, timeout_s: float) -> None:
        """Nothing to stop: the job ran to its end inside the submitting process."""
