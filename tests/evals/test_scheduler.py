"""The scheduler on real parts: a real store, the tiny trained checkpoint, real OCR, real jobs on the
debug executor (in this process) and the local executor (processes), a job killed by fault injection."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.evals.conftest import RUN_NAME, TrainedRun, register_run

SERVICE = {"num_steps": 2, "limit": 2, "batch_size": 4, "weights_dirs": {"ocr": {"workers": 1}}}


def _cfg(cluster: str, **service: Any) -> Any:
    from awm_platform.config import config_from_dict

    return config_from_dict({"eval": {"service": {**SERVICE, **service}},
                             "launcher": {"cluster": cluster, "cpus_per_task": 1, "time_min": 10},
                             "tracking": {"experiment": "eval-tests"}})


def _scheduler(cluster: str, **service: Any) -> Any:
    from awm_platform.evals.scheduler import Scheduler
    from awm_platform.store import Store

    return Scheduler(Store.default(), _cfg(cluster, **service), echo=lambda line: None)


def test_second_pass_submits_nothing_and_run_dirs_are_discovered(trained_run: TrainedRun,
                                                                  isolated_awm_home: Path) -> None:
    """Pass 1: the run's unregistered checkpoint is registered from its directory, its evaluation
    created and run (debug: in this process). Pass 2: found, already done, nothing submitted."""
    from awm_platform.store import Store

    with Store.default() as store:
        store.create_run(name=RUN_NAME, config_hash="0" * 16, resolved_config=trained_run.config,
                         output_dir=str(trained_run.run_dir), cluster="local")
        store.create_run(name="gone", config_hash="0" * 16, resolved_config=trained_run.config,
                         output_dir=str(isolated_awm_home / "runs" / "gone"), cluster="local")
    sch = _scheduler("debug")
    messages: list[str] = []
    sch.echo = messages.append
    first = sch.schedule(benchmarks=["ocr"], weights=["policy"])
    assert [c.step for c in sch.store.list_checkpoints(RUN_NAME)] == [2]  # registered from the run dir
    assert (first.found, first.submitted, first.skipped, len(first.jobs)) == (1, 1, 1, 1)
    assert any("skipping run gone" in m for m in messages)
    [ev] = [sch.store.get_evaluation(i) for i in first.evaluation_ids]
    assert ev.status == "COMPLETED", ev.error
    assert (ev.target, ev.run_name, ev.step, ev.num_samples, ev.partial) == (f"{RUN_NAME}@2", RUN_NAME, 2, 2, True)
    assert ev.cluster == "debug" and len(ev.job_ids) == 1 and Path(ev.job_dir).is_dir()
    job_dir = Path(ev.job_dir)
    assert oct((job_dir / "job.json").stat().st_mode & 0o777) == "0o600"
    assert json.loads((job_dir / "job.json").read_text())["store_url"] == sch.store.url
    assert (job_dir / "code").is_symlink()

    second = sch.schedule(benchmarks=["ocr"], weights=["policy"])
    assert (second.found, second.submitted, second.already_done, second.running, second.jobs) == (1, 0, 1, 0, [])
    assert second.evaluation_ids == first.evaluation_ids
    assert len(sch.store.list_evaluations()) == 1
    sch.store.close()


def test_max_jobs_defers_the_rest_to_the_next_pass(trained_run: TrainedRun, isolated_awm_home: Path) -> None:
    """Two groups (different shard counts = different arrays); --max-jobs 1 submits one per pass."""
    from awm_platform.evals.targets import resolve_targets

    with_store = _scheduler("debug")
    register_run(with_store.store, trained_run)
    [target] = resolve_targets(with_store.store, RUN_NAME)
    one = _scheduler("debug", shards=1, limit=1)
    two = _scheduler("debug", shards=2, limit=2, batch_size=1)  # 2 batches: 2 shards
    evs = one.ensure([target], ["ocr"], ["policy"]) + two.ensure([target], ["ocr"], ["policy"])
    assert sorted(ev.num_shards for ev in evs) == [1, 2]

    first = one.submit(evs, max_jobs=1)
    assert (first.submitted, first.deferred, len(first.jobs)) == (1, 1, 1)
    second = one.submit(evs, max_jobs=1)
    assert (second.submitted, second.already_done, second.deferred) == (1, 1, 0)
    assert len(second.jobs) == 2  # one array of 2 tasks
    third = one.submit(evs, max_jobs=1)
    assert (third.submitted, third.already_done, third.jobs) == (0, 2, [])
    done = [one.store.get_evaluation(ev.id) for ev in evs]
    assert all(ev.status == "COMPLETED" for ev in done), [ev.error for ev in done]
    two_shards = next(ev for ev in done if ev.num_shards == 2)
    assert [s.status for s in one.store.list_shards(two_shards.id)] == ["DONE", "DONE"]
    for s in (with_store, one, two):
        s.store.close()


def test_a_dead_jobs_shard_is_resubmitted_and_completes(trained_run: TrainedRun, isolated_awm_home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A local job killed right after claiming its shard (AWM_FAULT_INJECT): while its lease runs the
    scheduler waits (no job would have work); once the lease expired and the job is dead, the next
    pass resubmits, and the new job completes the evaluation."""
    monkeypatch.setenv("AWM_EVAL_SUBMIT_GRACE_S", "0")
    sch = _scheduler("local", lease_s=4.0)
    register_run(sch.store, trained_run)
    monkeypatch.setenv("AWM_FAULT_INJECT", "eval_after_claim")  # the local job copies os.environ
    first = sch.schedule(benchmarks=["ocr"], weights=["policy"])
    monkeypatch.delenv("AWM_FAULT_INJECT")
    assert first.submitted == 1
    [ev_id] = first.evaluation_ids
    deadline = time.monotonic() + 120
    while sch.live_jobs([sch.store.get_evaluation(ev_id)])[ev_id]:
        assert time.monotonic() < deadline, "the fault-injected job never died"
        time.sleep(0.5)
    ev = sch.store.get_evaluation(ev_id)
    [shard] = sch.store.list_shards(ev_id)
    assert ev.status == "RUNNING" and shard.status == "RUNNING" and shard.attempts == 1
    if not sch.has_work(ev):  # the dead worker's lease has not expired yet: nothing to resubmit
        assert sch.submit([ev]).submitted == 0
    final = sch.wait([ev_id], poll_s=0.5, max_poll_s=1.0, timeout_s=240)  # not 0.5 .. 30 s: ends within 1 s
    [ev] = final
    assert ev.status == "COMPLETED", ev.error
    assert len(ev.job_ids) == 2  # the dead job and its replacement
    [shard] = sch.store.list_shards(ev_id)
    assert shard.status == "DONE" and shard.attempts == 2
    assert len(sch.store.get_sample_scores(ev_id)) == 2
    sch.store.close()


