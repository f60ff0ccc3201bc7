"""The `awm` command surface of issue 9 section 6: --version, --cluster choices in --help, one
JSON shape for `awm status --json` with and without a run name, and --json of rerun / sweep start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

AWM = str(Path(sys.executable).parent / "awm")


def awm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AWM, *args], capture_output=True, text=True, env={**os.environ, "AWM_HOME": str(home)},
                          timeout=120, check=False)


def test_version_flag_matches_the_version_command(isolated_awm_home: Path) -> None:
    flag, command = awm("--version", home=isolated_awm_home), awm("version", home=isolated_awm_home)
    assert flag.returncode == 0 and command.returncode == 0
    assert flag.stdout.strip() == command.stdout.strip() != ""
    assert "--version" in awm("--help", home=isolated_awm_home).stdout
    assert not isolated_awm_home.joinpath("awm.db").exists()


def test_cluster_is_a_choice_list_of_the_runner_clusters(isolated_awm_home: Path) -> None:
    from awm_platform.runner.backends import CLUSTERS
    from awm_platform.runner.cli import ClusterOpt

    literal = get_args(get_args(ClusterOpt)[0])[0]
    assert get_args(literal) == CLUSTERS
    for cmd in (["submit"], ["rerun"], ["sweep", "start"]):
        out = awm(*cmd, "--help", home=isolated_awm_home)
        assert out.returncode == 0 and "local|debug|slurm" in out.stdout, out.stdout
    bad = awm("submit", "x.yaml", "--cluster", "nowhere", home=isolated_awm_home)
    assert bad.returncode == 2 and "'nowhere' is not one" in bad.stderr


def test_status_json_is_a_list_with_and_without_a_run_name(tmp_path: Path, isolated_awm_home: Path) -> None:
    from awm_platform.store import Store

    with Store.default() as store:
        for name in ("a", "b"):
            store.create_run(name=name, config_hash="h", resolved_config={}, output_dir=tmp_path / name,
                             status="COMPLETED")
    every = awm("status", "--json", home=isolated_awm_home)
    one = awm("status", "b", "--json", home=isolated_awm_home)
    assert every.returncode == 0 and one.returncode == 0, every.stderr + one.stderr
    every_runs, one_run = json.loads(every.stdout), json.loads(one.stdout)
    assert isinstance(every_runs, list) and isinstance(one_run, list)
    assert [r["run"] for r in every_runs] == ["a", "b"] and one_run == [every_runs[1]]
