"""The architecture's rules, checked on the source (AST) and on a real import:

* imports flow one way: `benchmarks` <- `trainers` <- `awm_platform`
  (benchmarks import neither trainers nor the platform; trainers never import the platform);
* no product module imports a test kit (`<package>.testing`, `tests`);
* imports sit at the top of modules; only CLI command modules (`platform/cli/`, `*cli.py`) defer
  them, so `awm --help` stays instant; anywhere else a deferred import says why on its line or
  the comment just above it (`# deferred: <reason>`), e.g. a pool worker pinning its threads
  before numpy loads;
* no cluster name is compared as a string outside the executor backends
  (`platform/runner/backends/`): the runner, sweeps and evaluations go through the interface.

Each rule is also run on a small synthetic tree that breaks it, so a checker that stopped
finding anything would fail here too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOTS = {"benchmarks": "benchmarks", "trainers": "trainers", "platform": "awm_platform"}
# layer -> the first-party packages it may import (besides itself)
ALLOWED = {"benchmarks": set(), "trainers": {"benchmarks"}, "awm_platform": {"benchmarks", "trainers"}}
FIRST_PARTY = ("benchmarks", "trainers", "awm_platform", "tests")
CLUSTER_NAMES = {"local", "debug", "slurm"}
BACKENDS = ("awm_platform", "runner", "backends")
# "slurm" there is the local SLURM *service* (scripts/services.sh), not an executor backend
SERVICE_MODULES = {"awm_platform.services"}


@dataclass(frozen=True)
class Module:
    name: str  # dotted import name
    path: Path
    tree: ast.Module

    @property
    def layer(self) -> str:
        return self.name.split(".")[0]

    @property
    def is_cli(self) -> bool:
        parts = self.name.split(".")
        return parts[:2] == ["awm_platform", "cli"] or parts[-1] == "cli" or parts[-1].endswith("_cli")

    @property
    def is_test_kit(self) -> bool:
        return self.name.split(".")[-1] == "testing"


def product_modules(repo_root: Path) -> list[Module]:
    modules = []
    for folder, package in PACKAGE_ROOTS.items():
        for path in sorted((repo_root / folder).rglob("*.py")):
            rel = path.relative_to(repo_root / folder).with_suffix("")
            if "__pycache__" in rel.parts or "migrations" in rel.parts:  # alembic's own scripts
                continue
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.append(Module(".".join(parts), path, ast.parse(path.read_text(), filename=str(path))))
    return modules


def _imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the module's package
        package = module.name.split(".")
        if module.path.name != "__init__.py":
            package = package[:-1]
        base = package[: len(package) - node.level + 1]
        return [".".join([*base, *([node.module] if node.module else [])])]
    return [node.module or ""]


def _function_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def layer_violations(modules: list[Module]) -> list[str]:
    out = []
    for m in modules:
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported_names(m, node):
                top = name.split(".")[0]
                if top not in FIRST_PARTY or top == m.layer:
                    continue
                if top == "tests" or top not in ALLOWED[m.layer]:
                    out.append(f"{m.path}:{node.lineno}: {m.name} ({m.layer}) imports {name}")
    return out


def kit_imports(modules: list[Module]) -> list[str]:
    out = []
    for m in modules:
        if m.is_test_kit:
            continue
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported_names(m, node):
                    if name.split(".")[-1] == "testing" and name.split(".")[0] in FIRST_PARTY:
                        out.append(f"{m.path}:{node.lineno}: product module {m.name} imports the test kit {name}")
    return out


DEFERRED_MARK = "# deferred:"


def _says_why(lines: list[str], lineno: int) -> bool:
    """`# deferred: <reason>` on the import's line or in the comment block right above it."""
    if DEFERRED_MARK in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if DEFERRED_MARK in lines[i]:
            return True
        i -= 1
    return False


def deferred_imports(modules: list[Module]) -> list[str]:
    out = []
    for m in modules:
        if m.is_cli:
            continue
        lines = m.path.read_text().splitlines()
        out += [f"{m.path}:{node.lineno}: {m.name} imports inside a function"
                for node in _function_level_imports(m.tree) if not _says_why(lines, node.lineno)]
    return out


def _is_cluster_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in CLUSTER_NAMES
    if isinstance(node, ast.Tuple | ast.List | ast.Set):  # ("slurm", "postgres") names services
        return bool(node.elts) and all(_is_cluster_name(e) for e in node.elts)
    return False


