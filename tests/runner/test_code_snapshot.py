"""Every attempt of a job runs the code it was submitted with (runner/snapshot.py).

The jobs are submitted from a *copy* of the first-party packages (a private "checkout": the shared
tree must never be edited by a test) whose job controller and trainer print a version marker. The
copy is changed to the next version while the job waits to start (a gate in `launcher.setup`
locally, `--hold` on SLURM) and before its requeue: the logs must show the submitted version only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.runner.conftest import tiny_config_dict, wait_terminal, write_config

MARKED = {"awm_platform/runner/job.py": "controller", "trainers/awm/recipe.py": "trainer"}


def _checkout(dest: Path) -> dict[str, Path]:
    """A private copy of the packages as this process imports them, with version markers."""
    from awm_platform.runner.snapshot import package_sources

    sources = {}
    for package, src in package_sources().items():
        sources[package] = dest / package
        shutil.copytree(src, sources[package], ignore=shutil.ignore_patterns("__pycache__"))
    for rel, who in MARKED.items():
        path = dest / rel
        path.write_text(
            path.read_text()
            + f"\nimport sys as _marker_sys\n_marker_sys.stderr.write('[code-marker] {who} v1\\n')\n"
        )
    return sources


def _set_version(checkout: Path, version: str) -> None:
    for rel, who in MARKED.items():
        path = checkout / rel
        text = path.read_text()
        start = text.index(f"[code-marker] {who} v")
        path.write_text(text[:start] + f"[code-marker] {who} {version}\\n')\n")


def test_snapshot_is_content_addressed_and_wins_imports(
    tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from awm_platform.runner import snapshot
    from awm_platform.runner.job import worker_env

    checkout = tmp_path / "checkout"
    sources = _checkout(checkout)
    (checkout / "trainers" / "__pycache__").mkdir()
    (checkout / "trainers" / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"\0")
    home = tmp_path / "home"

    first = snapshot.snapshot_code(home, sources)
    assert snapshot.snapshot_code(home, sources) == first  # same code: the same directory, no new copy
    assert [p.name for p in (home / "code").iterdir()] == [first.sha256[:16]]
    files = [p for p in Path(first.path).rglob("*") if p.is_file()]
    assert len(files) == first.files and sum(p.stat().st_size for p in files) == first.bytes
    assert (Path(first.path) / "awm_platform" / "runner" / "snapshot.py").is_file()
    assert (Path(first.path) / "benchmarks" / "ocr" / "data").is_dir()  # package data travels too
    assert not any("__pycache__" in p.parts for p in files)
    assert all(p.stat().st_mode & 0o222 == 0 for p in files)  # shared by runs: read-only

    # an edit is a new version; the old one is untouched
    _set_version(checkout, "v2")
    second = snapshot.snapshot_code(home, sources)
    assert second.sha256 != first.sha256
    assert "trainer v1" in (Path(first.path) / "trainers" / "awm" / "recipe.py").read_text()

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    link = snapshot.link_snapshot(run_dir, first)
    assert link == run_dir / "code" and link.resolve() == Path(first.path).resolve()
    assert json.loads((run_dir / "capsule" / "code.json").read_text())["sha256"] == first.sha256

    # A job process started in the repository root (which holds trainers/ and benchmarks/, and
    # `python -m`/`-c` put the working directory first on sys.path) imports the snapshot. The probe
    # asks the import system for the file each import would load (find_spec: the parent packages
    # are imported, the module itself is not: the trainer's torch imports take ~8 s per probe).
    probe = (
        "import importlib.util as u;"
        "print(*(u.find_spec(m).origin"
        "        for m in ('awm_platform.runner.job', 'trainers.awm.recipe', 'benchmarks.ocr')))"
    )

    def where(env: dict[str, str]) -> list[str]:
        out = subprocess.run([sys.executable, "-c", probe], cwd=repo_root, env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    env = worker_env(run_dir)  # what the controller gives the trainer
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(link) and env["PYTHONSAFEPATH"] == "1"
    assert all(path.startswith(f"{link}/") for path in where(env))
    # without PYTHONSAFEPATH the working directory would win: that is why the job sets it
    unsafe = {k: v for k, v in env.items() if k != "PYTHONSAFEPATH"}
    assert where(unsafe)[1].startswith(f"{repo_root}/trainers/")

    # a deleted snapshot: the trainer runs the installed code, and the log says so
    shutil.rmtree(Path(first.path))
    env = worker_env(run_dir)
    assert str(link) not in env.get("PYTHONPATH", "")
    assert "code snapshot" in capsys.readouterr().err


def _submit_from(checkout: Path, config: Path, cluster: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONSAFEPATH": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "awm_platform.cli.main", "submit", str(config), "--cluster", cluster],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _check_ran_submitted_code(store: Any, name: str, checkout: Path, attempts: int) -> None:
    from mlflow.tracking import MlflowClient

    from awm_platform.paths import default_mlflow_tracking_uri
    from awm_platform.runner.snapshot import snapshot_code

    run = store.get_run(name)
    run_dir = Path(run.output_dir)
    logs = "".join(p.read_text(errors="replace") for p in (run_dir / "submitit").glob("*_log.*"))
    assert run.status == "COMPLETED", (run.error, logs)
    for who in MARKED.values():
        assert logs.count(f"[code-marker] {who} v1") >= attempts, logs
        assert f"[code-marker] {who} v2" not in logs, "an attempt ran the checkout as it was after submission"
    record = json.loads((run_dir / "capsule" / "code.json").read_text())
    assert record["sources"]["trainers"] == str(checkout / "trainers")
    mlflow_run = MlflowClient(default_mlflow_tracking_uri()).get_run(run.mlflow_run_id)
    assert mlflow_run.data.tags["awm.code_sha256"] == record["sha256"]
    assert (run_dir / "code").resolve() == Path(record["path"]).resolve()
    # the record's hash is the hash of what the job ran (the checkout, back at v1)
    _set_version(checkout, "v1")
    again = snapshot_code(Path(os.environ["AWM_HOME"]), {p: checkout / p for p in record["sources"]})
    assert again.sha256 == record["sha256"]


@pytest.mark.slow
def test_local_job_and_its_requeue_run_the_submitted_code(tiny_model: Path, tmp_path: Path) -> None:
    from awm_platform.store import Store

    checkout = tmp_path / "checkout"
    _checkout(checkout)
    gate = tmp_path / "gate"
    # the job waits for the gate, as a job waits in a queue; 12 epochs (~0.2 s each on a fast machine):
    # still at work when the signal below lands, so the job is requeued
    data = tiny_config_dict(tiny_model, "snap-local", num_epochs=12,
                            launcher={"setup": [f"while [ ! -e {gate} ]; do sleep 0.2; done"]})
    name = _submit_from(checkout, write_config(tmp_path / "c.yaml", data), "local")
    store = Store.default()
    run_dir = Path(store.get_run(name).output_dir)

    _set_version(checkout, "v2")  # the checkout moves on while the job waits...
    gate.touch()
    # ...and again before the requeue: preempt the job (submitit's USR2) once the trainer runs
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(e["event"] == "train_call" for e in _events(run_dir)):
        time.sleep(0.2)
    assert any(e["event"] == "train_call" for e in _events(run_dir)), "the job never started training"
    controller = next(e["pid"] for e in _events(run_dir) if e["event"] == "controller_start")
    os.kill(controller, signal.SIGUSR2)

    assert wait_terminal(store, name, 420) == "COMPLETED", store.get_run(name).error
    starts = [e for e in _events(run_dir) if e["event"] == "controller_start"]
    assert len(starts) == 2, starts  # the first attempt and its requeue
    _check_ran_submitted_code(store, name, checkout, attempts=2)


@pytest.mark.slurm
def test_held_slurm_job_runs_the_submitted_code(tiny_model: Path, tmp_path: Path, slurm_cluster: Any) -> None:
    from awm_platform.store import Store

    checkout = tmp_path / "checkout"
    _checkout(checkout)
    launcher = {"cluster": "slurm", "partition": slurm_cluster.partition, "gpus_per_node": 1,
                "extra_sbatch": ["--hold"]}  # held: it waits in the queue until released
    data = tiny_config_dict(tiny_model, "snap-slurm", num_epochs=1, launcher=launcher)
    name = _submit_from(checkout, write_config(tmp_path / "c.yaml", data), "slurm")
    store = Store.default()
    job_id = store.get_run(name).job_ids[-1]
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True,
                           timeout=60, check=False).stdout
    assert state.startswith("PENDING"), state  # held: it cannot start before the release

    _set_version(checkout, "v2")
    subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True, timeout=60)
    assert wait_terminal(store, name, 300) == "COMPLETED", store.get_run(name).error
    _check_ran_submitted_code(store, name, checkout, attempts=1)
