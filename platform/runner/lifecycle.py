"""The run lifecycle: the ONLY writer of a run's status.

Three kinds of processes learn something about a run: the CLI / sweep orchestrator (submit,
cancel, prune, `awm rerun --resume`, the scheduler poll in `state.refresh_states`), the job's
controller (`job.TrainJob`: started, checkpointed on a preemption signal, completed, failed)
and nobody at all (a killed job: the poll notices). Each of them turns what it learned into a
`RunEvent` and calls `apply_event` (or `apply_observation` for a poll result). The event and
the run's current status pick ONE row of `TRANSITIONS`; no row means the event changes nothing
(a late or duplicate report, a report after the run ended: terminal states are final, except
the explicit resubmission `awm rerun --resume`).

Every write is a compare-and-set in the store (`Store.compare_and_set_run`: one
`UPDATE ... WHERE name = :name AND status = :expected`): when another process changed the status
in between, the lifecycle re-reads the row and decides again, so no process overwrites a newer
state it has not seen. GPU-hours only grow (the store takes the larger total, or adds the
controller's own time, in the same UPDATE). Entering a terminal status records the end time and
closes the run's MLflow run with the matching MLflow status (`tracking.end_mlflow_run`).

`python -m awm_platform.runner.lifecycle` prints the table (docs/runner.md holds a copy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from awm_platform.runner.tracking import end_mlflow_run
from awm_platform.store.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Run, RunStatus

if TYPE_CHECKING:
    from awm_platform.runner.backends.base import JobObservation
    from awm_platform.store import Store

# How often one event is re-decided after losing a compare-and-set race before giving up. Each
# lost race means another process wrote a newer status: a handful is already extraordinary.
MAX_RACES = 50


class LifecycleError(RuntimeError):
    pass


class RunEvent(StrEnum):
    """What a process learned about a run (who sends it: see `EVENT_SOURCES`)."""

    STARTED = "started"
    PREEMPT_SIGNAL = "preempt_signal"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    PRUNED = "pruned"
    NEVER_SUBMITTED = "never_submitted"
    OBSERVED_PENDING = "observed_pending"
    OBSERVED_RUNNING = "observed_running"
    OBSERVED_PREEMPTED = "observed_preempted"
    OBSERVED_COMPLETED = "observed_completed"
    OBSERVED_FAILED = "observed_failed"
    OBSERVED_CANCELLED = "observed_cancelled"
    RESUBMITTED = "resubmitted"
    RESUBMISSION_FAILED = "resubmission_failed"


EVENT_SOURCES: dict[RunEvent, str] = {
    RunEvent.STARTED: "job controller (rank 0) starts the trainer: first start, requeued attempt, restarted controller",
    RunEvent.PREEMPT_SIGNAL: "job controller checkpointed the trainer on the preemption/timeout signal or SIGTERM",
    RunEvent.COMPLETED: "job controller: the trainer exited 0",
    RunEvent.FAILED: "job controller: the trainer failed (exit code, stop without a signal)",
    RunEvent.TIMED_OUT: "job controller: timed out with no requeue left (launcher.max_requeues)",
    RunEvent.CANCELLED: "`awm cancel`, a stopped sweep: recorded, then the job is stopped (state.cancel_run)",
    RunEvent.PRUNED: "sweep pruner: recorded, then the job is stopped (state.cancel_run)",
    RunEvent.NEVER_SUBMITTED: "poll: PENDING without a job id past AWM_JOB_ID_GRACE_S (the submitter died)",
    RunEvent.OBSERVED_PENDING: "poll: the scheduler says the job is pending (a requeued job waits too)",
    RunEvent.OBSERVED_RUNNING: "poll: the scheduler says the job runs",
    RunEvent.OBSERVED_PREEMPTED: "poll: the scheduler preempted/requeued/suspended the job",
    RunEvent.OBSERVED_COMPLETED: "poll: the scheduler says the job completed",
    RunEvent.OBSERVED_FAILED: "poll: the job failed, timed out for good, or its process died without reporting",
    RunEvent.OBSERVED_CANCELLED: "poll: the scheduler cancelled the job (scancel, revoked)",
    RunEvent.RESUBMITTED: "`awm rerun --resume`, before the new job is submitted",
    RunEvent.RESUBMISSION_FAILED: "`awm rerun --resume`: the submission failed",
}

# The target of RESUBMISSION_FAILED: the status the run had before `awm rerun --resume`.
PREVIOUS = "(status before the resubmission)"

_P, _R, _E = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.PREEMPTED
_C, _F, _X, _PR = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED


def _from_active(target: RunStatus) -> dict[RunStatus, RunStatus | str]:
    return {status: target for status in ACTIVE_STATUSES}


# event -> {current status -> next status}. A (status, event) pair without a row changes nothing.
# Rows whose next status is the current one are accepted events that only update fields.
TRANSITIONS: dict[RunEvent, dict[RunStatus, RunStatus | str]] = {
    RunEvent.STARTED: {_P: _R, _R: _R, _E: _R},
    RunEvent.PREEMPT_SIGNAL: {_P: _E, _R: _E, _E: _E},
    RunEvent.COMPLETED: _from_active(_C),
    RunEvent.FAILED: _from_active(_F),
    RunEvent.TIMED_OUT: _from_active(_F),
    RunEvent.CANCELLED: _from_active(_X),
    RunEvent.PRUNED: _from_active(_PR),
    RunEvent.NEVER_SUBMITTED: {_P: _F},
    # precedence: the job's own PREEMPTED beats a lagging PENDING from the scheduler
    RunEvent.OBSERVED_PENDING: {_P: _P, _R: _P, _E: _E},
    RunEvent.OBSERVED_RUNNING: {_P: _R, _R: _R, _E: _R},
    RunEvent.OBSERVED_PREEMPTED: _from_active(_E),
    RunEvent.OBSERVED_COMPLETED: _from_active(_C),
    RunEvent.OBSERVED_FAILED: _from_active(_F),
    RunEvent.OBSERVED_CANCELLED: _from_active(_X),
    # the only way out of a terminal status (a COMPLETED run is not resumed: rerun makes a new run)
    RunEvent.RESUBMITTED: {_F: _P, _X: _P, _E: _P, _PR: _P},
    RunEvent.RESUBMISSION_FAILED: {_P: PREVIOUS},
}

OBSERVED: dict[RunStatus, RunEvent] = {
    _P: RunEvent.OBSERVED_PENDING,
    _R: RunEvent.OBSERVED_RUNNING,
    _E: RunEvent.OBSERVED_PREEMPTED,
    _C: RunEvent.OBSERVED_COMPLETED,
    _F: RunEvent.OBSERVED_FAILED,
    _X: RunEvent.OBSERVED_CANCELLED,
}


def next_status(current: str, event: RunEvent, previous: str | None = None) -> RunStatus | None:
    """The status `event` moves a run in `current` to, or None when the table has no row for it.
    `previous`: for RESUBMISSION_FAILED, the status the run had before the resubmission."""
    target = TRANSITIONS[event].get(RunStatus(current))
    if target == PREVIOUS:
        if previous is None or RunStatus(previous) not in TRANSITIONS[RunEvent.RESUBMITTED]:
            raise LifecycleError(f"{event}: the status before the resubmission must be one that resumes, "
                                 f"not {previous!r}")
        return RunStatus(previous)
    return None if target is None else RunStatus(target)


def allowed_transitions() -> set[tuple[RunStatus, RunStatus]]:
    """Every (from, to) pair some row of the table produces (status changes and stays)."""
    pairs: set[tuple[RunStatus, RunStatus]] = set()
    for rows in TRANSITIONS.values():
        for current, target in rows.items():
            targets = TRANSITIONS[RunEvent.RESUBMITTED] if target == PREVIOUS else [target]
            pairs.update((current, RunStatus(t)) for t in targets)
    return pairs


@dataclass(frozen=True)
class Outcome:
    """What an event did: `run` is the row read back after it (another writer may have moved it
    on since); `applied`: the table had a row for the event in the run's status (False: ignored,
    e.g. a late report after the end); `changed`: the status moved; `status`: the status this
    event left the run in (its transition's target), whatever happened after it."""

    run: Run
    applied: bool
    changed: bool
    status: RunStatus


# fields to write with a transition, decided on the row the compare-and-set expects; None: the
# event does not apply after all (e.g. the run got a job id meanwhile)
FieldsFor = Callable[[Run, RunStatus], Mapping[str, Any] | None]


def apply_event(store: Store, name: str, event: RunEvent | None, *, fields: Mapping[str, Any] | FieldsFor | None = None,
                gpu_hours: float | None = None, add_gpu_hours: float = 0.0,
                previous: str | None = None) -> Outcome:
    """Apply `event` to run `name` (None: no status event, only `fields` while the status stays).

    `fields`: other columns written with the transition (a mapping, or a function of the current
    row and the next status). `gpu_hours`: a total (taken if larger); `add_gpu_hours`: time used
    since the last report (added; accounted even when the event is ignored: the GPUs were used).
    Entering a terminal status sets `ended_at` (unless given) and closes the MLflow run."""
    for _ in range(MAX_RACES):
        run = store.get_run(name)
        current = RunStatus(run.status)
        target = current if event is None else next_status(current, event, previous)
        chosen: Mapping[str, Any] | None = {}
        if callable(fields):
            chosen = fields(run, target) if target is not None else {}
        elif fields is not None:
            chosen = fields
        if target is None or chosen is None:
            if gpu_hours is not None or add_gpu_hours:
                store.add_gpu_hours(name, gpu_hours=gpu_hours, add_gpu_hours=add_gpu_hours)
                run = store.get_run(name)
            return Outcome(run, applied=False, changed=False, status=current)
        values = dict(chosen)
        entering_end = target in TERMINAL_STATUSES and current not in TERMINAL_STATUSES
        if entering_end:
            values.setdefault("ended_at", datetime.now(UTC))
        if target != current:
            values["status"] = target
        if store.compare_and_set_run(name, current, gpu_hours=gpu_hours, add_gpu_hours=add_gpu_hours, **values):
            run = store.get_run(name)
            if entering_end:
                end_mlflow_run(run)
            return Outcome(run, applied=event is not None, changed=target != current, status=target)
    raise LifecycleError(f"run {name!r}: {event} lost {MAX_RACES} compare-and-set races in a row")


def stop_run(store: Store, name: str, event: RunEvent, stop: Callable[[Run], None]) -> Outcome:
    """Cancel or prune an active run (`event`: CANCELLED or PRUNED) and `stop` its job.

    The decision is recorded FIRST, so what the job reports while it checkpoints and exits (a
    preemption, even a completion of its last step) cannot overwrite it: terminal states are
    final. Once `stop` returns (the job is gone) the end time is that moment, and the MLflow run
    is closed again with the decided status (a trainer that finished during the stop closed it
    as FINISHED). A run that ended on its own before the decision is left as it is."""
    decided = apply_event(store, name, event)
    if not decided.changed:
        return decided
    stop(decided.run)
    store.compare_and_set_run(name, decided.run.status, ended_at=datetime.now(UTC))
    run = store.get_run(name)
    end_mlflow_run(run)
    return Outcome(run, applied=True, changed=True, status=decided.status)


def apply_observation(store: Store, name: str, observation: JobObservation) -> Outcome:
    """Apply what a scheduler poll learned about the run's job (`backends.base.JobObservation`):
    its implied status through the table (OBSERVED_* events), the scheduler's GPU-hours (never
    lower), new hosts, the start time of a run seen running, and the end time and the reason of
    a run seen ending (a run keeps an error it already has)."""
    event = None if observation.status is None else OBSERVED[RunStatus(observation.status)]

    def fields(run: Run, target: RunStatus) -> dict[str, Any]:
        out: dict[str, Any] = {}
        new_hosts = [h for h in observation.hosts if h and h not in run.hosts]
        if new_hosts:
            out["hosts"] = [*run.hosts, *new_hosts]
        if target != run.status:
            if target in TERMINAL_STATUSES:
                out["ended_at"] = observation.ended_at or datetime.now(UTC)
                if target == RunStatus.FAILED and not run.error and observation.error:
                    out["error"] = observation.error
            if target == RunStatus.RUNNING and run.started_at is None and observation.started_at is not None:
                out["started_at"] = observation.started_at
        return out

    return apply_event(store, name, event, fields=fields, gpu_hours=observation.gpu_hours)


def transitions_markdown() -> str:
    """The table as markdown (docs/runner.md, docs/architecture.md)."""
    order = list(RunStatus)
    lines = ["| event | " + " | ".join(order) + " | sent by |", "|---" * (len(order) + 2) + "|"]
    for event, rows in TRANSITIONS.items():
        cells = []
        for status in order:
            target = rows.get(status)
            cells.append("·" if target is None else ("previous" if target == PREVIOUS else
                                                      ("=" if target == status else str(target))))
        lines.append(f"| `{event}` | " + " | ".join(cells) + f" | {EVENT_SOURCES[event]} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - prints the table for the docs
    print(transitions_markdown())
