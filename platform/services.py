"""Thin Python wrapper around ``scripts/services.sh`` (real local SLURM + PostgreSQL).

The script does all the work (package install, configs, daemons, readiness checks); this module
runs it and parses the ``KEY=VALUE`` lines it prints on stdout. See docs/services.md.

    >>> from awm_platform.services import can_run_services, services_up
    >>> ok, why = can_run_services()
    >>> env = services_up("postgres")          # {"AWM_TEST_POSTGRES_URL": "postgresql+psycopg://...", ...}

Only the standard library is imported here (the CLI imports this module at start).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "SERVICES",
    "ServicesError",
    "can_run_services",
    "parse_env_lines",
    "script_path",
    "services_down",
    "services_status",
    "services_up",
]

#: Services the script knows; ``"all"`` means every one of them, in this order.
SERVICES: tuple[str, ...] = ("slurm", "postgres")
_WHICH = (*SERVICES, "all")

#: Exit status of the script when this machine cannot run the services (not root, not Debian/apt).
EXIT_CANNOT_RUN = 3


class ServicesError(RuntimeError):
    """The services script failed. ``returncode``, ``stdout`` and ``stderr`` hold the details."""

    def __init__(self, message: str, *, returncode: int | None = None, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def script_path() -> Path:
    """Path of ``scripts/services.sh`` in the repository checkout this package lives in.

    ``$AWM_SERVICES_SCRIPT`` overrides it (e.g. for an installed, non-editable package).
    """
    override = os.environ.get("AWM_SERVICES_SCRIPT")
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "scripts" / "services.sh"
    if not path.is_file():
        raise ServicesError(
            f"services script not found at {path}: the local services need a repository checkout "
            "(pip install -e .) or AWM_SERVICES_SCRIPT=/path/to/scripts/services.sh"
        )
    return path


def can_run_services() -> tuple[bool, str]:
    """Whether this machine can run the local services: ``(True, description)`` or ``(False, reason)``.

    Needs root (the script installs Debian packages and starts daemons), a Debian-family system with
    apt-get/dpkg, bash, and the script itself.
    """
    if not hasattr(os, "geteuid"):
        return False, "not a POSIX system"
    if os.geteuid() != 0:
        return (
            False,
            f"not running as root (euid {os.geteuid()}); the services script installs packages and starts daemons",
        )
    if not Path("/etc/debian_version").is_file():
        return False, "not a Debian-family system (/etc/debian_version missing)"
    for tool in ("apt-get", "dpkg-query", "bash", "runuser", "flock"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` not found on PATH"
    try:
        script = script_path()
    except ServicesError as exc:
        return False, str(exc)
    release = Path("/etc/debian_version").read_text().strip()
    return True, f"root on Debian {release} with apt; script {script}"


def parse_env_lines(text: str) -> dict[str, str]:
    """Parse the ``KEY=VALUE`` lines the script prints (values may be shell-quoted)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        if not key.replace("_", "").isalnum() or not (key[0].isalpha() or key[0] == "_"):
            continue
        parts = shlex.split(raw) if raw else [""]
        env[key] = parts[0] if len(parts) == 1 else " ".join(parts)
    return env


def _check_which(which: str) -> None:
    if which not in _WHICH:
        raise ValueError(f"unknown service {which!r}; expected one of {', '.join(_WHICH)}")


