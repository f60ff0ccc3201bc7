"""The `awm` command line, run as users run it (a subprocess of the installed console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def awm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "awm_platform.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=os.environ.copy(), timeout=120, check=False)


def test_help_lists_the_command_groups() -> None:
    out = awm("--help")
    assert out.returncode == 0
    for group in ("config", "db", "services", "version"):
        assert group in out.stdout


def test_config_validate_ok_and_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: demo\npretrained: {model: m}\nreward_fn: {jpeg_compressibility: 1.0}\nsample:\n  num_image_per_prompt: 4\n  prompts_per_epoch: 2\ntrain:\n  batch_size: 2\n")
    ok = awm("config", "validate", str(good))
    assert ok.returncode == 0 and "ok:" in ok.stdout and "8 images per update" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\ntrain:\n  ghuber_powr: 0.5\n")
    res = awm("config", "validate", str(bad))
    assert res.returncode == 2
    assert f"{bad}:3" in res.stderr and "unknown key 'train.ghuber_powr'" in res.stderr
    assert "did you mean 'train.ghuber_power'" in res.stderr

    res = awm("config", "validate", str(good), "--set", "train.beta=-0.5")
    assert res.returncode == 2 and "'train.beta' must be >= 0.0" in res.stderr

    res = awm("config", "validate", str(good), "--world-size", "3")
    assert res.returncode == 2 and "not divisible by the world size 3" in res.stderr


def test_config_show_resolves_derives_and_redacts(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: demo\npretrained: {model: m}\nreward_fn: {pickscore: 1.0}\nstorage:\n  url: postgresql+psycopg://u:pw123@h/db\n"
                    "sample: {num_image_per_prompt: 24, prompts_per_epoch: 72}\n")
    out = awm("config", "show", str(path), "--world-size", "8", "--set", "train.beta=0.003")
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["train"]["beta"] == 0.003
    assert data["derived"]["sample_num_batches_per_epoch"] == 36
    assert data["derived"]["gradient_accumulation_steps"] == 72
    assert "pw123" not in out.stdout and len(data["config_hash"]) == 16
    as_json = json.loads(awm("config", "show", str(path), "--json").stdout)
    assert as_json["derived"]["world_size"] == 1


def test_db_upgrade_creates_the_store_under_awm_home(isolated_awm_home: Path) -> None:
    out = awm("db", "upgrade")
    assert out.returncode == 0, out.stderr
    assert (isolated_awm_home / "awm.db").exists()
    assert "schema revision 0005" in out.stdout
    cur = awm("db", "current")
    assert "current=0005 head=0005" in cur.stdout


def test_version() -> None:
    out = awm("version")
    assert out.returncode == 0 and out.stdout.strip()


@pytest.mark.slurm
@pytest.mark.postgres
def test_services_status_reports_both_and_hides_passwords(slurm_cluster, postgres_server) -> None:
    out = awm("services", "status")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("slurm: up") and "\npostgres: up" in out.stdout
    assert "PASSWORD" not in out.stdout and "postgresql+psycopg://" not in out.stdout
    bad = awm("services", "status", "redis")
    assert bad.returncode == 2 and "unknown service 'redis'" in bad.stderr


def test_eval_list_reads_the_store() -> None:
    from awm_platform.store import Store

    store = Store.default()
    store.create_run(name="r1", config_hash="h", resolved_config={}, output_dir="/r1")
    ckpt = store.add_checkpoint("r1", step=20, path="/r1/ckpt", sha256="0" * 64, formats=["diffusers"])
    ev, _ = store.ensure_evaluation(checkpoint_sha256=ckpt.sha256, benchmark="ocr", benchmark_version="ocr-1.0",
                                    spec_hash="s", spec={}, target="r1@20", num_shards=1, checkpoint_id=ckpt.id,
                                    run_name="r1", step=20)
    shard = store.claim_shard(ev.id, "test", lease_s=60)
    assert store.commit_shard(shard.id, "test", [{"prompt_index": 0, "sample_index": 0, "score": 0.81}])
    assert store.complete_evaluation(ev.id, score=0.81, ci_low=0.78, ci_high=0.84, sub_scores={}, num_samples=1018)
    store.close()
    out = awm("eval", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"id": ev.id, "target": "r1@20", "run": "r1", "step": 20, "benchmark": "ocr",
                                       "version": "ocr-1.0", "spec_hash": "s", "weights": None, "partial": False,
                                       "status": "COMPLETED", "score": 0.81, "ci_low": 0.78, "ci_high": 0.84,
                                       "n": 1018}]
    table = awm("eval", "list", "--run", "r1")
    assert table.returncode == 0 and "ocr-1.0" in table.stdout and "0.8100" in table.stdout
    missing = awm("eval", "list", "--run", "ghost")
    assert missing.returncode == 2 and "no run named 'ghost'" in missing.stderr


def test_every_command_group_has_help() -> None:
    for group in ("config", "db", "services", "model", "sweep", "bench", "eval", "ui"):
        out = awm(group, "--help")
        assert out.returncode == 0, (group, out.stderr)
    ui = awm("ui", "--help")
    assert "--port" in ui.stdout and "--db" in ui.stdout and "127.0.0.1" in ui.stdout
