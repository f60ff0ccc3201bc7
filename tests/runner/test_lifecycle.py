"""The run lifecycle: the transition table, the compare-and-set writes, the MLflow run it closes,
and a property test that drives random event sequences through it against a real store and a
real MLflow tracking store (SQLite files)."""

from __future__ import annotations

import ast
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from awm_platform.runner.backends.base import JobObservation
from awm_platform.runner.lifecycle import (
    PREVIOUS,
    TRANSITIONS,
    LifecycleError,
    RunEvent,
    allowed_transitions,
    apply_event,
    apply_observation,
    next_status,
    stop_run,
    transitions_markdown,
)
from awm_platform.runner.spec import JobSpec
from awm_platform.runner.tracking import mlflow_status
from awm_platform.store import ACTIVE_STATUSES, TERMINAL_STATUSES, RunStatus, Store

REPO = Path(__file__).resolve().parents[2]


@dataclass
class World:
    store: Store
    mlflow: MlflowClient
    tracking_uri: str
    experiment_id: str
    root: Path
    names: Iterator[int]

    def new_run(self) -> str:
        """A registered run (PENDING) with a job spec and an open MLflow run, as `awm submit` leaves it."""
        name = f"run-{next(self.names)}"
        run_dir = self.root / name
        run_dir.mkdir()
        JobSpec(name=name, config={}, cluster="local", store_url=self.store.url, tracking_uri=self.tracking_uri,
                artifact_root=None, experiment="lifecycle").save(run_dir)
        self.store.create_run(name=name, config_hash="h", resolved_config={}, output_dir=run_dir, cluster="local")
        mlflow_run = self.mlflow.create_run(self.experiment_id, run_name=name)
        self.store.update_run(name, mlflow_run_id=mlflow_run.info.run_id)
        return name

    def mlflow_status_of(self, name: str) -> tuple[str, int | None]:
        info = self.mlflow.get_run(self.store.get_run(name).mlflow_run_id).info
        return info.status, info.end_time


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("lifecycle")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment("lifecycle", artifact_location=(root / "artifacts").as_uri())
    store = Store(f"sqlite:///{root / 'store.db'}")
    yield World(store, client, tracking_uri, experiment_id, root, itertools.count())
    store.close()


# ----------------------------------------------------------------------- the table ----
def test_terminal_states_are_final_except_the_resubmission() -> None:
    for event, rows in TRANSITIONS.items():
        for current, target in rows.items():
            if current in TERMINAL_STATUSES:
                assert event == RunEvent.RESUBMITTED and target == RunStatus.PENDING, (event, current, target)
    # a COMPLETED run is not resumed (rerun makes a new run); a PREEMPTED one may be
    assert next_status("COMPLETED", RunEvent.RESUBMITTED) is None
    assert next_status("PREEMPTED", RunEvent.RESUBMITTED) == RunStatus.PENDING
    assert next_status("PENDING", RunEvent.RESUBMISSION_FAILED, previous="CANCELLED") == RunStatus.CANCELLED
    with pytest.raises(LifecycleError, match="must be one that resumes"):
        next_status("PENDING", RunEvent.RESUBMISSION_FAILED, previous="COMPLETED")


def test_the_jobs_own_preemption_beats_a_lagging_pending() -> None:
    assert next_status("PREEMPTED", RunEvent.OBSERVED_PENDING) == RunStatus.PREEMPTED
    assert next_status("RUNNING", RunEvent.OBSERVED_PENDING) == RunStatus.PENDING  # a requeued job waits
    assert next_status("PREEMPTED", RunEvent.OBSERVED_RUNNING) == RunStatus.RUNNING


def test_every_event_has_rows_and_the_docs_hold_the_table() -> None:
    assert set(TRANSITIONS) == set(RunEvent)
    table = transitions_markdown()
    for event in RunEvent:
        assert f"| `{event}` |" in table
    for doc in ("runner.md", "architecture.md"):
        assert table in (REPO / "docs" / doc).read_text(), (
            f"docs/{doc} must hold `python -m awm_platform.runner.lifecycle`'s table")


def test_only_the_lifecycle_writes_a_run_status() -> None:
    """No product module passes `status=` to the store's run writers, nor calls the
    compare-and-set, except the lifecycle (rows are born PENDING by `create_run`'s default)."""
    offenders = []
    for path in sorted((REPO / "platform").rglob("*.py")):
        if path.name == "lifecycle.py" or "store" in path.relative_to(REPO / "platform").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                writer = node.func.attr
                if writer == "compare_and_set_run" or (
                        writer in ("update_run", "create_run") and any(k.arg == "status" for k in node.keywords)
                        and "store" in ast.unparse(node.func.value)):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------- applying events ----
