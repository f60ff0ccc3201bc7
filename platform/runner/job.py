"""The submitted callable: a `submitit.helpers.Checkpointable` *controller*.

One controller runs per node (one srun task per node). It starts the trainer as a child
process (its own process group/session), forwards preemption to it and requeues:

* SIGUSR2 (submitit's preemption/timeout signal, sent `launcher.signal_delay_s` before the
  limit): submitit calls `checkpoint()` from its signal handler. We send SIGUSR1 to the whole
  child tree, wait for the trainer to checkpoint and exit with code 3, record PREEMPTED and
  return a fresh `TrainJob` for submitit to requeue (SLURM: `scontrol requeue`; local: the
  submitit controller restarts the task).
* SIGTERM (`scontrol requeue`, `scancel`, node shutdown): submitit ignores it ("Bypassing
  signal SIGTERM"), so we install our own handler: forward SIGUSR1, wait for the checkpoint,
  record PREEMPTED and exit 143 without a result pickle. SLURM requeues (`scontrol requeue`)
  or cancels (`scancel`) the job itself; `cancel_run` then writes CANCELLED.
* Exit: the child tree is always killed (no orphans), whatever happened.

The requeued job resumes the same run: same run dir and name; the trainer picks the latest
valid checkpoint, the MLflow run id comes from `run_dir/capsule/mlflow.json`.

Import-light on purpose: submitit unpickles `TrainJob` (importing this module) BEFORE it installs
its preemption handler, and until then SIGUSR2 kills the process. So this module imports only the
standard library, submitit and light platform modules at the top (0.2 s); the store, the run
lifecycle, the config and the backends (1.2 s more: sqlalchemy, alembic, pydantic models, numpy)
are imported where they are used, marked `# deferred: light controller import`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from awm_platform.paths import restrict_umask
from awm_platform.runner import snapshot
from awm_platform.runner.proc import child_env, kill_tree, signal_tree
from trainers.awm.process import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from awm_platform.runner.lifecycle import RunEvent
    from awm_platform.runner.spec import JobSpec
    from awm_platform.store import Run, RunStatus, Store

# The trainer stopped (exit 3) although this controller got no preemption signal: how long to
# let one that was sent to the whole step arrive before the controller raises it itself
# (AWM_OWN_SIGNAL_WAIT_S overrides it: a test whose signal reaches one node only need not wait 5 s).
OWN_SIGNAL_WAIT_ENV = "AWM_OWN_SIGNAL_WAIT_S"
DEFAULT_OWN_SIGNAL_WAIT_S = 5.0


def worker_env(run_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: it imports the run's code snapshot (the controller itself does
    too on local/SLURM; a debug job's controller is the submitting process)."""
    code = snapshot.code_dir(run_dir)
    env = child_env(extra)
    if code.is_dir():
        return snapshot.with_code_path(env, code)
    if code.is_symlink():  # submitted with a snapshot that was deleted since
        print(f"[awm] warning: the run's code snapshot {code} -> {os.readlink(code)} is gone: "
              "the trainer runs the installed code", file=sys.stderr, flush=True)
    return env


