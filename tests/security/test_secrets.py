"""Secrets never persist (issue 9 §2; rules in docs/runner.md, "Secrets").

* The redaction rules, form by form (fast).
* The capsule's `git diff` of a checkout whose config file holds the run's secrets (real git, fast).
* End to end (real PostgreSQL, real mlflow server, real local jobs): random secrets in every place a
  config can carry them (launcher.setup lines in every form, storage.url, tracking.uri, sweep.storage,
  reward_kwargs), a real `awm submit` and a real one-trial `awm sweep start`; then EVERY byte the
  platform wrote (AWM_HOME: platform DB, embedded MLflow store and artifacts, Optuna files, run dirs,
  capsules, logs, spools; both PostgreSQL databases; the mlflow server's store, artifacts and log)
  and printed (`awm config show`, `awm submit [--dry-run] [--cluster slurm]`, `awm status --json`,
  `awm logs`, `awm sweep start/status`), and the command lines of the running job's processes, are
  searched for them. The only files allowed to hold them are the 0600 job files (job.json,
  setup.sh, the sweep's sweep.json). No file under AWM_HOME is world-readable.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from awm_platform.redaction import REDACTED, is_secret_name, redact, redact_text, redact_url, secret_values

REPO = Path(__file__).resolve().parents[2]
REWARD = "tests.security.secret_reward:make_reward"


# ------------------------------------------------------------------------- rules ----
@pytest.mark.parametrize(("text", "expected"), [
    ("export hf_token=B1", "export hf_token=***"),
    ("export HF_TOKEN=B1 && echo ok", "export HF_TOKEN=*** && echo ok"),
    ("true --token C1", "true --token ***"),
    ("true --password=C2 --verbose", "true --password=*** --verbose"),
    ("export MY_PASS=D1", "export MY_PASS=***"),
    ('export HF_TOKEN="E1 E2"; next', "export HF_TOKEN=***; next"),
    ("export API_KEY='E1 E2'", "export API_KEY=***"),
    ("export apiKey=F1", "export apiKey=***"),
    ("AWS_SECRET_ACCESS_KEY=F2 aws s3 ls", "AWS_SECRET_ACCESS_KEY=*** aws s3 ls"),
    ("postgresql://u:pa/SECRET2@host/db", "postgresql://u:***@host/db"),
    ("postgresql+psycopg://u:p@ss#x@host:5432/db?sslpassword=S3&application_name=a",
     "postgresql+psycopg://u:***@host:5432/db?sslpassword=***&application_name=a"),
    ("sqlite:///a.db?password=SECRET3", "sqlite:///a.db?password=***"),
    ("pip install git+https://ghp_TOKEN@github.com/org/repo.git", "pip install git+https://***@github.com/org/repo.git"),
    ("http://h/cb#access_token=T1&state=x", "http://h/cb#access_token=***&state=x"),
    ("echo '{\"token\": \"J1\"}'", "echo '{\"token\": ***}'"),
    # not secrets: an '@' in a path, plural/prefix of "token", keys, monkey, PWD, bypass
    ("postgresql://u:p@ss/x@h/db?sslpassword=ab@cd", "postgresql://u:***"),  # over-hides, never leaks
    ("s3://bucket/path@v2", "s3://bucket/path@v2"),
    ("x --tokenizer t5 --max_tokens 5 --keys a monkey=1 PWD=/x --bypass y", None),
    ("module load cuda/12.4", None),
])
def test_redaction_forms(text: str, expected: str | None) -> None:
    assert redact_text(text)[0] == (text if expected is None else expected)


def test_secret_names_and_structures() -> None:
    for name in ("HF_TOKEN", "hf_token", "MY_PASS", "api_key", "apiKey", "sslpassword", "client_secret",
                 "credentials", "auth", "Authorization", "AccessToken", "private_key", "passwd"):
        assert is_secret_name(name), name
    for name in ("tokens", "max_tokens", "tokenizer", "keys", "monkey", "keep", "passes", "bypass", "author",
                 "PWD", "checkpoint_keep_every", "url", "uri"):
        assert not is_secret_name(name), name
    data = {"reward_kwargs": {"r": {"api_key": "K123", "use_auth": True, "nested": {"Password": ["p1x", 7]}}},
            "storage": {"url": "postgresql://u:pw/x@h/db"}, "launcher": {"setup": ['export HF_TOKEN="a b"']}}
    red = redact(data)
    assert red["reward_kwargs"]["r"] == {"api_key": REDACTED, "use_auth": True, "nested": {"Password": REDACTED}}
    assert red["storage"]["url"] == "postgresql://u:***@h/db"
    assert red["launcher"]["setup"] == ["export HF_TOKEN=***"]
    assert {"K123", "p1x", "pw/x", "a b", "a", "b"} - {"a", "b"} <= secret_values(data)
    # every config key of the schema keeps its value (no false positive among our own names)
    from awm_platform.config import ExperimentConfig, flatten

    assert not [k for k in flatten(ExperimentConfig().model_dump(mode="json")) if any(
        is_secret_name(part) for part in k.split("."))]
    assert redact_url("postgresql://awm:p@ss@127.0.0.1:5432/db") == "postgresql://awm:***@127.0.0.1:5432/db"


def test_store_and_resolved_config_hide_setup_and_urls(tmp_path: Path) -> None:
    from awm_platform.config import config_from_dict, resolved_config
    from awm_platform.store.store import _safe_url

    cfg = config_from_dict({"launcher": {"setup": ["export HF_TOKEN=abcdef", "module load cuda"]},
                            "storage": {"url": "postgresql://u:p@ss/x@h/db"}})
    res = resolved_config(cfg)
    assert res["launcher"]["setup"] == ["export HF_TOKEN=***", "module load cuda"]
    assert res["storage"]["url"] == "postgresql://u:***@h/db"
    other = config_from_dict({"launcher": {"setup": ["export HF_TOKEN=abcdeg", "module load cuda"]}})
    assert res["derived"]["setup_hash"] != resolved_config(other)["derived"]["setup_hash"]  # told apart
    assert "abcdef" not in json.dumps(res)
    assert _safe_url("postgresql://u:p@ss@h/db") == "postgresql://u:***@h/db"


# ------------------------------------------------------------------- git diff ----
def test_capsule_git_diff_hides_the_config_secrets(tmp_path: Path) -> None:
    """A config file edited in the checkout (and committed nowhere) holds the run's secrets: the
    capsule's git.diff keeps the edit but not the secrets; every capsule file is 0640."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.capsule import git_info, write_capsule

    token, password = secrets.token_hex(8), "pw" + secrets.token_hex(6)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    (repo / "exp.yaml").write_text("name: a\nseed: 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "exp.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    data = {"name": "a", "seed": 2, "launcher": {"setup": [f'export HF_TOKEN="{token} second{token}"']},
            "storage": {"url": f"postgresql://u:{password}@h/db"}}
    (repo / "exp.yaml").write_text(yaml.safe_dump(data, default_style='"'))  # quoted and escaped differently
    cfg = config_from_dict(data)
    info = git_info(repo)
    assert info["dirty"]
    cap = write_capsule(tmp_path / "run", cfg=cfg, cluster="local", launch_command=["x"], sbatch=None, git=info)
    diff = (cap / "git.diff").read_text()
    assert '+"seed": !!int "2"' in diff  # the edit is kept
    for secret in (token, password):
        assert secret not in diff
    assert REDACTED in diff
    for f in cap.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_setup_file_failure_report_and_traceback_hide_secrets(tmp_path: Path) -> None:
    """setup.sh (0600) runs the raw lines for real; a failing line is reported by number and exit
    code with its output scrubbed of the job's secrets; a traceback is scrubbed the same way."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.launch import setup_commands, setup_failure
    from awm_platform.runner.spec import JobSpec

    tok, pw = secrets.token_hex(8), secrets.token_hex(8)
    cfg = config_from_dict({"launcher": {"setup": [
        f'export HF_TOKEN="{tok} x"', 'echo "login with $HF_TOKEN refused" >&2; (exit 7)', "echo never"]}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = JobSpec(name="s", config=cfg.model_dump(mode="json"), cluster="local",
                   store_url=f"postgresql://u:{pw}@h/db", tracking_uri="sqlite:///m.db", artifact_root=None,
                   experiment="e")
    spec.save(run_dir)
    assert stat.S_IMODE((run_dir / "setup.sh").stat().st_mode) == 0o600
    script = " && ".join([*setup_commands(cfg, run_dir), "echo reached"])
    assert tok not in script  # what `ps` and the sbatch script show
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 7 and "reached" not in res.stdout
    report = setup_failure(run_dir)
    assert report is not None and "line 2 failed with exit code 7" in report and "refused" in report
    assert tok not in report
    tb = f'ValueError: cannot reach postgresql://u:{pw}@h/db with token "{tok} x"'
    assert tok not in spec.scrub(tb) and pw not in spec.scrub(tb) and "ValueError" in spec.scrub(tb)


@pytest.mark.slurm
def test_slurm_job_gets_the_setup_lines_only_from_the_0600_file(tmp_path: Path, slurm_cluster: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SLURM job through the runner's executor: the lines run (raw values exported) while
    the submitted script (kept in SLURM's spool) holds only `. run_dir/setup.sh`."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.backends import backend_for
    from awm_platform.runner.spec import JobSpec

    monkeypatch.setenv("AWM_SLURM_NO_GPUS", "1")
    tok = secrets.token_hex(8)
    cfg = config_from_dict({"name": "sec-slurm", "launcher": {
        "cluster": "slurm", "partition": slurm_cluster.partition, "cpus_per_task": 1, "time_min": 5,
        "signal_delay_s": 30, "setup": [f'export HF_TOKEN="{tok} b"', f"export MY_PASS={tok}x"]}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    JobSpec(name=cfg.name, config=cfg.model_dump(mode="json"), cluster="slurm", store_url="sqlite:///x.db",
            tracking_uri="sqlite:///m.db", artifact_root=None, experiment="e").save(run_dir)
    from submitit.helpers import CommandFunction  # importable in the job (no `tests` package there)

    show_env = CommandFunction(["sh", "-c", 'printf "%s|%s" "$HF_TOKEN" "$MY_PASS"'])
    job = backend_for("slurm").submit(cfg, run_dir, show_env)
    assert job.result() == f"{tok} b|{tok}x"
    script = next((run_dir / "submitit").glob("*_submission.sh")).read_text()
    assert f". {run_dir}/setup.sh" in script and tok not in script
    batch = subprocess.run(["scontrol", "write", "batch_script", str(job.job_id), "-"], capture_output=True,
                           text=True, timeout=30, check=False)
    # SLURM's own copy of the script (kept MinJobAge = 300 s after the end by the services' config)
    assert batch.returncode == 0 and "setup.sh" in batch.stdout and tok not in batch.stdout, batch.stderr


# ----------------------------------------------------------------------- e2e ----
def _awm(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "awm_platform.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO, check=False)


def _dump_database(url: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(f"{t.name}: {row!r}" for t in meta.sorted_tables for row in conn.execute(sa.select(t)))
    finally:
        engine.dispose()


def _cmdlines() -> str:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(out)


@pytest.fixture
def optuna_postgres_db(postgres_server: Any) -> Any:
    from sqlalchemy.engine import make_url

    url = postgres_server.create_database(prefix="awm_sec_optuna")
    yield url
    postgres_server.drop_database(str(make_url(url).database))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.mlflow_server
def test_no_secret_persists_or_prints(tiny_model: Path, tmp_path: Path, isolated_awm_home: Path,
                                      fresh_postgres_db: str, optuna_postgres_db: str, mlflow_server: Any) -> None:
    from sqlalchemy.engine import make_url

    from awm_platform.store import Store
    from trainers.awm.tiny import tiny_experiment_dict

    s = {k: f"{k}{secrets.token_hex(6)}" for k in (
        "hf", "flag", "mypass", "q1", "q2", "pwflag", "ak1", "ak2", "urlpw", "urlq", "aws", "rkey", "rurl",
        "rtok", "storeq", "sweepq", "mlflow")}
    platform_db, optuna_db = fresh_postgres_db, optuna_postgres_db
    pg_password = make_url(platform_db).password
    assert pg_password, "the throwaway PostgreSQL URL has a password: a real secret"
    secret_list = [*s.values(), pg_password]
    setup = [
        f"export hf_token={s['hf']}",
        f"true --token {s['flag']}",
        f"export MY_PASS={s['mypass']}",
        f'export HF_TOKEN="{s["q1"]} {s["q2"]}"',
        f"true --password={s['pwflag']}",
        f"export API_KEY='{s['ak1']} {s['ak2']}'",
        f'true "postgresql://u:pa/{s["urlpw"]}@db.invalid/x?sslpassword={s["urlq"]}"',
        f"export AWS_SECRET_ACCESS_KEY={s['aws']}",
    ]
    reward_kwargs = {REWARD: {
        "api_key": s["rkey"],
        "endpoint": f"https://svc:{s['rurl']}@reward.invalid/score?token={s['rtok']}",
        # the reward checks, inside the job, that setup.sh exported the raw values
        "env": {"hf_token": s["hf"], "MY_PASS": s["mypass"], "HF_TOKEN": f"{s['q1']} {s['q2']}",
                "API_KEY": f"{s['ak1']} {s['ak2']}"},
    }}
    base = tiny_experiment_dict(
        tiny_model, "sec", num_epochs=1, eval_freq=1, save_freq=1, reward_fn={REWARD: 1.0},
        reward_kwargs=reward_kwargs, eval={"max_prompts": 2, "at_start": False, "ema": False},
        launcher={"cluster": "local", "cpus_per_task": 1, "time_min": 10, "setup": setup})
    run_cfg = tmp_path / "run.yaml"  # embedded stores in AWM_HOME (SQLite platform DB + MLflow)
    run_cfg.write_text(yaml.safe_dump(base))
    sweep_data = {**base, "name": "secsweep",
                  "storage": {"url": f"{platform_db}?sslpassword={s['storeq']}"},
                  "tracking": {"uri": mlflow_server.url.replace("http://", f"http://awm:{s['mlflow']}@"),
                               "experiment": "security"},
                  "sweep": {"params": {"train.beta": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                            "objective": {"metric": f"eval/{REWARD}", "direction": "maximize"},
                            "n_trials": 1, "parallelism": 1, "pruner": {"name": "none"},
                            "sampler": {"name": "random", "seed": 0}, "poll_interval_s": 0.3,
                            "storage": f"{optuna_db}?sslpassword={s['sweepq']}"}}
    sweep_cfg = tmp_path / "sweep.yaml"
    sweep_cfg.write_text(yaml.safe_dump(sweep_data))

    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "AWM_POLL_INTERVAL_S": "0.3", "AWM_MLFLOW_FLUSH_S": "5"}
    env.pop("MLFLOW_TRACKING_URI", None)
    printed: dict[str, str] = {}

    def awm(*args: str) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        res = _awm(env, *args)
        print(f"awm {' '.join(args[:2])}: {time.monotonic() - t0:.1f} s")
        printed[" ".join(args)] = res.stdout + res.stderr
        assert res.returncode == 0, f"awm {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    assert REDACTED in awm("config", "show", str(run_cfg)).stdout
    awm("config", "show", str(sweep_cfg))
    awm("config", "validate", str(sweep_cfg))
    awm("submit", str(run_cfg), "--dry-run")
    sbatch = awm("submit", str(run_cfg), "--cluster", "slurm", "--dry-run").stdout
    assert f". {isolated_awm_home}/runs/sec/setup.sh" in sbatch  # the script sources the 0600 file

    # a real local run; meanwhile, no process of it shows a secret on its command line (`ps`)
    awm("submit", str(run_cfg))
    cmdlines = ""
    deadline = time.monotonic() + 600
    with Store(f"sqlite:///{isolated_awm_home / 'awm.db'}") as store:
        while store.get_run("sec").status not in ("COMPLETED", "FAILED", "CANCELLED"):
            assert time.monotonic() < deadline, "the run did not finish"
            cmdlines += _cmdlines()
            time.sleep(0.5)
        run = store.get_run("sec")
    assert run.status == "COMPLETED", run.error
    awm("status", "--json")
    awm("status", "sec", "--json")
    awm("logs", "sec")

    # a real one-trial sweep: PostgreSQL platform store and Optuna storage, MLflow over HTTP
    awm("sweep", "start", str(sweep_cfg), "--cluster", "local")
    awm("sweep", "status", "secsweep", "--json")
    with Store(sweep_data["storage"]["url"]) as store:
        trial = store.get_run("secsweep-t0")
        assert trial.status == "COMPLETED", trial.error
        assert trial.resolved_config["launcher"]["setup"][0] == "export hf_token=***"
        assert trial.resolved_config["derived"]["setup_hash"]

    # ---- every byte written or printed
    allowed = {isolated_awm_home / "runs" / n / f for n in ("sec", "secsweep-t0") for f in ("job.json", "setup.sh")}
    allowed.add(isolated_awm_home / "sweeps" / "secsweep" / "sweep.json")
    haystacks: dict[str, bytes] = {f"printed by awm {k}": v.encode() for k, v in printed.items()}
    haystacks["process command lines"] = cmdlines.encode()
    haystacks["platform DB (PostgreSQL)"] = _dump_database(platform_db).encode()
    haystacks["Optuna DB (PostgreSQL)"] = _dump_database(optuna_db).encode()
    files = [p for root in (isolated_awm_home, Path(mlflow_server.root)) for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "awm.db" for p in files)
    assert any("mlartifacts" in p.parts for p in files)  # embedded MLflow artifacts are searched too
    for p in files:
        if p not in allowed:
            haystacks[str(p)] = p.read_bytes()
    hits = [(secret, where) for secret in secret_list for where, data in haystacks.items()
            if secret.encode() in data]
    assert not hits, f"secrets found outside the 0600 job files: {hits[:10]}"
    for p in sorted(allowed):  # the job files hold them raw, for the job alone
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert s["hf"] in (isolated_awm_home / "runs" / "sec" / "setup.sh").read_text()

    # nothing under AWM_HOME is readable by others (the code snapshot is a copy of the source tree)
    readable = [str(p) for p in isolated_awm_home.rglob("*") if p.is_file() and not p.is_symlink()
                and "code" not in p.relative_to(isolated_awm_home).parts[:1]
                and stat.S_IMODE(p.stat().st_mode) & 0o007]
    assert not readable, f"world-accessible files under AWM_HOME: {readable[:10]}"
