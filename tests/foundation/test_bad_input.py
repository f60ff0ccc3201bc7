"""Bad input gets ONE clear line, a non-zero exit code, and loses nothing (issue 9, section 4).

Table-driven: each row is (command args, how to set up its input, expected exit code, words the
message must contain). Every row runs the installed `awm` console script as a subprocess with an
isolated AWM_HOME under tmp_path, and asserts: the exit code, the words, no Python traceback, and
that nothing under tmp_path (AWM_HOME, run dirs, inputs) changed. A new command joins by adding
a row. Exit code 2 = bad input (README, "Exit codes").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

AWM = str(Path(sys.executable).parent / "awm")
VALID = {"name": "bad-input", "pretrained": {"model": "/nonexistent/model"},
         "reward_fn": {"jpeg_compressibility": 1.0}, "mixed_precision": "no",
         "sample": {"num_image_per_prompt": 2, "prompts_per_epoch": 2}, "train": {"batch_size": 2}}


@dataclass
class Case:
    id: str
    args: list[str]  # "{cfg}", "{tmp}", "{file}", "{dir}" are filled in
    words: list[str]
    code: int = 2
    config: dict | None = None  # written to {cfg} (VALID merged with this; None = VALID)
    setup: Callable[[Path, Path], dict[str, str]] | None = None  # (tmp, home) -> extra env
    needs_cpu_only: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _home_is_file(tmp: Path, home: Path) -> dict[str, str]:
    return {"AWM_HOME": str(tmp / "file")}


def _partial_images(tmp: Path, home: Path) -> dict[str, str]:
    (tmp / "prompts.txt").write_text("first prompt\nsecond prompt\nthird prompt\n")
    imgs = tmp / "imgs"
    imgs.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(imgs / "00001_00.png")
    return {}


def _eval_store(tmp: Path, home: Path) -> dict[str, str]:
    """A platform store holding run r1 (no checkpoint yet): `awm eval run` resolves targets in it."""
    from awm_platform.store import Store

    with Store.default() as store:
        store.create_run(name="r1", config_hash="h", resolved_config={}, output_dir=tmp / "r1")
    return {}


CASES = [
    Case("validate-not-utf8", ["config", "validate", "{tmp}/binary.yaml"], ["binary.yaml", "not UTF-8"]),
    Case("validate-directory", ["config", "validate", "{dir}"], ["is a directory"]),
    Case("validate-empty", ["config", "validate", "{tmp}/empty.yaml"],
         ["missing required key 'pretrained.model'", "missing required key 'reward_fn'"]),
    Case("validate-nan", ["config", "validate", "{cfg}"], ["'train.learning_rate' must be a finite number"],
         config={"train": {"batch_size": 2, "learning_rate": float("nan")}}),
    Case("validate-work-ceiling", ["config", "validate", "{cfg}", "--set", "sample.prompts_per_epoch=100000000000"],
         ["images per epoch exceeds sample.max_images_per_epoch"]),
    Case("validate-unknown-top-key", ["config", "validate", "{cfg}", "--set", "nmae=x"],
         ["unknown key 'nmae'", "did you mean 'name'"]),
    Case("validate-bad-tag", ["config", "validate", "{cfg}"],
         ["'tags'", "tag 'two words' must be 1-64 characters of A-Z a-z 0-9 _ . : -"],
         config={"tags": ["baseline", "two words"]}),
    Case("submit-directory", ["submit", "{dir}", "--cluster", "local"], ["is a directory"]),
    Case("submit-local-two-nodes", ["submit", "{cfg}", "--cluster", "local", "--set", "launcher.nodes=2"],
         ["launcher.nodes=2", "one machine"]),
    Case("dry-run-local-two-nodes", ["submit", "{cfg}", "--cluster", "local", "--dry-run",
                                     "--set", "launcher.nodes=2"], ["launcher.nodes=2"]),
    Case("submit-unreachable-store", ["submit", "{cfg}", "--cluster", "local",
                                      "--set", "storage.url=postgresql+psycopg://u:S3cr3t@127.0.0.1:1/db"],
         ["cannot open the platform store", "127.0.0.1:1", "storage.url"]),
    Case("submit-home-is-file", ["submit", "{cfg}", "--cluster", "local"], ["AWM_HOME=", "is not a directory"],
         setup=_home_is_file),
    Case("status-home-is-file", ["status"], ["AWM_HOME=", "is not a directory"], setup=_home_is_file),
    Case("db-upgrade-home-is-file", ["db", "upgrade"], ["AWM_HOME=", "is not a directory"], setup=_home_is_file),
    Case("train-run-dir-is-file", ["train", "{cfg}", "--run-dir", "{file}"], ["--run-dir", "is a file"]),
    Case("train-fp16-on-cpu", ["train", "{cfg}", "--set", "mixed_precision=fp16"],
         ["mixed_precision=fp16 needs a GPU", "mixed_precision: no"], needs_cpu_only=True),
    Case("train-missing-model", ["train", "{cfg}"], ["pretrained.model='/nonexistent/model'"]),
    Case("bench-out-is-file", ["bench", "score", "ocr", "--images", "{dir}", "--prompts", "{file}", "--out", "{file}"],
         ["--out", "is a file"]),
    Case("bench-partial-images", ["bench", "score", "ocr", "--images", "{tmp}/imgs", "--prompts", "{tmp}/prompts.txt",
                                  "--out", "{tmp}/scores"],
         ["images for only 1 of 3 prompts", "prompt index 0, 2", "--allow-partial"], setup=_partial_images),
    Case("eval-unknown-benchmark", ["eval", "run", "base:m", "--benchmarks", "ocr,nosuch"],
         ["--benchmarks: unknown benchmark 'nosuch'", "known: geneval, ocr, pickscore"]),
    Case("eval-unknown-run", ["eval", "run", "nosuch", "--benchmarks", "ocr"],
         ["'nosuch': no run of that name", "RUN@STEP"], setup=_eval_store),
    Case("eval-step-not-a-number", ["eval", "run", "r1@notanumber", "--benchmarks", "ocr"],
         ["r1@notanumber: STEP must be an integer or 'all'"], setup=_eval_store),
    Case("eval-not-a-checkpoint-dir", ["eval", "run", "{dir}", "--benchmarks", "ocr"],
         ["is not a checkpoint directory (no manifest.json"], setup=_eval_store),
    Case("eval-zero-shards", ["eval", "run", "base:m", "--benchmarks", "ocr", "--shards", "0"],
         ["--shards must be >= 1"]),
    Case("eval-missing-weights", ["eval", "run", "base:m", "--benchmarks", "pickscore",
                                  "--set", "eval.service.weights_dirs.pickscore.model_path={tmp}/no-weights",
                                  "--set", "eval.service.weights_dirs.pickscore.processor_path={tmp}/no-weights"],
         ["pickscore: model weights missing", "no-weights", "eval.service.weights_dirs.pickscore.model_path=",
          "docs/evals.md"]),
    Case("eval-schedule-once-and-interval", ["eval", "schedule", "--once", "--interval", "60", "--benchmarks", "ocr"],
         ["--once and --interval exclude each other"]),
    Case("eval-list-unknown-status", ["eval", "list", "--status", "DONE"],
         ["--status 'DONE': expected one of PENDING, RUNNING, COMPLETED, FAILED, CANCELLED"]),
    Case("ui-port-out-of-range", ["ui", "--port", "70000"], ["--port 70000: expected a TCP port between 1 and 65535"]),
    Case("ui-unknown-host", ["ui", "--host", "no-such-host.invalid"], ["--host 'no-such-host.invalid'"]),
    Case("ui-image-root-not-a-folder", ["ui", "--image-root", "{file}"], ["--image-root", "not a folder"]),
    Case("ui-port-zero", ["ui", "--port", "0"], ["--port 0"]),
    Case("ui-store-missing", ["ui", "--db", "sqlite:///{tmp}/none.db"], ["no platform store at", "none.db"]),
    Case("ui-store-unreachable", ["ui", "--db", "postgresql+psycopg://awm:S3cr3t@127.0.0.1:1/awm"],
         ["cannot open the platform store postgresql+psycopg://awm:***@127.0.0.1:1/awm"]),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


def run_awm(args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), AWM, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def assert_one_clear_line(out: subprocess.CompletedProcess[str], code: int, words: list[str]) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == code, text
    assert "Traceback" not in text, text
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr
    for w in words:
        assert w in errors[0] or w in out.stderr, f"{w!r} not in: {out.stderr}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_writes_nothing(case: Case, tmp_path: Path, isolated_awm_home: Path) -> None:
    if case.needs_cpu_only:
        import torch

        if torch.cuda.is_available():
            pytest.skip("the row is about a machine without a GPU")
    data = {**VALID, **(case.config or {})}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "binary.yaml").write_bytes(b"name: \xff\xfe\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "file").write_text("a file\n")
    (tmp_path / "dir").mkdir()
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), **case.env}
    if case.setup is not None:
        env.update(case.setup(tmp_path, isolated_awm_home))
    fill = {"cfg": str(tmp_path / "cfg.yaml"), "tmp": str(tmp_path), "file": str(tmp_path / "file"),
            "dir": str(tmp_path / "dir")}
    args = [a.format(**fill) for a in case.args]
    before = snapshot(tmp_path)
    out = run_awm(args, env)
    assert_one_clear_line(out, case.code, case.words)
    assert "S3cr3t" not in out.stdout + out.stderr
    assert snapshot(tmp_path) == before, "a rejected command wrote something"


# ------------------------------------------------------------------ read-only home ----
def _read_only(home: Path) -> list[str]:
    """A command prefix that runs `awm` with `home` read-only: as root permissions do not stop
    writes, so a private mount namespace with a read-only bind mount of the home does."""
    if os.geteuid() != 0:
        home.chmod(0o555)
        return []
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without `unshare -m`: cannot make a read-only home")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && shift && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(home), "_"]


def test_read_only_home_status_reads_and_submit_says_so(tmp_path: Path, isolated_awm_home: Path) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        store.create_run(name="ro-run", config_hash="h", resolved_config={}, output_dir=tmp_path / "r",
                         status="COMPLETED")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(VALID))
    prefix = _read_only(isolated_awm_home)
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home)}
    before = snapshot(tmp_path)

    out = run_awm(["status", "--json"], env, prefix)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert [r["run"] for r in yaml.safe_load(out.stdout)] == ["ro-run"]
    assert "read-only" in out.stderr

    out = run_awm(["submit", str(tmp_path / "cfg.yaml"), "--cluster", "local"], env, prefix)
    assert_one_clear_line(out, 2, ["AWM_HOME=", "is read-only"])
    assert snapshot(tmp_path) == before


def test_status_on_an_empty_home_creates_nothing(isolated_awm_home: Path) -> None:
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home / "not-yet")}
    out = run_awm(["status", "--json"], env)
    assert out.returncode == 0 and yaml.safe_load(out.stdout) == []
    assert not (isolated_awm_home / "not-yet").exists()
    out = run_awm(["status", "some-run"], env)
    assert_one_clear_line(out, 2, ["no run named 'some-run'"])
    assert not (isolated_awm_home / "not-yet").exists()


# ---------------------------------------------------------- the loser of a name race ----
def test_the_loser_of_a_same_name_race_is_told_and_touches_nothing(tmp_path: Path, isolated_awm_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two submits of one name: the winner registered the run between the loser's existence checks
    and its insert. The store's unique name decides; the loser says so and writes nothing."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.api import SubmitError, submit_run
    from awm_platform.store import Store

    cfg = config_from_dict(VALID)
    with Store.default() as store:
        store.create_run(name=cfg.name, config_hash="winner", resolved_config={}, output_dir=tmp_path / "w",
                         status="PENDING")
        monkeypatch.setattr(Store, "find_run", lambda self, name: None)  # the loser checked before the winner
        before = snapshot(tmp_path)
        with pytest.raises(SubmitError, match=f"a run named '{cfg.name}' already exists"):
            submit_run(cfg, cluster="local", store=store)
        monkeypatch.undo()
        assert store.get_run(cfg.name).config_hash == "winner" and store.get_run(cfg.name).status == "PENDING"
    after = snapshot(tmp_path)
    assert {k for k in after if k.startswith("awm_home/runs")} == {k for k in before if k.startswith("awm_home/runs")}


# --------------------------------------------------------------- sbatch rejections ----
@pytest.mark.slurm
def test_sbatch_rejection_is_one_line_with_the_key_and_frees_the_name(tmp_path: Path, isolated_awm_home: Path,
                                                                      slurm_cluster) -> None:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(VALID))
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "AWM_SLURM_NO_GPUS": "1"}
    out = run_awm(["submit", str(tmp_path / "cfg.yaml"), "--cluster", "slurm",
                   "--set", "launcher.partition=no-such-partition"], env)
    assert_one_clear_line(out, 2, ["sbatch rejected the job", "partition", "(change launcher.partition)"])
    status = run_awm(["status", "--json"], env)
    assert yaml.safe_load(status.stdout) == []  # no FAILED row ...
    assert not (isolated_awm_home / "runs" / VALID["name"]).exists()  # ... and no run dir blocks the name


@pytest.mark.slurm
def test_sbatch_rejection_of_a_gres_request_names_the_gpu_key(tmp_path: Path, isolated_awm_home: Path,
                                                              slurm_cluster) -> None:
    """A generic resource the test node does not have (too many GPUs only waits in the queue on
    this cluster): sbatch refuses the job with its gres message."""
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**VALID, "launcher": {"extra_sbatch": ["--gres=fpga:1"]}}))
    env = {**os.environ, "AWM_HOME": str(isolated_awm_home), "AWM_SLURM_NO_GPUS": "1"}
    out = run_awm(["submit", str(tmp_path / "cfg.yaml"), "--cluster", "slurm"], env)
    assert_one_clear_line(out, 2, ["sbatch rejected the job", "gres", "launcher.gpus_per_node"])
    assert not (isolated_awm_home / "runs" / VALID["name"]).exists()


def test_scheduler_rejection_names_the_key_for_each_kind_of_sbatch_error() -> None:
    from awm_platform.runner.backends import backend_for
    from awm_platform.runner.backends.submitit_compat import FailedJobError

    rejection = backend_for("slurm").rejection

    cases = {
        "sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification":
            "launcher.gpus_per_node",
        "sbatch: error: invalid partition specified: gpu-big": "launcher.partition",
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified":
            "launcher.account",
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)":
            "launcher.time_min",
    }
    for stderr, key in cases.items():
        line = rejection(FailedJobError(stderr))
        assert line is not None and "\n" not in line
        assert line.startswith("sbatch rejected the job: ") and stderr.split("error: ", 1)[1] in line
        assert f"(change {key}" in line, line
    assert rejection(RuntimeError("not sbatch")) is None
