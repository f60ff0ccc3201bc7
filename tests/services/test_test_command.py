"""The README's test command (scripts/test.sh) never turns missing services into a green run.

A stand-in services script (``AWM_SERVICES_SCRIPT``) fails on purpose; test.sh must stop with a non-zero
status and say so before pytest runs, whoever runs it (no CI variable in the environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE = """#!/usr/bin/env bash
echo "$*" >> "{calls}"
case $1 in
  tools) exit {tools_rc} ;;
  status) exit 1 ;;
  up) echo "[slurm   0.1s] ERROR: planted failure (logs: /nowhere/slurm/log)" >&2; exit 1 ;;
  down) exit 0 ;;
esac
exit 2
"""


def _test_sh(tmp_path: Path, tools_rc: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = tmp_path / "calls"
    fake = tmp_path / "services.sh"
    fake.write_text(FAKE.format(calls=calls, tools_rc=tools_rc))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "AWM_REQUIRE_SERVICES", "AWM_TEST_SERVICES")}
    env["AWM_SERVICES_SCRIPT"] = str(fake)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "test.sh"), "tests/services/test_test_command.py"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, check=False,
    )
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("tools_rc", [0, 100])
def test_test_command_fails_before_pytest_when_services_or_tools_fail(tmp_path: Path, tools_rc: int) -> None:
    proc, calls = _test_sh(tmp_path, tools_rc)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "[test] FAILED:" in proc.stderr
    if tools_rc:
        assert "could not install the Debian tools" in proc.stderr
        assert calls == ["tools"]
    else:
        assert "the local services did not come up" in proc.stderr
        assert "ERROR: planted failure (logs: /nowhere/slurm/log)" in proc.stderr  # the script's own reason
        assert calls == ["tools", "status all", "up all", "down all"]  # what it half-started is stopped
    assert "passed" not in output and "test session starts" not in output  # pytest never ran


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--dist", "loadgroup"]], ids=["one-process", "xdist"])
def test_pytest_report_ends_with_the_skip_reasons(tmp_path: Path, workers: list[str]) -> None:
    """Whatever skips is named at the end of the report (the services plugin's terminal summary), also when
    the tests ran in pytest-xdist workers, as scripts/test.sh runs them."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_some.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_needs_a_frobnicator(n):\n    pytest.skip('no frobnicator on this machine')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.fixtures.services",
         *workers, "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path / "test_some.py")],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    section = proc.stdout.split("skipped tests, by reason", 1)
    assert len(section) == 2, proc.stdout
    assert "2 skipped: no frobnicator on this machine" in section[1]