def _run(
    args: list[str],
    *,
    env: Mapping[str, str] | None,
    timeout: float | None,
    check: bool,
    progress: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the script; its stderr (the log lines) goes to ``progress`` line by line as it comes."""
    script = script_path()
    full_env = dict(os.environ)
    if env:
        full_env.update({k: str(v) for k, v in env.items()})
    command = f"{script.name} {' '.join(args)}"
    proc = subprocess.Popen(
        ["bash", str(script), *args],
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout_chunks: list[str] = []
    stderr_lines: list[str] = []
    # stdout is drained by a thread so that neither pipe can fill up and block the script
    reader = threading.Thread(target=lambda: stdout_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()
    exited_early: list[int] = []  # the script had exited, but something it started kept its output pipe

    def _kill_on_timeout() -> None:
        timed_out.set()
        if proc.poll() is not None:
            exited_early.append(proc.returncode)
        proc.kill()

    timer = threading.Timer(timeout, _kill_on_timeout) if timeout is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        for line in proc.stderr:
            stderr_lines.append(line)
            if progress is not None:
                progress(line.rstrip("\n"))
        proc.wait()
        reader.join()
    finally:
        if timer is not None:
            timer.cancel()
    stdout, stderr = "".join(stdout_chunks), "".join(stderr_lines)
    if timed_out.is_set():
        why = (
            f"exited (status {exited_early[0]}) but a process it started still held its output pipe after {timeout} s"
            if exited_early
            else f"did not finish within {timeout} s"
        )
        raise ServicesError(
            f"`{command}` {why}" + (f":\n{_tail(stderr)}" if stderr.strip() else ""),
            stdout=stdout,
            stderr=stderr,
        )
    if check and proc.returncode != 0:
        what = "cannot run on this machine" if proc.returncode == EXIT_CANNOT_RUN else f"failed (exit {proc.returncode})"
        detail = _tail(stderr) or (
            "(the script printed nothing, which is a bug in it: rerun with "
            f"`bash -x {script} {' '.join(args)}` to see where it stopped)"
        )
        raise ServicesError(f"`{command}` {what}:\n{detail}", returncode=proc.returncode, stdout=stdout, stderr=stderr)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def services_up(
    which: str = "all",
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 1800,
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Bring services up (idempotent) and return the ``KEY=VALUE`` env the script printed.

    ``env`` adds knobs for this call, e.g. ``{"SLURM_FAKE_GPUS": "2"}`` (see docs/services.md).
    Keys include ``AWM_SLURM_PARTITION``, ``AWM_TEST_POSTGRES_URL``, ``AWM_MLFLOW_POSTGRES_URL``, ...
    ``progress`` receives each log line as the script prints it (one per phase: installing packages,
    starting each daemon, probes), e.g. ``progress=print``.
    Raises :class:`ServicesError` on failure (its message carries the tail of the script's log).
    """
    _check_which(which)
    proc = _run(["up", which], env=env, timeout=timeout, check=True, progress=progress)
    return parse_env_lines(proc.stdout)


def services_down(
    which: str = "all",
    *,
    purge: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 300,
) -> dict[str, str]:
    """Stop the processes ``services_up`` started (by recorded PID). ``purge`` also deletes their data."""
    _check_which(which)
    args = ["down", which] + (["--purge"] if purge else [])
    proc = _run(args, env=env, timeout=timeout, check=True)
    return parse_env_lines(proc.stdout)


def _describe(name: str, env: Mapping[str, str], up: bool, log: str) -> str:
    if not up:
        reasons = [ln.split("] ", 1)[-1] for ln in log.splitlines() if ln.startswith(f"[{name} ")]
        return "down" + (f" ({'; '.join(reasons[-3:])})" if reasons else "")
    prefix = f"AWM_{name.upper()}_PID_"
    pids = " ".join(f"{k[len(prefix) :].lower()}={v}" for k, v in env.items() if k.startswith(prefix))
    if name == "slurm":
        return (
            f"up (partition {env.get('AWM_SLURM_PARTITION')}, node {env.get('AWM_SLURM_NODE')}, "
            f"{env.get('AWM_SLURM_CPUS')} CPUs, {env.get('AWM_SLURM_FAKE_GPUS')} fake GPUs; pids {pids})"
        )
    if name == "postgres":
        return (
            f"up (127.0.0.1:{env.get('AWM_POSTGRES_PORT')}, pid {env.get('AWM_POSTGRES_PID')}, "
            f"databases {env.get('AWM_POSTGRES_DBS')})"
        )
    return "up"


def services_status(
    which: str = "all", *, env: Mapping[str, str] | None = None, timeout: float | None = 60
) -> dict:
    """What is up. Never raises because something is down; raises :class:`ServicesError` if the
    script is missing or broken, or cannot run here (not root: the state dir holds passwords).

    Returns one entry per requested service, ``"slurm"`` / ``"postgres"``: a string starting with
    ``"up"`` (``"up (127.0.0.1:55432, pid 123, databases awm_test,mlflow,optuna)"``) or ``"down"``
    (with the reason when known); plus ``"ok"`` (True when every requested service is up) and
    ``"env"`` (the KEY=VALUE lines: PIDs, URLs, partition, ...; contains the PostgreSQL password).
    """
    _check_which(which)
    proc = _run(["status", which], env=env, timeout=timeout, check=False)
    if proc.returncode not in (0, 1):
        raise ServicesError(
            f"`services.sh status {which}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}",
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    env = parse_env_lines(proc.stdout)
    names = SERVICES if which == "all" else (which,)
    result: dict = {}
    all_up = proc.returncode == 0
    for name in names:
        up = env.get(f"AWM_{name.upper()}_UP") == "1"
        all_up = all_up and up
        result[name] = _describe(name, env, up, proc.stderr)
    result["ok"] = all_up
    result["env"] = env
    return result
