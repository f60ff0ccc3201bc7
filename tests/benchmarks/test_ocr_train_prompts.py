"""The generated OCR training prompts: reproducible byte for byte, shaped like the test set, disjoint from it,
and found by the trainer's prompt loader for the shipped OCR config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.base import read_prompt_lines, sha256_file
from benchmarks.ocr import prompts as P
from benchmarks.ocr.scoring import extract_target, normalize

ROOT = Path(__file__).resolve().parents[2]
TRAIN = P.DATA_DIR / P.TRAIN_FILE
TEST = P.DATA_DIR / "test.txt"


@pytest.fixture(scope="module")
def train_prompts() -> list[str]:
    return read_prompt_lines(TRAIN)


def test_shipped_file_is_exactly_the_generator_output() -> None:
    text = P.generate_train_text()
    assert TRAIN.read_bytes() == text.encode("utf-8")
    assert sha256_file(TRAIN) == P.TRAIN_SHA256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert sha256_file(P.DATA_DIR / P.WORDS_FILE) == P.WORDS_SHA256
    readme = (ROOT / "benchmarks/ocr/README.md").read_text(encoding="utf-8")
    assert P.GENERATOR_VERSION in readme and P.TRAIN_SHA256 in readme and "not upstream's" in readme


def test_seed_decides_the_set() -> None:
    a = P.generate_train_prompts(40, seed=0)
    assert a == P.generate_train_prompts(40, seed=0)
    assert a == read_prompt_lines(TRAIN)[:40]  # a prefix of the shipped set: the draws are sequential
    b = P.generate_train_prompts(40, seed=1)
    assert len(set(a) & set(b)) < 5


def test_shape_matches_the_test_set_rules(train_prompts: list[str]) -> None:
    assert len(train_prompts) == P.TRAIN_N == len(set(train_prompts))
    assert all(p.count('"') == 2 for p in train_prompts)
    targets = [extract_target(p) for p in train_prompts]
    assert all(P.MIN_TARGET_CHARS <= len(t) <= P.MAX_TARGET_CHARS for t in targets)
    assert all(set(t) <= P.TARGET_ALPHABET and t == t.strip() and "  " not in t for t in targets)
    assert len({normalize(t) for t in targets}) == len(targets)  # no target twice
    counts = [len(t.split()) for t in targets]
    share = {k: counts.count(k) / len(counts) for k in range(1, 7)}
    # the test set: 1 word 4 %, 2: 24 %, 3: 44 %, 4: 23 %, 5: 5 %
    assert 0.38 < share[3] < 0.50 and 0.18 < share[2] < 0.30 and 0.17 < share[4] < 0.29 and share[1] < 0.08
    mean_len = sum(len(t) for t in targets) / len(targets)
    assert 14 < mean_len < 20  # test: 16.8


def test_disjoint_from_the_test_set(train_prompts: list[str]) -> None:
    test = read_prompt_lines(TEST)
    assert not set(test) & set(train_prompts)
    test_targets = {normalize(extract_target(p)) for p in test}
    assert test_targets == P.shipped_test_targets()
    assert not test_targets & {normalize(extract_target(p)) for p in train_prompts}


def test_excluded_targets_are_never_drawn() -> None:
    first = [normalize(extract_target(p)) for p in P.generate_train_prompts(30, seed=5, exclude_targets=set())]
    again = P.generate_train_prompts(30, seed=5, exclude_targets=set(first[:10]))
    assert not {normalize(extract_target(p)) for p in again} & set(first[:10])


def test_bad_word_list_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "words.tsv"
    bad.write_text("noun\tCoffee\nadjective\tHot\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"words.tsv: line 2: expected 'category<TAB>word'"):
        P.load_words(bad)


def test_benchmark_lists_and_verifies_the_train_set() -> None:
    from benchmarks.registry import get_benchmark

    ps = get_benchmark("ocr").prompt_sets()["train"]
    ps.verify()
    assert len(ps) == P.TRAIN_N


def test_ocr_config_validates_and_the_trainer_finds_both_splits() -> None:
    from awm_platform.config import load_config
    from trainers.awm.prompts import load_prompts

    config = ROOT / "configs/sd35m_ocr_8gpu.yaml"
    res = subprocess.run([sys.executable, "-m", "awm_platform.cli.main", "config", "validate", str(config)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "ok:" in res.stdout
    cfg = load_config(config)
    train = load_prompts(cfg.dataset, cfg.prompt_fn, "train")
    assert Path(train.source) == TRAIN and len(train) == P.TRAIN_N
    assert train.prompts[0] == read_prompt_lines(TRAIN)[0]
    test = load_prompts(cfg.dataset, cfg.prompt_fn, cfg.eval.split)
    assert Path(test.source) == TEST and len(test) == 1018
