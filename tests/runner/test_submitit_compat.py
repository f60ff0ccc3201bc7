"""The private submitit names in `awm_platform.runner.backends.submitit_compat`, pinned against the
installed submitit: each test fails, naming the adapter, if submitit changes what we rely on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import submitit

from awm_platform.config import config_from_dict
from awm_platform.runner.backends import submitit_compat
from awm_platform.runner.backends.slurm import sbatch_script, slurm_parameters

ADAPTER = "awm_platform/runner/backends/submitit_compat.py"


def test_the_installed_submitit_is_the_pinned_one() -> None:
    assert submitit.__version__ == submitit_compat.PINNED_SUBMITIT, (
        f"submitit {submitit.__version__} is installed, {ADAPTER} was checked against "
        f"{submitit_compat.PINNED_SUBMITIT}: run tests/runner/test_submitit_compat.py and the golden sbatch "
        "tests, then update PINNED_SUBMITIT")


def test_task_command_is_the_one_submitit_executors_run(tmp_path: Path) -> None:
    for executor in (submitit.SlurmExecutor(folder=tmp_path), submitit.LocalExecutor(folder=tmp_path)):
        ours = submitit_compat.submitit_command(Path(executor.folder), executor.python)
        assert ours == executor._submitit_command_str, f"submitit's task command changed: fix {ADAPTER}"


@pytest.mark.parametrize(("nodes", "gpus", "array_size"), [(1, 1, None), (4, 8, None), (1, 2, 3)])
def test_sbatch_preview_is_the_file_a_slurm_executor_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            nodes: int, gpus: int, array_size: int | None) -> None:
    monkeypatch.delenv("AWM_SLURM_NO_GPUS", raising=False)
    cfg = config_from_dict({"name": "compat", "launcher": {
        "cluster": "slurm", "partition": "gpu", "nodes": nodes, "gpus_per_node": gpus, "mem_gb": 8,
        "extra_sbatch": ["--exclusive"], "setup": ["module load cuda"]}})
    run_dir = tmp_path / "runs" / cfg.name
    executor = submitit.SlurmExecutor(folder=run_dir / "submitit")
    executor.update_parameters(**slurm_parameters(cfg, run_dir))
    if array_size is not None:
        executor.parameters["map_count"] = array_size  # what SlurmExecutor does for an array
    written = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    assert sbatch_script(cfg, run_dir, array_size=array_size) == written, (
        f"submitit renders sbatch files differently now: fix {ADAPTER}")


def test_success_result_written_from_inside_a_job_is_its_result(tmp_path: Path) -> None:
    """job.py ends a job from inside submitit's signal handler (`sys.exit`) after writing the result
    pickle itself; without it, submitit reports the job as uncompleted (`UncompletedJobError`)."""

    def exits_with_result() -> None:  # local functions travel by value (cloudpickle)
        submitit_compat.write_success_result({"status": "completed"})
        sys.exit(0)

    def exits_without_result() -> None:
        sys.exit(0)

    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(timeout_min=2)
    with_result = executor.submit(exits_with_result)
    without_result = executor.submit(exits_without_result)
    assert with_result.result() == {"status": "completed"}, f"submitit's result pickle changed: fix {ADAPTER}"
    with pytest.raises(submitit_compat.UncompletedJobError):
        without_result.result()


def test_sbatch_refusal_is_the_adapters_failed_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit raises FailedJobError (carrying sbatch's stderr) when sbatch exits non-zero."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition name specified' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{Path(sys.executable).parent}:/usr/bin:/bin")
    executor = submitit.SlurmExecutor(folder=tmp_path / "s")
    executor.update_parameters(time=1)
    with pytest.raises(submitit_compat.FailedJobError, match="Invalid partition"):
        executor.submit(print, "never")
