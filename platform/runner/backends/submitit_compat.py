"""Every use of a submitit name that is not part of its public API, in one place.

submitit (pinned: `PINNED_SUBMITIT`) has no public way to
* render the sbatch file a `SlurmExecutor` would write (`--dry-run`, the capsule, the golden tests
  need it without submitting): `submitit.slurm.slurm._make_sbatch_string`;
* name the command each task runs (`python -u -m submitit.core._submit FOLDER`: executors build it
  in a private property);
* write the "success" result pickle of a job that exits from inside submitit's signal handler
  (`submitit.core.utils.temporary_save_path` / `cloudpickle_dump`, as its `process_job` does);
* catch its job errors (`submitit.core.utils.FailedJobError`, `UncompletedJobError`: not exported
  at the top level).

tests/runner/test_submitit_compat.py pins each of these against the installed submitit and fails
loudly, naming this module, when its behaviour changes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.core import utils as _submitit_utils
from submitit.slurm import slurm as _submitit_slurm

PINNED_SUBMITIT = "1.5.4"  # the version the adapter was checked against (pyproject pins the range)
SUBMIT_ENTRY_MODULE = "submitit.core._submit"  # what every submitit task runs

FailedJobError = _submitit_utils.FailedJobError  # sbatch refused the job (its stderr is the message)
UncompletedJobError = _submitit_utils.UncompletedJobError  # out of requeues, or no result


def submitit_command(folder: Path, python: str | None = None) -> str:
    """What the sbatch script (or the local controller) runs in each task: submitit's entry point."""
    py = python or shlex.quote(sys.executable)
    return " ".join([py, f"-u -m {SUBMIT_ENTRY_MODULE}", shlex.quote(str(folder))])


def sbatch_string(command: str, folder: Path, parameters: dict[str, Any]) -> str:
    """The sbatch file `SlurmExecutor` writes for `parameters` (its `update_parameters` keys, plus
    `map_count` for an array), byte for byte."""
    return _submitit_slurm._make_sbatch_string(command=command, folder=folder, **parameters)


def write_success_result(result: Any) -> None:
    """In a running job: what submitit's `process_job` writes after a normal return, for a job that
    ends from inside submitit's signal handler (`sys.exit`), so `Job.result()` returns `result`."""
    paths = submitit.JobEnvironment().paths
    with _submitit_utils.temporary_save_path(paths.result_pickle) as tmp:
        _submitit_utils.cloudpickle_dump(("success", result), tmp)