def test_exhausted_attempts_fail_the_evaluation(trained_run: TrainedRun, isolated_awm_home: Path) -> None:
    """A shard whose workers died max_attempts times (no live job, lease expired) fails the evaluation
    with that reason instead of being resubmitted forever."""
    from awm_platform.evals.targets import resolve_targets

    sch = _scheduler("debug", max_attempts=2, lease_s=0.01)
    register_run(sch.store, trained_run)
    [ev] = sch.ensure(resolve_targets(sch.store, RUN_NAME), ["ocr"], ["policy"])
    for _ in range(2):  # two workers claimed it and died
        assert sch.store.claim_shard(ev.id, "dead-worker", lease_s=0.01) is not None
        time.sleep(0.05)
    summary = sch.submit([ev])
    assert (summary.submitted, summary.failed) == (0, 1)
    ev = sch.store.get_evaluation(ev.id)
    assert ev.status == "FAILED" and "shard 0 failed 2 times (max_attempts 2)" in ev.error
    sch.store.close()


def test_on_checkpoint_enqueues_the_new_checkpoints_evaluation(eval_tiny_model: Path,
                                                               isolated_awm_home: Path) -> None:
    """`eval.on_checkpoint: [ocr]` in a training config: the training job's store logger starts the
    enqueueing process for its checkpoint, which ensures and runs (debug) the OCR evaluation with the
    run's own eval.service; the training itself is not held up by it."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import submit_run
    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    data = tiny_experiment_dict(eval_tiny_model, "hooked", num_epochs=2, save_freq=2, eval_freq=1000,
                                eval={"at_start": False, "max_prompts": 1, "on_checkpoint": ["ocr"],
                                      "service": SERVICE},
                                launcher={"cluster": "debug", "cpus_per_task": 1, "time_min": 10},
                                tracking={"experiment": "eval-tests"})
    sub = submit_run(config_from_dict(data), cluster="debug")
    store = Store.default()
    assert store.get_run("hooked").status == "COMPLETED"
    deadline = time.monotonic() + 240
    evals: list[Any] = []
    while time.monotonic() < deadline:
        evals = store.list_evaluations(run_name="hooked")
        if evals and all(ev.status in ("COMPLETED", "FAILED") for ev in evals):
            break
        time.sleep(0.2)
    log = (sub.run_dir / "eval_on_checkpoint.log")
    assert [(ev.target, ev.benchmark, ev.status) for ev in evals] == [("hooked@2", "ocr", "COMPLETED")], \
        log.read_text() if log.exists() else "no hook log"
    assert evals[0].spec["num_steps"] == 2 and evals[0].spec["limit"] == 2  # the run's eval.service
    summaries: list[dict[str, Any]] = []
    while not summaries and time.monotonic() < deadline:  # the hook prints its summary after mirroring
        summaries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"step": ')]
        time.sleep(0.5)
    assert [(x["step"], x["submitted"]) for x in summaries] == [(2, 1)]
    store.close()


@pytest.mark.parametrize("point", ["eval_after_ensure", "eval_after_submit"])
def test_a_scheduler_killed_at_a_step_boundary_is_finished_by_the_next_one(
        point: str, trained_run: TrainedRun, isolated_awm_home: Path) -> None:
    """`awm eval run` SIGKILLed after creating the evaluation, or after submitting its job (debug: the
    job never ran) but before recording it: the next command (submission grace 0) completes it, with
    one evaluation and each sample row once."""
    import os
    import subprocess
    import sys

    from awm_platform.store import Store

    with Store.default() as store:
        register_run(store, trained_run)
    awm = str(Path(sys.executable).parent / "awm")
    args = [awm, "eval", "run", RUN_NAME, "--benchmarks", "ocr", "--cluster", "debug", "--json",
            "--set", "eval.service.num_steps=2", "--set", "eval.service.limit=2",
            "--set", "eval.service.weights_dirs.ocr.workers=1"]
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "OMP_NUM_THREADS": "1", "AWM_EVAL_SUBMIT_GRACE_S": "0"}
    killed = subprocess.run(args, capture_output=True, text=True, env={**env, "AWM_FAULT_INJECT": point},
                            timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr
    with Store.default() as store:
        [ev] = store.list_evaluations()
        assert ev.status == "PENDING" and ev.job_ids == []
        assert (ev.submitted_at is not None) == (point == "eval_after_submit")
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["summary"]["submitted"] == 1
    with Store.default() as store:
        [ev] = store.list_evaluations()
        assert ev.status == "COMPLETED" and len(ev.job_ids) == 1, ev.error
        assert sorted((r.prompt_index, r.sample_index) for r in store.get_sample_scores(ev.id)) == [(0, 0), (1, 0)]


def test_runs_are_evaluated_with_their_own_spec_unless_a_config_is_given(trained_run: TrainedRun,
                                                                          isolated_awm_home: Path) -> None:
    """Without --config a run's checkpoints take the run's eval.service (its training config) with
    the command's --set eval.service.* on top; with --config, the command's spec for everything."""
    from awm_platform.evals.scheduler import Scheduler
    from awm_platform.evals.targets import resolve_targets
    from awm_platform.store import Store

    config = json.loads(json.dumps(trained_run.config))
    config.setdefault("eval", {})["service"] = {"num_steps": 3, "limit": 2, "batch_size": 2, "seed": 7}
    with Store.default() as store:
        store.create_run(name=RUN_NAME, config_hash="0" * 16, resolved_config=config,
                         output_dir=str(trained_run.run_dir), cluster="local")
    own = Scheduler(Store.default(), _cfg("debug"), echo=lambda line: None,
                    run_spec_overrides=["eval.service.limit=1", "launcher.time_min=5"])
    own._register_checkpoints(RUN_NAME, trained_run.run_dir)
    [target] = resolve_targets(own.store, RUN_NAME)
    [ev] = own.ensure([target], ["ocr"], ["policy"])
    assert {k: ev.spec[k] for k in ("num_steps", "limit", "batch_size", "seed")} == \
        {"num_steps": 3, "limit": 1, "batch_size": 2, "seed": 7}
    command = Scheduler(own.store, _cfg("debug"), echo=lambda line: None)  # as with --config
    [ev2] = command.ensure([target], ["ocr"], ["policy"])
    assert ev2.id != ev.id and (ev2.spec["num_steps"], ev2.spec["limit"]) == (SERVICE["num_steps"], SERVICE["limit"])