def test_a_late_report_after_the_end_changes_nothing(world: World) -> None:
    name = world.new_run()
    assert apply_event(world.store, name, RunEvent.STARTED).changed
    cancelled = apply_event(world.store, name, RunEvent.CANCELLED)
    assert cancelled.changed and cancelled.status == RunStatus.CANCELLED and cancelled.run.ended_at is not None
    assert world.mlflow_status_of(name)[0] == "KILLED"
    late = apply_event(world.store, name, RunEvent.COMPLETED, add_gpu_hours=0.5)
    assert (late.applied, late.changed, late.status) == (False, False, RunStatus.CANCELLED)
    assert late.run.gpu_hours == pytest.approx(0.5)  # the GPUs were used all the same
    assert world.mlflow_status_of(name)[0] == "KILLED"


def test_a_cancel_decision_is_not_overwritten_by_what_the_job_reports_while_it_stops(world: World) -> None:
    """`stop_run` (awm cancel, sweep prune): the decision is recorded first; the trainer that
    finishes its last step during the stop reports COMPLETED and closes its MLflow run FINISHED
    (as the worker does); the run stays PRUNED, MLflow says KILLED, the end is when the job is gone."""
    name = world.new_run()
    apply_event(world.store, name, RunEvent.STARTED)
    seen_during_stop = []

    def stop(decided) -> None:
        seen_during_stop.append(decided.status)
        late = apply_event(world.store, name, RunEvent.COMPLETED, add_gpu_hours=0.1)
        assert not late.applied
        world.mlflow.set_terminated(world.store.get_run(name).mlflow_run_id, status="FINISHED")

    out = stop_run(world.store, name, RunEvent.PRUNED, stop)
    assert seen_during_stop == ["PRUNED"]
    run = world.store.get_run(name)
    assert out.changed and run.status == "PRUNED" and run.gpu_hours == pytest.approx(0.1)
    assert world.mlflow_status_of(name)[0] == "KILLED"
    again = stop_run(world.store, name, RunEvent.CANCELLED, stop)  # already ended: nothing stops
    assert not again.changed and again.status == RunStatus.PRUNED and seen_during_stop == ["PRUNED"]


def test_resubmission_and_its_failure_restore_the_previous_state(world: World) -> None:
    name = world.new_run()
    failed = apply_event(world.store, name, RunEvent.FAILED, fields={"error": "boom"})
    ended = failed.run.ended_at
    resubmitted = apply_event(world.store, name, RunEvent.RESUBMITTED, fields={"ended_at": None, "error": None})
    assert resubmitted.status == RunStatus.PENDING and resubmitted.run.ended_at is None
    restored = apply_event(world.store, name, RunEvent.RESUBMISSION_FAILED, previous="FAILED",
                           fields={"ended_at": ended, "error": "resubmission failed: sbatch said no"})
    assert restored.status == RunStatus.FAILED and restored.run.error.startswith("resubmission failed")
    assert world.mlflow_status_of(name)[0] == "FAILED"


def test_an_observation_fills_in_hosts_times_gpu_hours_and_the_reason(world: World) -> None:
    name = world.new_run()
    seen = apply_observation(world.store, name, JobObservation(status="RUNNING", gpu_hours=1.0, hosts=["n1"]))
    assert seen.changed and seen.run.hosts == ["n1"]
    lagging = apply_observation(world.store, name, JobObservation(status=None, gpu_hours=0.5, hosts=["n1", "n2"]))
    assert not lagging.changed and lagging.run.gpu_hours == pytest.approx(1.0) and lagging.run.hosts == ["n1", "n2"]
    died = apply_observation(world.store, name, JobObservation(status="FAILED", error="the local job process "
                                                               "exited without reporting (killed?)"))
    assert died.status == RunStatus.FAILED and "without reporting" in died.run.error
    assert world.mlflow_status_of(name) [0] == "FAILED"


def test_a_lagging_pending_poll_does_not_undo_the_jobs_own_preemption(world: World) -> None:
    name = world.new_run()
    apply_event(world.store, name, RunEvent.STARTED)
    apply_event(world.store, name, RunEvent.PREEMPT_SIGNAL, add_gpu_hours=0.5)
    out = apply_observation(world.store, name, JobObservation(status="PENDING", gpu_hours=0.75))
    assert (out.applied, out.changed, out.status) == (True, False, RunStatus.PREEMPTED)
    assert out.run.gpu_hours == pytest.approx(0.75)


def test_never_submitted_fails_only_a_run_without_a_job(world: World) -> None:
    name = world.new_run()
    world.store.append_job_id(name, "7")

    def unless_submitted(run, _next):
        return None if run.job_ids else {"error": "never submitted"}

    out = apply_event(world.store, name, RunEvent.NEVER_SUBMITTED, fields=unless_submitted)
    assert (out.applied, out.status) == (False, RunStatus.PENDING)


