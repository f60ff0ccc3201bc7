"""scripts/services.sh on a machine without the packages, its failure messages, and detached daemons.

The CI machine already has the Debian packages, so the fresh-machine branch is exercised with a PATH
shim: ``dpkg-query`` reports nothing installed and ``apt-get`` records its arguments (or fails), while
the real script runs against the real, already running services (``up`` is idempotent). Detachment is
checked on a real start: a throwaway PostgreSQL cluster in a private ``AWM_SERVICES_DIR`` (SLURM's
config is machine-global, so it is never restarted here).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from awm_platform.services import ServicesError, parse_env_lines, services_up
from tests.fixtures import services as fx

# one worker at a time: these start, stop and re-check the services (private PostgreSQL clusters, the
# scripts' state) and submit to the single SLURM node (scripts/test.sh runs pytest-xdist; tests/conftest.py)
pytestmark = pytest.mark.xdist_group("slurm")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services.sh"
LIB = REPO / "scripts" / "services" / "lib.sh"
SLURM_PKGS = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "mariadb-server")


def _shim(tmp_path: Path, apt_exit: int = 0) -> tuple[dict[str, str], Path]:
    """PATH shim: dpkg-query knows no package; apt-get appends its arguments to a file and exits ``apt_exit``."""
    bin_dir = tmp_path / "shim"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "dpkg-query").write_text(
        '#!/bin/sh\necho "dpkg-query: no packages found matching $*" >&2\nexit 1\n'
    )
    apt = f'#!/bin/sh\necho "apt-get $*" >> "{calls}"\n'
    if apt_exit:
        apt += f'echo "E: Unable to locate package (shim for the test)" >&2\nexit {apt_exit}\n'
    (bin_dir / "apt-get").write_text(apt + "exit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )


@pytest.fixture
def services_running(slurm_cluster: fx.SlurmCluster, postgres_server: fx.PostgresServer) -> None:
    """Both services up, so that `up all` below only re-checks them (and never restarts anything)."""


# ============================================================ fresh machine (packages "missing")
@pytest.mark.slurm
@pytest.mark.postgres
def test_up_all_installs_missing_packages_and_reports_progress(services_running: None, tmp_path: Path) -> None:
    env, calls = _shim(tmp_path)
    proc = _run(["bash", str(SCRIPT), "up", "all"], env)
    assert proc.returncode == 0, proc.stderr
    installs = [line for line in calls.read_text().splitlines() if " install " in line]
    assert installs, calls.read_text()
    assert "--no-install-recommends" in installs[0] and "DPkg::Lock::Timeout" in installs[0]
    assert set(SLURM_PKGS) <= set(installs[0].split())
    # progress: one line before the install, one after, then the services
    assert "installing Debian packages: munge slurmctld" in proc.stderr
    assert "packages installed" in proc.stderr
    assert "cluster up:" in proc.stderr and "ERROR" not in proc.stderr
    out = parse_env_lines(proc.stdout)
    assert out["AWM_SLURM_UP"] == "1" and out["AWM_POSTGRES_UP"] == "1"


@pytest.mark.slurm
@pytest.mark.postgres
def test_awm_services_up_prints_progress_then_the_status_table(services_running: None, tmp_path: Path) -> None:
    env, calls = _shim(tmp_path)
    awm = Path(sys.executable).with_name("awm")
    # stdout and stderr are pipes: the command must return once the services are up (`awm services up | cat`)
    proc = _run([str(awm), "services", "up"], env)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().strip()
    progress = proc.stderr.splitlines()
    assert any("installing Debian packages:" in line for line in progress), progress
    assert any("packages installed" in line for line in progress)
    table = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in table] == ["slurm", "postgres"], table
    assert all(": up (" in line for line in table)
    assert "PASSWORD" not in proc.stdout  # the env (with the password) only with --env


def test_failing_apt_get_says_what_failed_and_names_the_log(tmp_path: Path) -> None:
    fx.require_services("the apt-get failure path")
    env, calls = _shim(tmp_path, apt_exit=100)
    state = tmp_path / "state"  # private state dir: the failure happens before anything starts
    env["AWM_SERVICES_DIR"] = str(state)
    proc = _run(["bash", str(SCRIPT), "up", "all"], env)
    assert proc.returncode == 1
    apt_log = state / "apt.log"
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert errors, proc.stderr
    assert "apt-get install" in errors[0] and "munge" in errors[0] and str(apt_log) in errors[0]
    assert "E: Unable to locate package" in apt_log.read_text()  # apt-get's own message is in the log
    assert "E: Unable to locate package" in proc.stderr  # ...and its tail on stderr
    assert len(calls.read_text().splitlines()) == 3  # install, update, install again
    assert proc.stdout == ""
    # the Python API (and so `awm services up`) carries the same message
    with pytest.raises(ServicesError) as exc:
        services_up("all", env={"PATH": env["PATH"], "AWM_SERVICES_DIR": str(state)})
    assert str(apt_log) in str(exc.value) and exc.value.returncode == 1


def test_unexpected_failure_names_the_command_line_and_logs(tmp_path: Path) -> None:
    """A failure no `die` foresaw (here `hostname` failing in a command substitution) is reported
    with the command, the file:line and the log dir, not as a silent exit."""
    fx.require_services("the unexpected-failure path")
    bin_dir = tmp_path / "shim"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text("#!/bin/sh\necho 'hostname: planted failure' >&2\nexit 7\n")
    (bin_dir / "hostname").chmod(0o755)
    state = tmp_path / "state"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWM_SERVICES_DIR": str(state)}
    proc = _run(["bash", str(SCRIPT), "up", "slurm"], env, timeout=60)
    assert proc.returncode == 1
    assert "ERROR: `HOST=$(hostname -s)` failed (exit 7) at slurm.sh:" in proc.stderr
    assert f"(logs: {state}/slurm/log)" in proc.stderr
    assert "'up slurm' failed" in proc.stderr


def test_nothing_running_is_not_an_error(tmp_path: Path) -> None:
    """`status` of services that are down exits 1 and `down` of nothing exits 0, neither with an ERROR
    line (the ERR trap reports failures, not answers)."""
    fx.require_services("status/down of a private state dir")
    env = {**os.environ, "AWM_SERVICES_DIR": str(tmp_path / "state")}
    status = _run(["bash", str(SCRIPT), "status", "all"], env, timeout=60)
    assert status.returncode == 1 and "not running" in status.stderr
    down = _run(["bash", str(SCRIPT), "down", "all"], env, timeout=60)
    assert down.returncode == 0
    assert "ERROR" not in status.stderr + down.stderr, status.stderr + down.stderr


def test_a_silent_script_failure_still_gives_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    silent = tmp_path / "services.sh"
    silent.write_text("exit 1\n")
    monkeypatch.setenv("AWM_SERVICES_SCRIPT", str(silent))
    with pytest.raises(ServicesError, match=r"printed nothing.*bash -x"):
        services_up("postgres", timeout=30)


# ============================================================ daemons hold none of the caller's fds
def _pipe_inodes(*fds: int) -> set[str]:
    return {f"pipe:[{os.fstat(fd).st_ino}]" for fd in fds}


def _open_fds(pid: int) -> set[str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = set()
    for fd in fd_dir.iterdir():
        try:
            targets.add(os.readlink(fd))
        except OSError:
            pass
    return targets


def test_run_detached_leaves_the_callers_pipes(tmp_path: Path) -> None:
    """Both kinds of daemon (one that forks by itself, one started --background) keep none of the
    caller's descriptors, so a caller reading the pipes sees EOF as soon as the script exits."""
    pidfile = tmp_path / "pids"
    script = f"""
set -euo pipefail
. {LIB}
run_detached {tmp_path}/a.log bash -c 'sleep 300 & echo $! >> {pidfile}'
run_detached --background {tmp_path}/b.log bash -c 'echo $$ >> {pidfile}; exec sleep 301'
for _ in $(seq 100); do [ "$(wc -l < {pidfile})" -ge 2 ] && break; sleep 0.1; done
echo started
"""
    extra_r, extra_w = os.pipe()  # a descriptor the caller hands down besides stdout/stderr
    proc = subprocess.Popen(
        ["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        pass_fds=(extra_w,), text=True,
    )
    pids: list[int] = []
    try:
        out, err = proc.communicate(timeout=60)  # hangs (-> TimeoutExpired) if a daemon kept the pipes
        assert proc.returncode == 0 and out.strip() == "started", err
        pids = [int(p) for p in pidfile.read_text().split()]
        assert len(pids) == 2
        theirs = set().union(*(_open_fds(pid) for pid in pids))
        assert not theirs & _pipe_inodes(extra_r, extra_w), theirs
        for pid in pids:
            assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
            assert Path(os.readlink(f"/proc/{pid}/fd/1")).parent == tmp_path
            assert os.getsid(pid) != os.getsid(0)  # a session of its own
    finally:
        os.close(extra_r)
        os.close(extra_w)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def private_state_dir() -> Iterator[Path]:
    """A state dir the postgres user can traverse (pytest's tmp dirs are 0700), purged afterwards."""
    fx.require_services("a private PostgreSQL")
    state = Path(tempfile.mkdtemp(prefix="awm-svc-test-", dir="/tmp"))
    state.chmod(0o755)
    yield state
    _run(["bash", str(SCRIPT), "down", "postgres", "--purge"], {**os.environ, "AWM_SERVICES_DIR": str(state)}, 120)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.postgres
def test_started_postgres_does_not_hold_the_callers_pipes(private_state_dir: Path) -> None:
    """A real start (initdb + pg_ctl) with stdout and stderr as pipes and one more inherited pipe:
    the caller reaches EOF when `up` returns, and the postmaster holds none of those pipes."""
    extra_r, extra_w = os.pipe()
    env = {**os.environ, "AWM_SERVICES_DIR": str(private_state_dir)}
    env.pop("AWM_PG_PORT", None)
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "up", "postgres"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, pass_fds=(extra_w,), env=env, text=True,
    )
    try:
        out, err = proc.communicate(timeout=240)  # TimeoutExpired = the daemon kept a pipe open
        assert proc.returncode == 0, err
        assert "postgres started" in err, err
        pid = int(parse_env_lines(out)["AWM_POSTGRES_PID"])
        theirs = _open_fds(pid)
        assert not theirs & _pipe_inodes(extra_r, extra_w), theirs
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1") == str(private_state_dir / "postgres" / "server.log")
    finally:
        os.close(extra_r)
        os.close(extra_w)
