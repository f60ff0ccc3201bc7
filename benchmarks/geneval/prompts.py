"""GenEval prompt sets: the shipped official files and a training-prompt generator.

The grammar below is a re-implementation of GenEval's ``prompts/create_prompts.py``
(djghosh13/geneval, MIT): naive plurals ("toothbrushs", "skises"), a naive vowel rule for
"a"/"an" applied to the following word ("an orange", "a scissors"), no colour prompts for
"person", position prompts "A <rel> B" with A = ``include[1]`` (carrying ``position``) and
B = ``include[0]``, counting 2..4 with an ``exclude`` clause at N+1. The random draws are made
in the same order and with the same numpy ``Generator`` calls as upstream, so
``generate_suite(seed=43)`` reproduces the official 553 records byte for byte (a test checks
this); that is the evidence that the grammar is the upstream one.

Training prompts (``generate_train_prompts``) follow Flow-GRPO's ``dataset/merge_genevaltask.py``
recipe: per-task pools from the grammar, tasks [position, color_attr, colors, counting,
two_object] with weights [0.7, 0.3, 0.1, 0.5, 0.1] (normalised; largest-remainder rounding),
``random.sample`` when a pool is large enough; when it is not, every pool record once plus
``random.choices`` (with replacement) for the rest (upstream: ``random.choices`` only), then
one shuffle. Unlike upstream, every pool is de-duplicated against the test set
*semantically* (see :func:`semantic_key`): exact prompt matches, order-swapped two-object and
colour-attribute prompts, and mirrored position prompts ("A left of B" == "B right of A") are
all removed. No single_object prompts (weight 0, as upstream).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.files import atomic_write

DATA_DIR = Path(__file__).resolve().parent / "data"

#: file name -> sha256 of the byte-for-byte copies shipped in ``data/`` (see data/README.md).
DATA_SHA256: dict[str, str] = {
    "evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
    "generation_prompts.txt": "55b6e3650e980c13daf30569eb666e000faf19bfc2b7b4cbe999fcdb7aa9d680",
    "object_names.txt": "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
    "test_metadata.jsonl": "cec4b24b9fee7bac21c8f787054ecc8dc9ff831674037713a4cd35e0f0a74a28",
    "unseen_objects_test_metadata.jsonl": "174536b49af23b0e2abc4e3215fce5d375de13d6040a50642709240a76dc1a24",
}

COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
POSITIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBERS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

#: Flow-GRPO's ``dataset/merge_genevaltask.py`` task list and weights, in that order.
TRAIN_TASKS: tuple[str, ...] = ("position", "color_attr", "colors", "counting", "two_object")
TRAIN_WEIGHTS: tuple[float, ...] = (0.7, 0.3, 0.1, 0.5, 0.1)

#: Named prompt sets -> shipped metadata file.
PROMPT_SETS: dict[str, str] = {
    # Flow-GRPO / AWM eval set: the 553 official records x 4, shuffled (2212 lines).
    "test": "test_metadata.jsonl",
    # The official GenEval set: 553 records, one line each (generate 4 images per line).
    "official": "evaluation_metadata.jsonl",
    # Flow-GRPO's unseen-objects eval set: 256 x 4 records over 20 held-out classes.
    "unseen_objects": "unseen_objects_test_metadata.jsonl",
}


@lru_cache(maxsize=1)
def object_names() -> tuple[str, ...]:
    """The 80 COCO thing classes in detector label order (``data/object_names.txt``)."""
    names = tuple(line.strip() for line in (DATA_DIR / "object_names.txt").read_text().splitlines())
    return tuple(n for n in names if n)


def read_metadata(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a GenEval metadata jsonl; raises ValueError naming file and line on bad input."""
    path = Path(path)
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            problem = validate_metadata(record)
            if problem:
                raise ValueError(f"{path}:{lineno}: {problem}")
            out.append(record)
    return out


