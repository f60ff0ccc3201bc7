"""Every shipped benchmark data file matches the sha256 in its provenance README (and the table here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.base import sha256_file

BENCH_ROOT = Path(__file__).resolve().parents[2] / "benchmarks"

# files this suite pins explicitly (upstream provenance: see each benchmarks/<name>/README.md)
EXPECTED = {
    # byte-for-byte copies of /work/shared/data (GenEval files: shipped by benchmarks/geneval)
    "geneval/data/evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
    "geneval/data/generation_prompts.txt": "55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680",
    "geneval/data/object_names.txt": "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
    "geneval/data/test_metadata.jsonl": "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28",
    "geneval/data/unseen_objects_test_metadata.jsonl": "174536b49af23b0e2abc4e3215fce5d375de13d6040a50642709240a76dc1a24",
    "ocr/data/test.txt": "4dd8caf3ab6ade73bd376c7d14c6ca49b6eacfb1bd321e22c40714ae4a98d4dc",
    "pickscore/data/test.txt": "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262",
    "pickscore/data/train.txt": "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f",
}

DATA_FILES = sorted(
    p for p in BENCH_ROOT.glob("*/data/*") if p.is_file() and not p.name.startswith(".") and p.name != "README.md"
)


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_pinned_sha256(rel):
    path = BENCH_ROOT / rel
    assert path.is_file(), f"{path} is missing"
    assert sha256_file(path) == EXPECTED[rel]


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(BENCH_ROOT)))
def test_every_data_file_in_provenance_table(path):
    """The benchmark's README (or data/README.md) lists the file with its current sha256 on one line."""
    bench_dir = path.parent.parent
    readmes = [r for r in (bench_dir / "README.md", path.parent / "README.md") if r.is_file()]
    assert readmes, f"{bench_dir} has no provenance README.md"
    digest = sha256_file(path)
    for readme in readmes:
        for line in readme.read_text(encoding="utf-8").splitlines():
            if path.name in line and re.search(r"\b[0-9a-f]{64}\b", line):
                hashes = re.findall(r"\b[0-9a-f]{64}\b", line)
                assert digest in hashes, f"{path}: sha256 {digest} != README {readme} entry {hashes}"
                return
    pytest.fail(f"{path.name} has no provenance row with a sha256 in {[str(r) for r in readmes]}")


def test_pickscore_counts_and_disjoint():
    test = (BENCH_ROOT / "pickscore/data/test.txt").read_text(encoding="utf-8").splitlines()
    train = (BENCH_ROOT / "pickscore/data/train.txt").read_text(encoding="utf-8").splitlines()
    assert len(test) == 2048 and len(set(test)) == 2048
    assert len(train) == 25432 and len(set(train)) == 25432
    assert not set(test) & set(train)


def test_ocr_prompt_set_shape():
    from benchmarks.ocr.scoring import extract_target
    from benchmarks.registry import get_benchmark

    ps = get_benchmark("ocr").prompt_sets()["test"]
    ps.verify()
    assert len(ps) == 1018
    assert not ps.path.read_bytes().endswith(b"\n")  # byte-for-byte: no trailing newline upstream
    assert all(p.count('"') == 2 for p in ps.prompts)
    assert all(extract_target(p).strip() for p in ps.prompts)