def cluster_name_comparisons(modules: list[Module]) -> list[str]:
    out = []
    for m in modules:
        if m.layer != "awm_platform" or tuple(m.name.split(".")[:3]) == BACKENDS or m.name in SERVICE_MODULES:
            continue
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Compare) and any(_is_cluster_name(x) for x in [node.left, *node.comparators]):
                out.append(f"{m.path}:{node.lineno}: {m.name} compares with a cluster name: {ast.unparse(node)}")
    return out


# ------------------------------------------------------------------ the real tree ----
@pytest.fixture(scope="module")
def modules(repo_root: Path) -> list[Module]:
    found = product_modules(repo_root)
    assert {m.layer for m in found} == set(ALLOWED) and len(found) > 50, "the product tree was not found"
    return found


def test_imports_flow_one_way(modules: list[Module]) -> None:
    assert layer_violations(modules) == []


def test_product_code_never_imports_a_test_kit(modules: list[Module]) -> None:
    assert kit_imports(modules) == []


def test_imports_sit_at_the_top_outside_cli_modules(modules: list[Module]) -> None:
    assert deferred_imports(modules) == []


def test_no_cluster_name_comparison_outside_the_backends(modules: list[Module]) -> None:
    assert cluster_name_comparisons(modules) == []


def test_importing_the_lower_layers_loads_no_higher_layer(repo_root: Path, modules: list[Module]) -> None:
    """What the AST cannot see (importlib, a dependency's import hook): import every module of
    benchmarks and trainers for real, in a fresh interpreter, and look at sys.modules."""
    for layer, forbidden in (("benchmarks", ("trainers", "awm_platform")), ("trainers", ("awm_platform",))):
        names = [m.name for m in modules if m.layer == layer and not m.is_cli and not m.is_test_kit
                 and m.path.name != "__main__.py"]
        code = textwrap.dedent(f"""
            import importlib, sys
            for name in {names!r}:
                importlib.import_module(name)
            print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
        """)
        out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip() == "", f"importing {layer} loaded {out.stdout.strip()}"


# ------------------------------------------------- the checker on a tree that breaks it ----
BROKEN_TREE = {
    "benchmarks/__init__.py": "",
    "benchmarks/metric.py": "from trainers.awm import loss\n",
    "benchmarks/kit/testing.py": "import trainers.awm.tiny\n",
    "trainers/__init__.py": "",
    "trainers/awm/__init__.py": "",
    "trainers/awm/recipe.py": "def train():\n    from awm_platform.config import ExperimentConfig\n",
    "trainers/awm/loss.py": "from . import recipe\nfrom benchmarks.kit.testing import x\n",
    "platform/runner/api.py": "def go(c):\n    return c.cluster == 'slurm' or c in ('local', 'debug')\n",
    "platform/runner/backends/slurm.py": "def f(c):\n    return c == 'slurm'\n",
    "platform/services.py": "def up(name):\n    return name == 'slurm' or name in ('slurm', 'postgres')\n",
    "platform/cli/main.py": "def main():\n    import torch\n",
    "benchmarks/pool.py": ("def init():\n    import cv2  # deferred: threads pinned first\n"
                           "def run():\n    # deferred: loads numpy,\n    # after the pinning\n    import numpy\n"
                           "def late():\n    x = 1  # deferred: not about the import below\n    import json\n"),
}


def test_the_checker_finds_what_breaks_each_rule(tmp_path: Path) -> None:
    for rel, text in BROKEN_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    broken = product_modules(tmp_path)

    layers = layer_violations(broken)
    assert any("benchmarks.metric (benchmarks) imports trainers.awm" in v for v in layers)
    assert any("trainers.awm.recipe (trainers) imports awm_platform.config" in v for v in layers)
    assert not any("imports trainers.awm.recipe" in v for v in layers)  # a relative import inside its layer
    assert [v.split(": ", 1)[1] for v in kit_imports(broken)] == [
        "product module trainers.awm.loss imports the test kit benchmarks.kit.testing"]
    # the CLI module may defer torch and the pool worker says why; not the trainer's import,
    # and an import whose reason is not next to it
    assert sorted(v.split(": ", 1)[1] for v in deferred_imports(broken)) == [
        "benchmarks.pool imports inside a function", "trainers.awm.recipe imports inside a function"]
    found = cluster_name_comparisons(broken)
    assert len(found) == 2 and all("awm_platform.runner.api" in v for v in found)