def validate_metadata(record: Any) -> str | None:
    """Return a human-readable problem with a metadata record, or None if it is well formed."""
    if not isinstance(record, dict):
        return "metadata must be a JSON object"
    tag = record.get("tag")
    if tag not in TAGS:
        return f"unknown tag {tag!r} (expected one of {', '.join(TAGS)})"
    include = record.get("include")
    if not isinstance(include, list) or not include:
        return "'include' must be a non-empty list of clauses"
    for key in ("include", "exclude"):
        for i, clause in enumerate(record.get(key, []) or []):
            if not isinstance(clause, dict) or "class" not in clause or "count" not in clause:
                return f"{key}[{i}] must be an object with 'class' and 'count'"
            if clause["class"] not in object_names():
                return f"{key}[{i}]: unknown class {clause['class']!r} (not in object_names.txt)"
            if not isinstance(clause["count"], int) or clause["count"] < 1:
                return f"{key}[{i}]: count must be a positive integer, got {clause['count']!r}"
            if "color" in clause and clause["color"] not in COLORS:
                return f"{key}[{i}]: unknown color {clause['color']!r}"
            if "position" in clause:
                pos = clause["position"]
                if (
                    not isinstance(pos, (list, tuple))
                    or len(pos) != 2
                    or pos[0] not in POSITIONS
                    or not isinstance(pos[1], int)
                    or not 0 <= pos[1] < i
                ):
                    return f"{key}[{i}]: position must be [relation, index of an earlier clause], got {pos!r}"
    return None


def load_prompt_set(name: str = "test") -> list[dict[str, Any]]:
    """Load a shipped prompt set by name (``test``, ``official``, ``unseen_objects``)."""
    try:
        fname = PROMPT_SETS[name]
    except KeyError:
        raise KeyError(f"unknown GenEval prompt set {name!r}; available: {', '.join(PROMPT_SETS)}") from None
    return read_metadata(DATA_DIR / fname)


# --------------------------------------------------------------------------------------------
# The upstream grammar (create_prompts.py). Each function consumes the rng exactly as upstream.
# --------------------------------------------------------------------------------------------


def with_article(name: str) -> str:
    # Upstream's naive rule: looks only at the first letter ("a skis", "an umbrella").
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    # Upstream's naive rule: "+es" after a trailing s, else "+s" ("glasses", "toothbrushs").
    return f"{name}es" if name[-1] in "s" else f"{name}s"


def _single_object_samples(rng: Any, classnames: Sequence[str], size: int) -> list[dict[str, Any]]:
    size = min(size, len(classnames))
    idxs = rng.choice(len(classnames), size=size, replace=False)
    return [
        {
            "tag": "single_object",
            "include": [{"class": classnames[idx], "count": 1}],
            "prompt": f"a photo of {with_article(classnames[idx])}",
        }
        for idx in idxs
    ]


def _two_object_sample(rng: Any, classnames: Sequence[str]) -> dict[str, Any]:
    idx_a, idx_b = rng.choice(len(classnames), size=2, replace=False)
    return {
        "tag": "two_object",
        "include": [{"class": classnames[idx_a], "count": 1}, {"class": classnames[idx_b], "count": 1}],
        "prompt": f"a photo of {with_article(classnames[idx_a])} and {with_article(classnames[idx_b])}",
    }


def _counting_sample(rng: Any, classnames: Sequence[str], max_count: int = 4) -> dict[str, Any]:
    idx = rng.choice(len(classnames))
    num = int(rng.integers(2, max_count, endpoint=True))
    return {
        "tag": "counting",
        "include": [{"class": classnames[idx], "count": num}],
        "exclude": [{"class": classnames[idx], "count": num + 1}],
        "prompt": f"a photo of {NUMBERS[num]} {make_plural(classnames[idx])}",
    }


def _person_skip(classnames: Sequence[str]) -> int:
    # Colour prompts never use "person": draw from the other n-1 classes by offsetting from it.
    return classnames.index("person") if "person" in classnames else -1


def _color_sample(rng: Any, classnames: Sequence[str]) -> dict[str, Any]:
    idx = rng.choice(len(classnames) - 1) + 1
    idx = (idx + _person_skip(classnames)) % len(classnames)
    color = COLORS[rng.choice(len(COLORS))]
    return {
        "tag": "colors",
        "include": [{"class": classnames[idx], "count": 1, "color": color}],
        "prompt": f"a photo of {with_article(color)} {classnames[idx]}",
    }


