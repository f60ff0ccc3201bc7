"""The suite's pytest-xdist scheduling (tests/conftest.py, run by scripts/test.sh with `-n N --dist loadgroup`):
it subclasses xdist's LoadScopeScheduling (`_split_scope`), so this checks it on a real xdist run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODULE = '''
import os, pathlib, pytest
{mark}
@pytest.mark.parametrize("i", range(4))
def test_record(i):
    with open(pathlib.Path(__file__).with_suffix(".log"), "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
'''


def test_a_group_and_each_module_run_whole_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    xdist_group(name): one worker\n")
    (tmp_path / "test_grouped_a.py").write_text(MODULE.format(mark='pytestmark = pytest.mark.xdist_group("g")'))
    (tmp_path / "test_grouped_b.py").write_text(MODULE.format(mark='pytestmark = pytest.mark.xdist_group("g")'))
    for name in ("test_plain_c.py", "test_plain_d.py", "test_plain_e.py"):
        (tmp_path / name).write_text(MODULE.format(mark=""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-n", "2",
         "--dist", "loadgroup", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers = {p.stem: p.read_text().split() for p in tmp_path.glob("*.log")}
    assert sorted(workers) == ["test_grouped_a", "test_grouped_b", "test_plain_c", "test_plain_d", "test_plain_e"]
    assert all(len(w) == 4 and len(set(w)) == 1 for w in workers.values()), workers  # a module: one worker
    assert workers["test_grouped_a"][0] == workers["test_grouped_b"][0]  # the group: one worker
    used: dict[str, int] = defaultdict(int)
    for w in workers.values():
        used[w[0]] += 1
    assert len(used) == 2, workers  # both workers got work