def _ignore_user_signals() -> None:  # pragma: no cover - runs in the forked child
    # The launcher (accelerate/torchrun agent) would die on USR1/USR2 (default action:
    # terminate). Ignored dispositions survive exec; the worker installs its own handlers.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)
        self._reset()

    def _reset(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._rc: int | None = None
        self._stopping = False
        self._terminated = False
        self._t0 = time.time()

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir = state["run_dir"]
        self._reset()

    # ------------------------------------------------------------------- helpers ----
    def _env(self) -> Any:
        try:
            return submitit.JobEnvironment()
        except Exception:
            return None

    def _rank0(self) -> bool:
        env = self._env()
        return env is None or env.global_rank == 0

    def _store(self, spec: JobSpec) -> Store:
        from awm_platform.store import Store  # deferred: light controller import

        return Store(spec.store_url, upgrade=False)  # migrated at submit time; alembic is slow

    def _report(self, spec: JobSpec, event: RunEvent, **fields: Any) -> None:
        """Tell the run lifecycle what happened (`fields`: written with the transition). Every
        report is an end or a preemption: where the controller accounts GPU-hours (local,
        debug; SLURM: sacct in the poller) it adds this attempt's wall time x GPUs.
        Best effort: a store hiccup must not kill a training job."""
        if not self._rank0():
            return
        from awm_platform.runner.backends import backend_for  # deferred: light controller import
        from awm_platform.runner.lifecycle import apply_event  # deferred: light controller import

        try:
            store = self._store(spec)
            try:
                used = 0.0
                if backend_for(spec.cluster).controller_accounts_gpu_hours:
                    used = (time.time() - self._t0) * spec.world_size / 3600.0
                apply_event(store, spec.name, event, fields=fields, add_gpu_hours=used)
            finally:
                store.close()
        except Exception as exc:  # pragma: no cover - logged in the job's log
            print(f"[awm] warning: could not update the store: {exc}", file=sys.stderr, flush=True)

    def _wait_child(self, timeout: float | None = None) -> int | None:
        # Plain attribute polling (set by the reaper thread): safe inside signal handlers,
        # unlike Popen.wait()/Event.wait() which take locks the interrupted frame may hold.
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._rc is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        return self._rc

    def _stop_child(self, grace_s: float) -> int | None:
        self._stopping = True
        if self._proc is None:
            return None
        if self._rc is None:
            signal_tree(self._proc.pid, signal.SIGUSR1)
        rc = self._wait_child(grace_s)
        if rc is None:
            print(
                f"[awm] trainer did not checkpoint within {grace_s:.0f} s; killing it",
                file=sys.stderr,
                flush=True,
            )
            kill_tree(self._proc.pid)
            rc = self._wait_child(10)
        return rc

    def _grace(self, spec: JobSpec) -> float:
        # The scheduler kills the job at the time limit (local: submitit's controller SIGINTs
        # the task), so the checkpoint, the kill fallback (5 s) and the requeue must all fit
        # in `signal_delay_s`.
        delay = int(spec.config.get("launcher", {}).get("signal_delay_s", 120))
        return max(5.0, delay - 15.0)

    # ---------------------------------------------------------------------- run ----
    def __call__(self) -> dict[str, Any]:
        self._reset()
        restrict_umask()  # a job may start from a shell with umask 022 (SLURM propagates the submitter's)
        run_dir = Path(self.run_dir)
        # first thing: submitit ignores SIGTERM, and one may arrive while we start up
        previous_term = signal.signal(signal.SIGTERM, self._on_sigterm)
        from awm_platform.runner.backends import (  # deferred: light controller import
            backend_for,
            submitit_compat,
        )
        from awm_platform.runner.capsule import append_line, event  # deferred: light controller import
        from awm_platform.runner.launch import launch_command  # deferred: light controller import
        from awm_platform.runner.lifecycle import RunEvent, apply_event  # deferred: light controller import
        from awm_platform.runner.spec import JobSpec  # deferred: light controller import
        from awm_platform.runner.worker import (  # deferred: light controller import
            EXIT_DIR_ENV,
            read_exit_codes,
        )
        from awm_platform.store import TERMINAL_STATUSES, RunStatus  # deferred: light controller import

        event(run_dir, "controller_start")
        spec = JobSpec.load(run_dir)
        env = self._env()
        if env is not None and not self._rank0():
            # submitit leaves preemption to the rank-0 task ("Not checkpointing nor requeuing since
            # I am a slave"); a signal that reaches only this node must still stop our ranks: they
            # agree with the others on stopping and checkpoint together, and the rank-0 controller,
            # seeing its trainer stop, requeues the whole job
            signal.signal(_preemption_signal(), self._on_peer_preemption)
        job_id = str(env.job_id) if env is not None else f"debug-{os.getpid()}"
        host = socket.gethostname()
        hosts = list(getattr(env, "hostnames", None) or [host]) if env is not None else [host]
        if self._rank0():
            append_line(
                run_dir / "capsule" / "hosts.jsonl",
                json.dumps({"job_id": job_id, "hosts": hosts, "started_at": datetime.now(UTC).isoformat()}),
            )
            try:
                store = self._store(spec)
                try:
                    run = store.get_run(spec.name)
                    started = None
                    if run.status not in TERMINAL_STATUSES:
                        store.append_job_id(spec.name, job_id, host)

                        def start_fields(row: Run, _next: RunStatus) -> dict[str, Any]:
                            return {"hosts": sorted(set(row.hosts) | set(hosts)), "log_dir": str(run_dir / "submitit"),
                                    "ended_at": None,
                                    **({"started_at": datetime.now(UTC)} if row.started_at is None else {})}

                        started = apply_event(store, spec.name, RunEvent.STARTED, fields=start_fields)
                        run = started.run
                    if started is None or not started.applied:
                        # terminal states are final: cancelled while requeued/pending, a requeue after
                        # the end, or a run whose submitter died before recording this job (failed by
                        # the state poller, a sweep retried its trial): nothing to do
                        abandoned = run.status == RunStatus.FAILED and not run.job_ids
                        print(
                            f"[awm] run {spec.name} is {run.status}: not starting"
                            + (f" ({run.error})" if abandoned else ""),
                            file=sys.stderr,
                            flush=True,
                        )
                        return {"status": run.status.lower(), "run": spec.name}
                finally:
                    store.close()
            except Exception as exc:  # pragma: no cover
                print(f"[awm] warning: could not update the store: {exc}", file=sys.stderr, flush=True)
        if self._terminated:  # SIGTERM before the trainer started: nothing to checkpoint
            self._report(spec, RunEvent.PREEMPT_SIGNAL)
            sys.exit(143)
        if self._stopping and self._rank0():  # preempted before the trainer even started
            return {"status": "interrupted"}

        cfg = spec.experiment_config()
        cmd = launch_command(cfg, run_dir, env=os.environ)
        extra = {"AWM_JOB_ID": job_id, "AWM_CLUSTER": spec.cluster, "PYTHONUNBUFFERED": "1"}
        if spec.world_size > 1 and not Path("/dev/nvidia0").exists():
            extra["ACCELERATE_USE_CPU"] = "true"  # CPU DDP (gloo); see stack-notes §3
        exit_dir: Path | None = None
        if spec.world_size > 1:
            # under a launcher, our child's exit code is the launcher's: torch elastic exits 1 as
            # soon as a rank exits non-zero, "checkpointed and stopped" (3) included; each rank
            # leaves its own code here (worker.record_exit_code)
            exit_dir = run_dir / "exit_codes" / f"task-{env.global_rank if env is not None else 0}"
            shutil.rmtree(exit_dir, ignore_errors=True)
            exit_dir.mkdir(parents=True)
            extra[EXIT_DIR_ENV] = str(exit_dir)
        if self._terminated:  # SIGTERM before the trainer started: nothing to checkpoint
            self._report(spec, RunEvent.PREEMPT_SIGNAL)
            sys.exit(143)
        print(f"[awm] {host}: job {job_id} starting: {' '.join(cmd)}", file=sys.stderr, flush=True)
        # a job in the caller's process (debug): keep its stdout clean (`awm submit` prints the run name)
        out = _stderr_fd() if backend_for(spec.cluster).runs_in_process else None
        self._proc = subprocess.Popen(
            cmd,
            env=worker_env(run_dir, extra),
            start_new_session=True,
            stdout=out,
            preexec_fn=_ignore_user_signals,
        )
        proc = self._proc
        event(run_dir, "child_spawned", job_id=job_id)
        if self._stopping:  # another node's preemption signal came in during our start-up
            signal_tree(proc.pid, signal.SIGUSR1)

        def reap() -> None:
            self._rc = proc.wait()

        threading.Thread(target=reap, name="awm-reaper", daemon=True).start()
        try:
            try:
                rc = self._wait_child()
            except submitit_compat.UncompletedJobError as exc:
                # raised by submitit's USR2 handler: out of requeues (launcher.max_requeues)
                self._report(
                    spec,
                    RunEvent.TIMED_OUT,
                    ended_at=datetime.now(UTC),
                    error=f"{exc} (launcher.max_requeues; resume with `awm rerun {spec.name} --resume`)",
                )
                raise
            event(run_dir, "child_exit", rc=rc)
            if exit_dir is not None and rc not in (0, EXIT_INTERRUPTED):
                codes = read_exit_codes(exit_dir)
                if codes and all(c == EXIT_INTERRUPTED for c in codes):
                    rc = EXIT_INTERRUPTED  # every rank of this node checkpointed and stopped
            if rc == 0:
                self._report(spec, RunEvent.COMPLETED, ended_at=datetime.now(UTC), error=None)
                event(run_dir, "reported", status="COMPLETED")
                return {"status": "completed", "run": spec.name}
            if rc == EXIT_INTERRUPTED:
                if self._terminated:
                    self._report(spec, RunEvent.PREEMPT_SIGNAL)
                    sys.exit(143)
                if not self._rank0():  # other nodes: the rank-0 controller requeues the job
                    return {"status": "interrupted"}
                # The trainer checkpointed on a stop this controller was not asked for: a signal it
                # received directly (SLURM signals every process of the step, so submitit's handler
                # is about to run here) or another node's preemption (the ranks agree on stopping).
                # Give our own signal a moment, then raise it: submitit's handler calls checkpoint()
                # (the trainer has already stopped) and requeues the job, as for a signal of ours.
                wait_s = float(os.environ.get(OWN_SIGNAL_WAIT_ENV, DEFAULT_OWN_SIGNAL_WAIT_S))
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline:
                    time.sleep(0.1)
                if env is not None:
                    print("[awm] the trainer checkpointed on another node's preemption: requeueing the job",
                          file=sys.stderr, flush=True)
                    try:
                        signal.raise_signal(_preemption_signal())  # submitit requeues and exits
                    except submitit_compat.UncompletedJobError as exc:
                        self._report(spec, RunEvent.TIMED_OUT, ended_at=datetime.now(UTC),
                                     error=f"{exc} (launcher.max_requeues; resume with `awm rerun "
                                           f"{spec.name} --resume`)")
                        raise
                msg = "trainer stopped (exit 3) but no preemption signal reached the controller"
                self._report(spec, RunEvent.FAILED, ended_at=datetime.now(UTC), error=msg)
                raise RuntimeError(msg)
            if rc == -signal.SIGTERM and not self._terminated:
                # SLURM signals every process of the step: the trainer (still importing, no
                # handler yet) can die of the SIGTERM before our own handler has run
                deadline = time.monotonic() + 2.0
                while not self._terminated and time.monotonic() < deadline:
                    time.sleep(0.05)
            if self._terminated:  # preempted/requeued (scontrol requeue, scancel): not a failure
                self._report(spec, RunEvent.PREEMPT_SIGNAL)
                sys.exit(143)
            err = _error_tail(run_dir) or f"trainer exited with code {rc}"
            self._report(spec, RunEvent.FAILED, ended_at=datetime.now(UTC), error=err)
            raise RuntimeError(f"run {spec.name}: trainer exited with code {rc}\n{err}")
        finally:
            kill_tree(proc.pid, grace_s=2.0)  # no orphans, whatever happened
            signal.signal(signal.SIGTERM, previous_term)

    def _on_peer_preemption(self, signum: int, frame: Any) -> None:
        """The preemption signal on a node other than the rank-0 task's: stop our ranks (no wait:
        the trainer's exit is handled in `__call__`)."""
        print("[awm] preemption/timeout signal on this node: asking the trainer to checkpoint",
              file=sys.stderr, flush=True)
        self._stopping = True
        if self._proc is not None and self._rc is None:
            signal_tree(self._proc.pid, signal.SIGUSR1)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        print("[awm] caught SIGTERM: checkpointing the trainer before exiting", file=sys.stderr, flush=True)
        self._terminated = True
        from awm_platform.runner.spec import JobSpec  # deferred: light controller import

        spec = JobSpec.load(Path(self.run_dir))
        self._stop_child(self._grace(spec))
        # __call__ sees exit code 3 (or the kill) and exits 143 without a result pickle.

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (timeout/preemption), from inside `__call__`'s wait."""
        from awm_platform.runner.lifecycle import RunEvent  # deferred: light controller import
        from awm_platform.runner.spec import JobSpec  # deferred: light controller import

        spec = JobSpec.load(Path(self.run_dir))
        print(
            "[awm] preemption/timeout signal: asking the trainer to checkpoint", file=sys.stderr, flush=True
        )
        rc = self._stop_child(self._grace(spec))
        if rc == 0:
            # the trainer finished its last step before it saw the stop: the run is complete,
            # requeueing would only start a job with nothing to do
            self._report(spec, RunEvent.COMPLETED, ended_at=datetime.now(UTC), error=None)
            _write_success_result({"status": "completed", "run": spec.name})
            print(
                "[awm] the run completed before the signal took effect: not requeued",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(0)
        self._report(spec, RunEvent.PREEMPT_SIGNAL)
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))


def _preemption_signal() -> signal.Signals:
    """submitit's preemption/timeout signal (USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured stderr (tests, notebooks)
        return 2


def _write_success_result(result: Any) -> None:
    """What submitit's process_job writes after a normal return (we exit from its handler)."""
    try:
        from awm_platform.runner.backends import submitit_compat  # deferred: light controller import

        submitit_compat.write_success_result(result)
    except Exception as exc:  # pragma: no cover
        print(f"[awm] warning: could not write the result pickle: {exc}", file=sys.stderr, flush=True)


def _error_tail(run_dir: Path, max_chars: int = 4000) -> str | None:
    path = run_dir / "worker_error.txt"
    try:
        return path.read_text()[-max_chars:]
    except OSError:
        return None
