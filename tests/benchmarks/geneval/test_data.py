"""Shipped GenEval data: byte-for-byte copies (sha256), record counts, and the upstream grammar
regenerating the official files exactly."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from benchmarks.base import sha256_file
from benchmarks.geneval.prompts import (
    DATA_DIR,
    DATA_SHA256,
    TAGS,
    generate_suite,
    load_prompt_set,
    object_names,
)


@pytest.mark.parametrize("fname", sorted(DATA_SHA256))
def test_sha256_matches_pin_and_readme(fname):
    digest = sha256_file(DATA_DIR / fname)
    assert digest == DATA_SHA256[fname]
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    rows = [ln for ln in readme.splitlines() if ln.startswith(f"| {fname} |")]
    assert len(rows) == 1 and re.findall(r"\b[0-9a-f]{64}\b", rows[0]) == [digest]


def test_no_unlisted_data_files():
    shipped = {p.name for p in DATA_DIR.iterdir() if p.is_file() and p.name != "README.md"}
    assert shipped == set(DATA_SHA256)


def test_official_set_shape():
    recs = load_prompt_set("official")
    assert len(recs) == 553
    assert Counter(r["tag"] for r in recs) == {
        "position": 100,
        "color_attr": 100,
        "two_object": 99,
        "colors": 94,
        "single_object": 80,
        "counting": 80,
    }
    prompts = (DATA_DIR / "generation_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert prompts == [r["prompt"] for r in recs]
    assert len(object_names()) == 80 and object_names()[0] == "person" and object_names()[-1] == "toothbrush"


def test_test_set_is_official_times_four():
    official = Counter(json.dumps(r, sort_keys=True) for r in load_prompt_set("official"))
    test = Counter(json.dumps(r, sort_keys=True) for r in load_prompt_set("test"))
    assert len(official) == 553 and set(official.values()) == {1}
    assert set(test) == set(official) and set(test.values()) == {4}
    counting = Counter(r["include"][0]["count"] for r in load_prompt_set("test") if r["tag"] == "counting")
    assert counting == {2: 104, 3: 112, 4: 104}


def test_unseen_objects_set():
    recs = load_prompt_set("unseen_objects")
    assert len(recs) == 1024
    classes = {c["class"] for r in recs for c in r["include"]}
    assert len(classes) == 20 and "apple" in classes and "person" not in classes
    assert {r["tag"] for r in recs} <= set(TAGS)


def test_grammar_regenerates_official_files_byte_for_byte():
    """create_prompts.py semantics (seed 43, n=100, de-dup): the same 553 records, same order."""
    suite = generate_suite(seed=43, n=100)
    text = "".join(json.dumps(r) + "\n" for r in suite)
    assert text.encode() == (DATA_DIR / "evaluation_metadata.jsonl").read_bytes()
    prompts = "".join(r["prompt"] + "\n" for r in suite)
    assert prompts.encode() == (DATA_DIR / "generation_prompts.txt").read_bytes()
    assert generate_suite(seed=44) != suite
