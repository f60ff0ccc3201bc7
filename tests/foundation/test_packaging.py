"""Packaging invariants: `platform/` must never shadow the standard library, and the wheel
must ship every subpackage and data file."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

PACKAGE_ROOTS = {"platform": "awm_platform", "trainers": "trainers", "benchmarks": "benchmarks"}


def _declared_packages(repo_root: Path) -> set[str]:
    return set(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _source_packages(repo_root: Path) -> set[str]:
    found = set()
    for folder, name in PACKAGE_ROOTS.items():
        root = repo_root / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([name, *rel.parts]))
    return found


def test_platform_folder_has_no_init(repo_root: Path) -> None:
    assert not (repo_root / "platform" / "__init__.py").exists(), (
        "platform/__init__.py shadows the standard library's `platform` module")


def test_every_subpackage_is_declared(repo_root: Path) -> None:
    declared = _declared_packages(repo_root)
    missing = _source_packages(repo_root) - declared
    assert not missing, f"add to [tool.setuptools].packages in pyproject.toml: {sorted(missing)}"
    assert "awm_platform" in declared  # the namespace root itself, mapped by package-dir


def test_stdlib_platform_still_works_from_repo_root(repo_root: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=repo_root,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Linux"


def test_cli_start_up_imports_no_heavy_library(repo_root: Path) -> None:
    code = ("import sys, awm_platform.cli.main as m; "
            "heavy = [x for x in ('torch', 'diffusers', 'transformers', 'peft', 'mlflow', 'optuna', 'pandas', "
            "'sqlalchemy', 'streamlit', 'accelerate') if x in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`awm --help` imports heavy modules: {out.stdout.strip()}"


@pytest.mark.slow
def test_wheel_contains_all_packages_and_data(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(repo_root)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("awm_platform-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in _declared_packages(repo_root):
        assert f"{pkg.replace('.', '/')}/__init__.py" in names or pkg == "awm_platform", pkg
    assert "awm_platform/config.py" in names and "platform/__init__.py" not in names
    assert "awm_platform/store/migrations/env.py" in names
    assert "awm_platform/store/migrations/script.py.mako" in names
    for rev in ("0001", "0002", "0003", "0004", "0005"):
        assert any(n.startswith(f"awm_platform/store/migrations/versions/{rev}") for n in names), rev
    for bench in ("geneval", "ocr", "pickscore"):
        data = [n for n in names if n.startswith(f"benchmarks/{bench}/data/")]
        assert data, f"benchmark {bench} ships no data in the wheel"


#: declared dependencies that no module of ours imports by name, and why they are declared anyway
USED_INDIRECTLY = {
    "cmaes": "optuna's CmaEsSampler imports it (sweep.sampler.name: cmaes)",
    "pandas": "optuna's study.trials_dataframe() needs it (the sweep summary's trials.csv)",
}


def test_every_declared_dependency_is_imported(repo_root: Path) -> None:
    """A runtime dependency that nothing imports is dead weight (and install time) for every user."""
    import ast
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement

    deps = {Requirement(r).name.lower().replace("_", "-")
            for r in tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]}
    imported: set[str] = set()
    for folder in ("platform", "trainers", "benchmarks", "scripts", "perf"):
        for py in (repo_root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    by_module = packages_distributions()
    used = {d.lower().replace("_", "-") for m in imported for d in by_module.get(m, [])}
    unused = sorted(deps - used - set(USED_INDIRECTLY))
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
    assert "optuna-integration" not in deps


def test_rich_pin_admits_the_current_major(repo_root: Path) -> None:
    from packaging.requirements import Requirement

    rich = next(Requirement(r) for r in tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
                ["dependencies"] if Requirement(r).name == "rich")
    assert rich.specifier.contains("15.0.0") and rich.specifier.contains("14.3.4")
