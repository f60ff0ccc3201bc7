"""Training-prompt generator: upstream grammar, Flow-GRPO task mix, test-set de-duplication."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from benchmarks.geneval.prompts import (
    TRAIN_TASKS,
    UNSEEN_OBJECT_CLASSES,
    build_task_pool,
    distribute_samples,
    generate_train_prompts,
    load_prompt_set,
    main,
    make_plural,
    object_names,
    semantic_key,
    validate_metadata,
    with_article,
)


def test_naive_plurals_and_articles():
    assert make_plural("toothbrush") == "toothbrushs"
    assert make_plural("skis") == "skises"
    assert make_plural("wine glass") == "wine glasses"
    assert with_article("orange") == "an orange"
    assert with_article("umbrella") == "an umbrella"
    assert with_article("skis") == "a skis"
    assert with_article("scissors") == "a scissors"
    assert with_article("hot dog") == "a hot dog"


def test_distribute_samples_flowgrpo_mix():
    # merge_genevaltask.py: 50,000 samples, [0.7, 0.3, 0.1, 0.5, 0.1] normalised, largest remainder
    counts = distribute_samples([0.7, 0.3, 0.1, 0.5, 0.1], 50_000)
    assert counts == [20588, 8824, 2941, 14706, 2941]
    assert sum(distribute_samples([0.7, 0.3, 0.1, 0.5, 0.1], 17)) == 17
    with pytest.raises(ValueError):
        distribute_samples([0, 0], 5)


def test_semantic_key_catches_reordered_and_mirrored_prompts():
    a = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}
    b = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert semantic_key(a) == semantic_key(b)
    left = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    }
    right = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
    }
    above = {
        "tag": "position",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}],
    }
    assert semantic_key(left) == semantic_key(right)
    assert semantic_key(left) != semantic_key(above)
    ca = {
        "tag": "color_attr",
        "include": [
            {"class": "dog", "count": 1, "color": "red"},
            {"class": "cat", "count": 1, "color": "blue"},
        ],
    }
    cb = {
        "tag": "color_attr",
        "include": [
            {"class": "cat", "count": 1, "color": "blue"},
            {"class": "dog", "count": 1, "color": "red"},
        ],
    }
    cc = {
        "tag": "color_attr",
        "include": [
            {"class": "cat", "count": 1, "color": "red"},
            {"class": "dog", "count": 1, "color": "blue"},
        ],
    }
    assert semantic_key(ca) == semantic_key(cb) != semantic_key(cc)


@pytest.fixture(scope="module")
def train3000():
    return generate_train_prompts(3000, seed=7)


def test_train_prompts_mix_validity_and_determinism(train3000, tmp_path):
    recs = train3000
    assert len(recs) == 3000
    expected = dict(zip(TRAIN_TASKS, distribute_samples([0.7, 0.3, 0.1, 0.5, 0.1], 3000)))
    assert Counter(r["tag"] for r in recs) == expected
    assert all(validate_metadata(r) is None for r in recs)
    # grammar: colour prompts never use "person"; counting 2..4 with exclude at N+1
    assert not any(
        c["class"] == "person" for r in recs if r["tag"] in ("colors", "color_attr") for c in r["include"]
    )
    for r in recs:
        if r["tag"] == "counting":
            n = r["include"][0]["count"]
            assert 2 <= n <= 4 and r["exclude"] == [{"class": r["include"][0]["class"], "count": n + 1}]
    # seeded, written atomically as jsonl
    out = tmp_path / "sub" / "train.jsonl"
    again = generate_train_prompts(3000, seed=7, out_path=out)
    assert again == recs
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == recs
    assert generate_train_prompts(3000, seed=8) != recs


def test_train_prompts_exclude_test_sets_including_swaps(train3000):
    test_keys = {semantic_key(r) for name in ("test", "unseen_objects") for r in load_prompt_set(name)}
    test_prompts = {r["prompt"] for name in ("test", "unseen_objects") for r in load_prompt_set(name)}
    assert not any(r["prompt"] in test_prompts for r in train3000)
    assert not any(semantic_key(r) in test_keys for r in train3000)
    # the swapped form of a test two-object prompt is reachable by the grammar but never emitted
    swapped = {
        f"a photo of {r['prompt'].split(' and ')[1]} and {r['prompt'].removeprefix('a photo of ').split(' and ')[0]}"
        for r in load_prompt_set("official")
        if r["tag"] == "two_object"
    }
    assert not swapped & {r["prompt"] for r in train3000}


def test_pool_dedup_and_exhaustion():
    rng = np.random.default_rng(0)
    names = list(object_names())
    pool = build_task_pool(
        "counting", rng, classnames=names, exclude_keys=set(), max_pool=10_000, max_draws=100_000
    )
    assert len(pool) == 80 * 3  # every (class, N) exactly once, then the stall rule stops drawing
    assert len({r["prompt"] for r in pool}) == 240
    with pytest.raises(ValueError, match="unknown GenEval training task"):
        build_task_pool("single", rng, classnames=names, exclude_keys=set(), max_pool=1, max_draws=1)


def test_small_pools_are_fully_used_then_resampled():
    recs = generate_train_prompts(2000, seed=1, tasks=("counting",), weights=(1.0,))
    distinct = {r["prompt"] for r in recs}
    # 240 counting prompts minus the test / unseen ones, each used at least once
    test_keys = {semantic_key(r) for name in ("test", "unseen_objects") for r in load_prompt_set(name)}
    possible = 240 - len({k for k in test_keys if k[0] == "counting"})
    assert len(distinct) == possible and len(recs) == 2000


def test_holdout_classes_and_errors(tmp_path):
    recs = generate_train_prompts(300, seed=0, holdout_classes=UNSEEN_OBJECT_CLASSES)
    assert not {c["class"] for r in recs for c in r["include"]} & set(UNSEEN_OBJECT_CLASSES)
    with pytest.raises(ValueError, match="unknown holdout"):
        generate_train_prompts(10, holdout_classes=["unicorn"])
    with pytest.raises(ValueError, match="weights"):
        generate_train_prompts(10, tasks=("position",), weights=(1.0, 2.0))
    assert main([str(tmp_path / "t.jsonl"), "--n", "50", "--seed", "3"]) == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 50
