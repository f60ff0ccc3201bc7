"""The executor backends behind one interface (`awm_platform.runner.backends`): what each refuses,
previews, observes in a batch poll and how it cancels, on real processes and real store rows."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from awm_platform.config import config_from_dict
from awm_platform.runner.backends import CLUSTERS, backend_for
from awm_platform.runner.backends.local import EXITED_WITHOUT_REPORTING, record_local_job
from awm_platform.runner.backends.slurm import observe, parse_sacct
from awm_platform.runner.proc import is_alive
from awm_platform.store import Store

SACCT = """\
41|REQUEUED|vm|12|2026-01-01T10:00:00|2026-01-01T10:00:12
41|RUNNING|vm|30|2026-01-01T10:02:20|Unknown
42|TIMEOUT|node7|60|2026-01-01T10:00:00|2026-01-01T10:01:00
43|PENDING|None assigned|0|Unknown|Unknown
44|COMPLETING|vm|5|2026-01-01T10:00:00|Unknown
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(f"sqlite:///{tmp_path / 'store.db'}") as s:
        yield s


def _row(store: Store, tmp_path: Path, name: str, cluster: str, job_ids: list[str], gpus: int = 2):
    run_dir = tmp_path / name
    run_dir.mkdir()
    store.create_run(name=name, config_hash="h", resolved_config={}, output_dir=run_dir, cluster=cluster,
                     num_gpus=gpus)
    for job_id in job_ids:
        store.append_job_id(name, job_id)
    return store.get_run(name)


def test_one_backend_per_cluster_name_and_unknown_names_are_refused() -> None:
    assert {backend_for(c).name for c in CLUSTERS} == set(CLUSTERS)
    with pytest.raises(ValueError, match="unknown cluster 'k8s': expected one of local, debug, slurm"):
        backend_for("k8s")
    # who accounts GPU-hours, where the job runs, who has arrays: the only per-cluster facts callers use
    assert [c for c in CLUSTERS if not backend_for(c).controller_accounts_gpu_hours] == ["slurm"]
    assert [c for c in CLUSTERS if backend_for(c).runs_in_process] == ["debug"]
    assert [c for c in CLUSTERS if backend_for(c).supports_arrays] == ["slurm"]


def test_one_machine_executors_refuse_several_nodes_and_only_slurm_has_a_script(tmp_path: Path) -> None:
    cfg = config_from_dict({"name": "two", "launcher": {"nodes": 2}})
    for cluster in ("local", "debug"):
        with pytest.raises(ValueError, match=f"launcher.nodes=2: the {cluster} executor runs on one machine"):
            backend_for(cluster).validate(cfg)
        assert backend_for(cluster).preview(cfg, tmp_path) is None
    backend_for("slurm").validate(cfg)
    script = backend_for("slurm").preview(cfg, tmp_path, array_size=3)
    assert script is not None and "#SBATCH --nodes=2" in script and "#SBATCH --array=0-2%" in script


def test_slurm_observation_of_sacct_records(store: Store, tmp_path: Path) -> None:
    info = parse_sacct(SACCT)
    running = observe(_row(store, tmp_path, "requeued", "slurm", ["41"]), info)
    assert running is not None and running.status == "RUNNING" and running.error is None
    assert running.gpu_hours == pytest.approx(42 * 2 / 3600)  # both instances, preempted time included
    assert running.hosts == ["vm"] and running.started_at == datetime(2026, 1, 1, 10, 2, 20).astimezone(UTC)
    assert running.ended_at is None

    timed_out = observe(_row(store, tmp_path, "late", "slurm", ["42"]), info)
    assert timed_out is not None and timed_out.status == "FAILED" and timed_out.error == "SLURM state TIMEOUT"
    assert timed_out.ended_at == datetime(2026, 1, 1, 10, 1).astimezone(UTC)

    pending = observe(_row(store, tmp_path, "queued", "slurm", ["43"]), info)
    assert pending is not None and pending.status == "PENDING" and pending.hosts == [] and pending.started_at is None
    transient = observe(_row(store, tmp_path, "ending", "slurm", ["44"]), info)
    assert transient is not None and transient.status is None  # COMPLETING: nothing to change yet
    assert observe(_row(store, tmp_path, "unknown", "slurm", ["99"]), info) is None  # not in sacct yet


def test_slurm_failure_is_explained_by_a_failed_setup_line_first(store: Store, tmp_path: Path) -> None:
    run = _row(store, tmp_path, "setup-broke", "slurm", ["42"])
    setup = Path(run.output_dir) / "setup"
    setup.mkdir()
    (setup / "failed.json").write_text(json.dumps({"line": 1, "exit_code": 5}))
    (setup / "line-1.log").write_text("module: not found\n")
    obs = observe(run, parse_sacct(SACCT))
    assert obs is not None and obs.status == "FAILED"
    assert obs.error is not None and obs.error.startswith("launcher.setup line 1 failed with exit code 5")
    assert "module: not found" in obs.error


def test_local_poll_sees_only_dead_controllers_and_cancel_kills_what_ignores_sigterm(store: Store,
                                                                                      tmp_path: Path) -> None:
    backend = backend_for("local")
    # ignores SIGTERM: cancel must fall back to killing the tree after its timeout
    ignore_term = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)")
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE, text=True)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    rows = []
    for name, proc in (("stubborn", stubborn), ("polite", polite)):
        row = _row(store, tmp_path, name, "local", [str(proc.pid)], gpus=1)
        record_local_job(Path(row.output_dir), proc.pid)
        rows.append(store.get_run(name))
    try:
        assert backend.poll(rows) == {}  # alive: the controller reports for itself
        assert all(backend.job_alive(r) for r in rows)
        # both sleep 60 s: a wait that returns within 10 s means cancel ended them (cancel may have
        # reaped them already, so Popen sees no exit status)
        backend.cancel(rows[1], timeout_s=30)  # SIGTERM is enough
        polite.wait(timeout=10)
        backend.cancel(rows[0], timeout_s=1)  # SIGTERM ignored: the tree is killed after the timeout
        stubborn.wait(timeout=10)
        assert not any(is_alive(p.pid) or backend.job_alive(r) for p, r in ((polite, rows[1]), (stubborn, rows[0])))
        observations = backend.poll(rows)
        assert set(observations) == {"stubborn", "polite"}
        assert all(o.status == "FAILED" and o.error == EXITED_WITHOUT_REPORTING and o.gpu_hours is None
                   for o in observations.values())
    finally:
        for proc in (stubborn, polite):
            proc.kill()
            proc.wait()


def test_debug_backend_has_nothing_to_poll_or_cancel(store: Store, tmp_path: Path) -> None:
    run = _row(store, tmp_path, "dbg", "debug", ["debug-1"])
    backend = backend_for("debug")
    assert backend.poll([run]) == {}
    backend.cancel(run, timeout_s=1)
    assert not backend.job_alive(run)