def test_concurrent_writers_never_overwrite_a_newer_state(world: World) -> None:
    """Eight threads (each with its own store connection pool) report conflicting ends of one
    running run at once: exactly one terminal transition wins and stays."""
    name = world.new_run()
    apply_event(world.store, name, RunEvent.STARTED)
    events = [RunEvent.COMPLETED, RunEvent.CANCELLED, RunEvent.FAILED, RunEvent.PRUNED,
              RunEvent.OBSERVED_PENDING, RunEvent.PREEMPT_SIGNAL, RunEvent.STARTED, RunEvent.OBSERVED_FAILED]
    barrier = threading.Barrier(len(events))
    stores = [Store(world.store.url, upgrade=False) for _ in events]

    def report(i: int):
        barrier.wait()
        return apply_event(stores[i], name, events[i], add_gpu_hours=0.25)

    try:
        with ThreadPoolExecutor(len(events)) as pool:
            outcomes = list(pool.map(report, range(len(events))))
    finally:
        for s in stores:
            s.close()
    final = world.store.get_run(name)
    into_end = [o for o in outcomes if o.changed and o.status in TERMINAL_STATUSES]
    assert len(into_end) == 1 and final.status == into_end[0].status
    assert final.gpu_hours == pytest.approx(0.25 * len(events))  # every report accounted, none lost
    assert world.mlflow_status_of(name)[0] == mlflow_status(final.status)


# ------------------------------------------------------------------ property test ----
# What can happen to a run, in any order, any number of times: (action, a number it uses).
ACTIONS = ["submit", "start", "checkpoint", "preempt_signal", "requeue", "timeout", "cancel", "prune", "complete",
           "fail", "worker_death", "poll", "late_poll", "duplicate_poll", "controller_restart", "resubmit",
           "never_submitted"]
POLL_STATUSES = [None, "PENDING", "RUNNING", "PREEMPTED", "COMPLETED", "FAILED", "CANCELLED"]
STATUS_PAIRS = allowed_transitions()


def _act(world: World, name: str, action: str, x: float, last_poll: list[JobObservation]) -> RunEvent | None:
    store = world.store
    if action == "submit":
        store.append_job_id(name, str(int(x * 1000)))
        return None
    if action == "checkpoint":  # the trainer saved a checkpoint: no status change
        store.add_checkpoint(name, step=int(x * 100), path=f"/ckpt/{x}", sha256="0" * 64, formats=["pt"])
        return None
    simple = {"start": RunEvent.STARTED, "controller_restart": RunEvent.STARTED,
              "preempt_signal": RunEvent.PREEMPT_SIGNAL, "timeout": RunEvent.TIMED_OUT,
              "cancel": RunEvent.CANCELLED, "prune": RunEvent.PRUNED, "complete": RunEvent.COMPLETED,
              "fail": RunEvent.FAILED}
    if action in simple:  # the controller accounts its own time on ends and preemptions
        apply_event(store, name, simple[action], add_gpu_hours=x if action != "start" else 0.0)
        return simple[action]
    if action == "never_submitted":
        apply_event(store, name, RunEvent.NEVER_SUBMITTED, fields={"error": "never submitted"})
        return RunEvent.NEVER_SUBMITTED
    if action == "resubmit":
        apply_event(store, name, RunEvent.RESUBMITTED, fields={"ended_at": None, "error": None})
        return RunEvent.RESUBMITTED
    if action in ("requeue", "worker_death", "poll"):
        status = {"requeue": "PREEMPTED", "worker_death": "FAILED"}.get(
            action, POLL_STATUSES[int(x * 10) % len(POLL_STATUSES)])
        total = (last_poll[-1].gpu_hours or 0.0) + x if last_poll else x  # the scheduler's total grows
        observation = JobObservation(status=status, gpu_hours=total, hosts=[f"node{int(x * 3)}"],
                                     error="the local job process exited without reporting (killed?)")
        last_poll.append(observation)
    elif not last_poll:
        return None
    else:  # a poll result computed earlier arrives now (lower total), or the same one twice
        observation = last_poll[0] if action == "late_poll" else last_poll[-1]
    apply_observation(store, name, observation)
    return None if observation.status is None else RunEvent(f"observed_{observation.status.lower()}")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(ACTIONS), st.floats(0.0, 1.0)), min_size=1, max_size=25))
def test_random_event_sequences_keep_the_invariants(world: World, steps: list[tuple[str, float]]) -> None:
    name = world.new_run()
    last_poll: list[JobObservation] = []
    before = world.store.get_run(name)
    for action, x in steps:
        event = _act(world, name, action, x, last_poll)
        after = world.store.get_run(name)
        old, new = RunStatus(before.status), RunStatus(after.status)
        where = f"{action} ({event}) moved {old} -> {new}"
        if event is None:
            assert new == old, where
        else:  # one process: the table alone decides
            assert new == (next_status(old, event) or old), where
        assert new == old or (old, new) in STATUS_PAIRS, f"{where}: not a row of the table"
        if old in TERMINAL_STATUSES and new != old:
            assert event == RunEvent.RESUBMITTED and new == RunStatus.PENDING, f"{where}: terminal is final"
        assert after.gpu_hours >= before.gpu_hours - 1e-12, f"{where}: GPU-hours decreased"
        if new in TERMINAL_STATUSES:
            status, end_time = world.mlflow_status_of(name)
            assert (status, end_time is not None) == (mlflow_status(new), True), where
            assert after.ended_at is not None, where
        if new in ACTIVE_STATUSES and old in TERMINAL_STATUSES:
            assert after.ended_at is None, where
        before = after
    assert PREVIOUS not in STATUS_PAIRS
