"""Real tests of scripts/services.sh: a single-node SLURM cluster (+ submitit) and a throwaway PostgreSQL.

The services are brought up by the session fixtures in tests/fixtures/services.py (skipped only where the
machine cannot run them; failing under CI=true). SLURM is never taken down here: other tests share it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from awm_platform import services
from awm_platform.services import parse_env_lines, services_down, services_status, services_up
from tests.fixtures import services as fx

# one worker at a time: these start, stop and re-check the services (private PostgreSQL clusters, the
# scripts' state) and submit to the single SLURM node (scripts/test.sh runs pytest-xdist; tests/conftest.py)
pytestmark = pytest.mark.xdist_group("slurm")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "services.sh"


def _pids(env: dict[str, str], prefix: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(prefix)}


# ============================================================ pure / cheap (no services needed)
def test_parse_env_lines_handles_shell_quoting() -> None:
    text = "AWM_A=plain\nAWM_B=a\\ b\\,c\nnoise line\n# comment\nAWM_C=''\nAWM_URL=postgresql+psycopg://u:p@127.0.0.1:5/db\n"
    assert parse_env_lines(text) == {
        "AWM_A": "plain",
        "AWM_B": "a b,c",
        "AWM_C": "",
        "AWM_URL": "postgresql+psycopg://u:p@127.0.0.1:5/db",
    }


def test_script_is_found_and_rejects_bad_arguments() -> None:
    assert services.script_path() == SCRIPT
    for args in (["bogus"], ["up", "nosuch"], ["status", "slurm", "--purge"], []):
        proc = subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage:" in proc.stderr
    with pytest.raises(ValueError):
        services_up("nosuch")


def test_require_services_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fx, "can_run_services", lambda: (False, "not running as root"))
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("AWM_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not running as root"):
        fx.require_services("thing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        fx.require_services("thing")
    monkeypatch.delenv("CI")
    monkeypatch.setenv("AWM_REQUIRE_SERVICES", "1")  # what scripts/test.sh exports
    with pytest.raises(pytest.fail.Exception, match="not running as root.*AWM_REQUIRE_SERVICES=1"):
        fx.require_services("thing")
    monkeypatch.setattr(fx, "can_run_services", lambda: (True, "ok"))
    fx.require_services("thing")  # no exception


# ============================================================ SLURM
@pytest.mark.slurm
def test_slurm_status_reports_up(slurm_cluster: fx.SlurmCluster) -> None:
    st = services_status("slurm")
    assert st["ok"] is True
    assert st["slurm"].startswith("up")
    assert set(_pids(st["env"], "AWM_SLURM_PID_")) >= {
        f"AWM_SLURM_PID_{d}" for d in ("MARIADBD", "SLURMDBD", "SLURMCTLD", "SLURMD", "MUNGED")
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "status", "slurm"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert "AWM_SLURM_UP=1" in proc.stdout.splitlines()
    assert (
        slurm_cluster.node
        == subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=False).stdout.strip()
    )


@pytest.mark.slurm
def test_slurm_up_is_idempotent_and_fast(slurm_cluster: fx.SlurmCluster) -> None:
    before = _pids(services_status("slurm")["env"], "AWM_SLURM_PID_")
    t0 = time.monotonic()
    env = services_up("slurm")
    elapsed = time.monotonic() - t0
    assert _pids(env, "AWM_SLURM_PID_") == before  # nothing restarted
    assert env["AWM_SLURM_PARTITION"] == slurm_cluster.partition
    assert elapsed < 3.0, f"idempotent 'up slurm' took {elapsed:.2f} s (target < 1 s)"


@pytest.mark.slurm
def test_sbatch_wrap_job_completes_and_sacct_reports_it(
    slurm_cluster: fx.SlurmCluster, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch(
        "-J", "awm-test-wrap", "-t", "1", "-o", str(out), wrap="echo hello-$SLURM_JOB_ID"
    )
    assert slurm_cluster.wait_state(job_id, timeout=60) == "COMPLETED"
    assert out.read_text().strip() == f"hello-{job_id}"
    # the exact query submitit makes
    rows = subprocess.run(
        ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.splitlines()
    assert f"{job_id}|COMPLETED|{slurm_cluster.node}" in rows


@pytest.mark.slurm
def test_submitit_job_returns_its_result(slurm_cluster: fx.SlurmCluster, tmp_path: Path) -> None:
    def add(a: int, b: int) -> tuple[int, str]:  # pickled by value (cloudpickle): no import path needed

        return a + b, os.environ["SLURM_JOB_ID"]

    executor = slurm_cluster.executor(tmp_path / "%j")
    assert executor.cluster == "slurm"
    job = executor.submit(add, 2, 3)
    slurm_cluster.wait_done(job, timeout=60)
    assert job.result() == (5, job.job_id)
    assert slurm_cluster.wait_state(job.job_id, timeout=30) == "COMPLETED"


@pytest.mark.slurm
def test_submitit_failure_is_reported(slurm_cluster: fx.SlurmCluster, tmp_path: Path) -> None:
    import submitit

    def boom() -> None:
        raise ValueError("deliberate failure")

    job = slurm_cluster.executor(tmp_path / "%j").submit(boom)
    slurm_cluster.wait_done(job, timeout=60)
    with pytest.raises(submitit.core.utils.FailedJobError, match="deliberate failure"):
        job.result()
    assert slurm_cluster.wait_state(job.job_id, timeout=30) == "FAILED"


@pytest.mark.slurm
def test_fake_gpu_job_schedules(slurm_cluster: fx.SlurmCluster, tmp_path: Path) -> None:
    if slurm_cluster.fake_gpus < 1:
        pytest.skip("cluster runs without fake GPUs (AWM_TEST_SLURM_FAKE_GPUS=0)")

    def gpus_on_node() -> str:

        return os.environ.get("SLURM_GPUS_ON_NODE", "")

    job = slurm_cluster.executor(tmp_path / "%j", gpus_per_node=1).submit(gpus_on_node)
    slurm_cluster.wait_done(job, timeout=60)
    assert job.result() == "1"
    # more GPUs than the node has is rejected at submit time, not left pending forever
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-o",
            "/dev/null",
            "-p",
            slurm_cluster.partition,
            f"--gres=gpu:{slurm_cluster.fake_gpus + 1}",
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "configuration is not available" in proc.stderr


@pytest.mark.slurm
def test_requeued_job_is_released_instead_of_waiting_two_minutes(
    slurm_cluster: fx.SlurmCluster, tmp_path: Path
) -> None:
    out = tmp_path / "requeue.txt"
    script = (
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then echo second-run; else echo first-run; sleep 300; fi'
    )
    job_id = slurm_cluster.sbatch("--requeue", "--open-mode=append", "-t", "5", "-o", str(out), wrap=script)
    try:
        deadline = time.monotonic() + 30
        while (slurm_cluster.squeue_state(job_id) or ("",))[0] != "RUNNING":
            assert time.monotonic() < deadline, (
                f"job {job_id} never started: {slurm_cluster.squeue_state(job_id)}"
            )
            time.sleep(0.2)
        t0 = time.monotonic()
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, timeout=30)
        slurm_cluster.release_when_requeued(job_id, timeout=30)
        # right after the release sacct can still report the killed first attempt (FAILED) for a
        # moment: wait for the second run's own record; a genuinely failed rerun times out here
        assert slurm_cluster.wait_state(job_id, {"COMPLETED"}, timeout=45) == "COMPLETED"
        assert time.monotonic() - t0 < 45  # not the ~120 s BeginTime hold
        runs = [w for w in out.read_text().split() if w.endswith("-run")]  # slurmstepd also logs the requeue
        assert runs == ["first-run", "second-run"]
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)


# ============================================================ PostgreSQL
@pytest.mark.postgres
def test_postgres_env_and_default_databases(postgres_server: fx.PostgresServer) -> None:
    env = postgres_server.env
    assert env["AWM_TEST_POSTGRES_URL"] == postgres_server.url("awm_test")
    assert env["AWM_TEST_POSTGRES_URL"].startswith(f"postgresql+psycopg://{postgres_server.user}:")
    assert env["AWM_MLFLOW_POSTGRES_URL"].endswith("/mlflow")
    assert env["AWM_OPTUNA_POSTGRES_URL"].endswith("/optuna")
    assert postgres_server.host == "127.0.0.1"
    for db in ("awm_test", "mlflow", "optuna"):
        assert db in postgres_server.databases
        assert postgres_server.database_exists(db)


@pytest.mark.postgres
def test_postgres_accepts_psycopg_connection(postgres_url: str) -> None:
    import psycopg  # a dev dependency: missing is an error, not a skip
    with psycopg.connect(
        postgres_url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=10
    ) as conn:
        user, db = conn.execute("SELECT current_user, current_database()").fetchone()
    assert postgres_url.endswith(f"/{db}")
    assert f"://{user}:" in postgres_url


@pytest.mark.postgres
def test_postgres_rejects_a_wrong_password(postgres_server: fx.PostgresServer) -> None:
    import psycopg  # a dev dependency: missing is an error, not a skip
    bad = postgres_server.url("awm_test", driver="").replace(f":{postgres_server.password}@", ":wrong@")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=10)


@pytest.mark.postgres
def test_sqlalchemy_creates_a_table_in_a_fresh_db(fresh_postgres_db: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(fresh_postgres_db)
    try:
        meta = sa.MetaData()
        runs = sa.Table(
            "runs", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(64))
        )
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(runs.insert(), [{"name": "a"}, {"name": "b"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == 2
            assert conn.dialect.driver == "psycopg"
            assert sa.inspect(conn).get_table_names() == ["runs"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_fresh_databases_are_unique_and_dropped(postgres_server: fx.PostgresServer) -> None:
    """Dropped even with a session still in it (a store's pool). The test role is a member of
    pg_signal_backend: a session of no role, an autovacuum worker's, in the database made the forced
    drop fail on PostgreSQL 15 ("must be a member of the role whose process is being terminated")."""
    import psycopg

    a = postgres_server.create_database()
    b = postgres_server.create_database()
    assert a != b
    held = psycopg.connect(a.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    assert held.execute("SELECT pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')").fetchone() == (True,)
    for url in (a, b):
        name = url.rsplit("/", 1)[1]
        assert postgres_server.database_exists(name)
        postgres_server.drop_database(name)
        assert not postgres_server.database_exists(name)
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")
    held.close()


# ---- a second, private state dir: its own PostgreSQL on another free port. `down` -> `up` is tested on
#      it, never on the shared server (other test sessions on this machine may be using that one).
@pytest.fixture(scope="module")
def private_state_dir() -> Iterator[Path]:
    # not pytest's tmp_path: /tmp/pytest-of-root is mode 700 and the postgres user must reach the dir
    d = Path(tempfile.mkdtemp(prefix="awm-svc-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    try:
        services_down("postgres", purge=True, env={"AWM_SERVICES_DIR": str(d)})
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def _is_gone(pid: str) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(") ", 1)[1][0] in "ZX"  # zombie until init reaps it
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.postgres
def test_private_postgres_down_then_up_keeps_data_and_port(
    postgres_server: fx.PostgresServer, private_state_dir: Path
) -> None:
    import sqlalchemy as sa

    over = {"AWM_SERVICES_DIR": str(private_state_dir), "AWM_PG_DBS": "only_one"}
    env = services_up("postgres", env=over)
    assert int(env["AWM_POSTGRES_PORT"]) != postgres_server.port  # picked another free port
    assert env["AWM_POSTGRES_DBS"] == "only_one"
    assert env["AWM_TEST_POSTGRES_URL"].endswith("/only_one")
    assert "AWM_MLFLOW_POSTGRES_URL" not in env
    url = env["AWM_TEST_POSTGRES_URL"]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE survives (v int)"))
        conn.execute(sa.text("INSERT INTO survives VALUES (42)"))
    engine.dispose()

    services_down("postgres", env=over)
    assert _is_gone(env["AWM_POSTGRES_PID"])
    st = services_status("postgres", env=over)
    assert st["ok"] is False and st["postgres"].startswith("down")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "status", "postgres"],
        env={**os.environ, **over},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert services_status("postgres")["ok"]  # the shared server was not touched

    again = services_up("postgres", env={"AWM_SERVICES_DIR": str(private_state_dir)})  # settings remembered
    assert again["AWM_POSTGRES_PORT"] == env["AWM_POSTGRES_PORT"]
    assert again["AWM_TEST_POSTGRES_URL"] == url
    assert again["AWM_POSTGRES_PID"] != env["AWM_POSTGRES_PID"]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT v FROM survives")).scalar_one() == 42
    finally:
        engine.dispose()

    services_down("postgres", purge=True, env=over)
    assert not (private_state_dir / "postgres").exists()
    assert not services_status("postgres", env=over)["ok"]


@pytest.mark.postgres
def test_down_never_kills_a_process_it_did_not_start(private_state_dir: Path) -> None:
    over = {"AWM_SERVICES_DIR": str(private_state_dir)}
    recs = private_state_dir / "postgres" / "pids"
    victim = subprocess.Popen(["sleep", "60"])
    try:
        start = Path(f"/proc/{victim.pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
        recs.mkdir(parents=True, exist_ok=True)
        # a record naming the wrong command, then one with the wrong start time (= a recycled PID)
        for record in (f"{victim.pid} {start} postgres", f"{victim.pid} {int(start) + 1} sleep"):
            (recs / "postgres").write_text(record + "\n")
            services_down("postgres", env=over)
            assert victim.poll() is None, f"down killed an unrelated process via record {record!r}"
            assert not (recs / "postgres").exists()  # the stale record is cleaned up
    finally:
        victim.kill()
        victim.wait()