def _position_sample(rng: Any, classnames: Sequence[str]) -> dict[str, Any]:
    idx_a, idx_b = rng.choice(len(classnames), size=2, replace=False)
    position = POSITIONS[rng.choice(len(POSITIONS))]
    return {
        "tag": "position",
        "include": [
            {"class": classnames[idx_b], "count": 1},
            {"class": classnames[idx_a], "count": 1, "position": [position, 0]},
        ],
        "prompt": f"a photo of {with_article(classnames[idx_a])} {position} {with_article(classnames[idx_b])}",
    }


def _color_attr_sample(rng: Any, classnames: Sequence[str]) -> dict[str, Any]:
    idxs = rng.choice(len(classnames) - 1, size=2, replace=False) + 1
    idx_a, idx_b = (idxs + _person_skip(classnames)) % len(classnames)
    cidx_a, cidx_b = rng.choice(len(COLORS), size=2, replace=False)
    return {
        "tag": "color_attr",
        "include": [
            {"class": classnames[idx_a], "count": 1, "color": COLORS[cidx_a]},
            {"class": classnames[idx_b], "count": 1, "color": COLORS[cidx_b]},
        ],
        "prompt": (
            f"a photo of {with_article(COLORS[cidx_a])} {classnames[idx_a]} and "
            f"{with_article(COLORS[cidx_b])} {classnames[idx_b]}"
        ),
    }


_TASK_SAMPLERS = {
    "two_object": _two_object_sample,
    "counting": _counting_sample,
    "colors": _color_sample,
    "position": _position_sample,
    "color_attr": _color_attr_sample,
}


