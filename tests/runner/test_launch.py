"""The generated sbatch script + launch command (pinned by golden files) and the CLI dry-run.

Regenerate the goldens after an intended change with
    AWM_UPDATE_GOLDENS=1 .venv/bin/pytest tests/runner/test_launch.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GOLDEN = Path(__file__).parent / "golden"
FIXED_HOME = "/awm-home"  # goldens must not depend on the machine: fixed AWM_HOME
LAYOUTS = {"1x1": (1, 1), "1x8": (1, 8), "4x8": (4, 8)}


def _config(tmp_path: Path, nodes: int, gpus: int) -> Path:
    data = {
        "name": f"golden-{nodes}x{gpus}",
        "pretrained": {"model": "stabilityai/stable-diffusion-3.5-medium"},
        "reward_fn": {"pickscore": 1.0},
        "launcher": {
            "cluster": "slurm",
            "partition": "gpu",
            "account": "awm-lab",
            "qos": "normal",
            "nodes": nodes,
            "gpus_per_node": gpus,
            "cpus_per_task": 8,
            "mem_gb": 64,
            "time_min": 2880,
            "constraint": "h100",
            "signal_delay_s": 300,
            "extra_sbatch": ["--exclusive", "mail-type=END"],
            "setup": ["module load cuda/12.4", "source /opt/venv/bin/activate"],
        },
    }
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dry_run(cfg: Path, home: str) -> str:
    env = {**os.environ, "AWM_HOME": home}
    env.pop("AWM_SLURM_NO_GPUS", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "awm_platform.cli.main",
            "submit",
            str(cfg),
            "--cluster",
            "slurm",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.replace(sys.executable, "<PYTHON>")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sbatch_golden(layout: str, tmp_path: Path) -> None:
    nodes, gpus = LAYOUTS[layout]
    text = _dry_run(_config(tmp_path, nodes, gpus), FIXED_HOME)
    golden = GOLDEN / f"{layout}.sbatch"
    if os.environ.get("AWM_UPDATE_GOLDENS") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run with AWM_UPDATE_GOLDENS=1 once"
    assert text == golden.read_text(), f"dry-run output for {layout} changed (AWM_UPDATE_GOLDENS=1 to accept)"
    # nothing was written or submitted by a dry run
    assert not Path(FIXED_HOME, "runs").exists() or not any(Path(FIXED_HOME, "runs").glob("golden-*"))


def test_layout_semantics() -> None:
    """What the goldens must contain, stated independently of their exact text."""
    from awm_platform.config import config_from_dict
    from awm_platform.runner.backends.slurm import sbatch_script
    from awm_platform.runner.launch import launch_command

    for layout, (nodes, gpus) in LAYOUTS.items():
        cfg = config_from_dict(
            {
                "name": f"g{layout}",
                "launcher": {"nodes": nodes, "gpus_per_node": gpus, "cpus_per_task": 4, "signal_delay_s": 90},
            }
        )
        script = sbatch_script(cfg, Path("/h/runs") / cfg.name)
        cmd = launch_command(cfg, Path("/h/runs") / cfg.name)
        assert f"#SBATCH --nodes={nodes}" in script
        assert "#SBATCH --ntasks-per-node=1" in script  # one srun task (controller) per node
        assert f"#SBATCH --gpus-per-node={gpus}" in script
        assert f"#SBATCH --cpus-per-task={4 * gpus}" in script
        assert "#SBATCH --signal=USR2@90" in script
        assert f"--output=/h/runs/{cfg.name}/submitit/%j_0_log.out" in script
        assert cmd[-3:] == ["-m", "awm_platform.runner.worker", f"/h/runs/{cfg.name}"]
        if nodes * gpus == 1:
            assert "accelerate.commands.launch" not in cmd and "MASTER_ADDR" not in script
        else:
            assert (
                "scontrol show hostnames" in script
                and "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in script
            )
            assert cmd[cmd.index("--num_processes") + 1] == str(nodes * gpus)
            assert cmd[cmd.index("--num_machines") + 1] == str(nodes)
        if nodes > 1:
            assert cmd[cmd.index("--rdzv_backend") + 1] == "c10d"
            assert cmd[cmd.index("--machine_rank") + 1] == "$SLURM_NODEID"
            assert cmd[cmd.index("--main_process_ip") + 1] == "$MASTER_ADDR"
            resolved = launch_command(
                cfg, Path("/h"), env={"SLURM_NODEID": "2", "MASTER_ADDR": "node7", "MASTER_PORT": "21234"}
            )
            assert resolved[resolved.index("--machine_rank") + 1] == "2"
            assert resolved[resolved.index("--main_process_ip") + 1] == "node7"
            assert resolved[resolved.index("--main_process_port") + 1] == "21234"


def test_extra_sbatch_and_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from awm_platform.config import config_from_dict
    from awm_platform.runner.backends.slurm import slurm_parameters

    cfg = config_from_dict(
        {"launcher": {"extra_sbatch": ["--exclusive", "#SBATCH --mail-type=END", "nice 10"]}}
    )
    params = slurm_parameters(cfg, Path("/awm-home/runs/x"))
    assert params["additional_parameters"] == {"exclusive": True, "mail_type": "END", "nice": "10"}
    assert params["gpus_per_node"] == 1
    monkeypatch.setenv("AWM_SLURM_NO_GPUS", "1")
    assert "gpus_per_node" not in slurm_parameters(cfg, Path("/awm-home/runs/x"))


def test_dry_run_local_prints_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from awm_platform.cli.main import app

    res = CliRunner().invoke(app, ["submit", str(_config(tmp_path, 1, 1)), "--cluster", "local", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "awm_platform.runner.worker" in res.output and "#SBATCH" not in res.output


def test_submit_bad_cluster_and_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from awm_platform.cli.main import app

    cfg = _config(tmp_path, 1, 1)
    res = CliRunner().invoke(app, ["submit", str(cfg), "--cluster", "kubernetes", "--dry-run"])
    assert res.exit_code == 2 and "'kubernetes' is not one" in res.output  # --cluster is a choice list
    res = CliRunner().invoke(app, ["submit", str(cfg), "--set", "launcher.nodez=2", "--dry-run"])
    assert res.exit_code == 2 and "launcher.nodes" in res.output