def _exact_key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def generate_suite(
    seed: int = 43, n: int = 100, classnames: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Upstream ``generate_suite``: all single objects, then n of each other task, de-duplicated.

    With the defaults this returns the official 553 records in file order.
    """
    classnames = list(classnames or object_names())
    rng = np.random.default_rng(seed)
    samples = _single_object_samples(rng, classnames, len(classnames))
    for task in ("two_object", "counting", "colors", "position", "color_attr"):
        for _ in range(n):
            samples.append(_TASK_SAMPLERS[task](rng, classnames))
    unique, seen = [], set()
    for s in samples:
        key = _exact_key(s)
        if key not in seen:
            unique.append(s)
            seen.add(key)
    return unique


_MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def semantic_key(record: dict[str, Any]) -> tuple:
    """A key under which prompts that say the same thing collide.

    - two_object / color_attr: the clauses as an unordered set ("A and B" == "B and A").
    - position: "A left of B" == "B right of A" (relation mirrored, roles swapped).
    - otherwise: the clauses as given.
    The tag is part of the key: "a photo of a dog and a cat" (two_object) and a position prompt
    about the same classes are different tasks.
    """
    tag = record["tag"]
    clauses = [
        (c["class"], int(c["count"]), c.get("color"), tuple(c["position"]) if "position" in c else None)
        for c in record["include"]
    ]
    if tag == "position" and len(clauses) == 2 and clauses[1][3] is not None:
        b, a = clauses[0][0], clauses[1][0]
        rel = clauses[1][3][0]
        if rel in ("right of", "below"):
            a, b, rel = b, a, _MIRROR[rel]
        return (tag, a, rel, b)
    if tag in ("two_object", "color_attr"):
        return (tag, tuple(sorted(clauses, key=repr)))
    return (tag, tuple(clauses))


def distribute_samples(weights: Sequence[float], total: int) -> list[int]:
    """Largest-remainder split of ``total`` by normalised ``weights`` (merge_genevaltask.py)."""
    s = float(sum(weights))
    if s <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    floats = [w / s * total for w in weights]
    ints = [int(f) for f in floats]
    remainder = total - sum(ints)
    # Stable sort like Python's sorted(): ties keep task order.
    order = sorted(range(len(weights)), key=lambda i: floats[i] - ints[i], reverse=True)
    for i in order[:remainder]:
        ints[i] += 1
    return ints


def build_task_pool(
    task: str,
    rng: Any,
    *,
    classnames: Sequence[str],
    exclude_keys: set[tuple],
    max_pool: int,
    max_draws: int,
    stall: int = 20_000,
) -> list[dict[str, Any]]:
    """Draw up to ``max_pool`` distinct records of one task, skipping ``exclude_keys``.

    Stops early after ``stall`` consecutive draws without a new record: the task's prompt
    space is then (all but surely) exhausted, e.g. counting has only 3 x n_classes prompts.
    """
    if task not in _TASK_SAMPLERS:
        raise ValueError(
            f"unknown GenEval training task {task!r}; expected one of {', '.join(_TASK_SAMPLERS)}"
        )
    sampler = _TASK_SAMPLERS[task]
    pool: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    since_new = 0
    for _ in range(max_draws):
        if len(pool) >= max_pool or since_new >= stall:
            break
        rec = sampler(rng, classnames)
        key = semantic_key(rec)
        if key in seen or key in exclude_keys:
            since_new += 1
            continue
        since_new = 0
        seen.add(key)
        pool.append(rec)
    return pool


def generate_train_prompts(
    n: int = 50_000,
    seed: int = 0,
    out_path: str | os.PathLike[str] | None = None,
    *,
    tasks: Sequence[str] = TRAIN_TASKS,
    weights: Sequence[float] = TRAIN_WEIGHTS,
    exclude_sets: Iterable[str] = ("test", "unseen_objects"),
    holdout_classes: Iterable[str] = (),
    pool_draws: int = 400_000,
) -> list[dict[str, Any]]:
    """Generate ``n`` GenEval-style training records (seeded), optionally writing jsonl.

    ``exclude_sets`` are shipped prompt sets whose prompts (and their order-swapped / mirrored
    variants) never appear in the output. ``holdout_classes`` removes classes from the grammar
    entirely (e.g. the 20 unseen-object classes for an OOD split). Deterministic for a given
    (n, seed, options) and independent of ``PYTHONHASHSEED``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(tasks) != len(weights):
        raise ValueError(f"{len(tasks)} tasks but {len(weights)} weights")
    holdout = set(holdout_classes)
    unknown = holdout - set(object_names())
    if unknown:
        raise ValueError(f"unknown holdout classes: {sorted(unknown)}")
    classnames = [c for c in object_names() if c not in holdout]
    exclude_keys: set[tuple] = set()
    for name in exclude_sets:
        exclude_keys.update(semantic_key(r) for r in load_prompt_set(name))

    counts = distribute_samples(weights, n)
    rng = np.random.default_rng(seed)
    py_rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for task, need in zip(tasks, counts):
        if need == 0:
            continue
        pool = build_task_pool(
            task,
            rng,
            classnames=classnames,
            exclude_keys=exclude_keys,
            max_pool=need,
            max_draws=max(pool_draws, need * 4),
        )
        if not pool:
            raise ValueError(f"no training prompts left for task {task!r} after de-duplication")
        if len(pool) >= need:
            out.extend(py_rng.sample(pool, need))
        else:
            # The pool is exhausted (counting has only 3 x n_classes prompts). Upstream then
            # uses random.choices (with replacement); we take every pool record once and fill
            # the rest with replacement: same task mix, no prompt of the pool left out.
            out.extend(pool)
            out.extend(py_rng.choices(pool, k=need - len(pool)))
    py_rng.shuffle(out)
    if out_path is not None:
        write_jsonl(out, out_path)
    return out


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Atomic jsonl write (temp file in the same folder, then rename)."""
    atomic_write(Path(path), "".join(json.dumps(r) + "\n" for r in records), mode=0o600)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.geneval.prompts OUT.jsonl --n 50000 --seed 0``"""
    p = argparse.ArgumentParser(description="Generate GenEval-grammar training prompts (Flow-GRPO task mix).")
    p.add_argument("out_path")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--holdout-unseen", action="store_true", help="drop the 20 unseen-object classes from the grammar"
    )
    args = p.parse_args(argv)
    holdout = UNSEEN_OBJECT_CLASSES if args.holdout_unseen else ()
    recs = generate_train_prompts(args.n, args.seed, args.out_path, holdout_classes=holdout)
    print(f"wrote {len(recs)} records to {args.out_path}")
    return 0


#: The 20 classes of Flow-GRPO's unseen-objects eval set.
UNSEEN_OBJECT_CLASSES: tuple[str, ...] = (
    "apple", "baseball bat", "bed", "book", "bowl", "car", "clock", "cup", "dog", "elephant",
    "fire hydrant", "frisbee", "microwave", "skateboard", "skis", "toilet", "toothbrush",
    "traffic light", "umbrella", "wine glass",
)  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
