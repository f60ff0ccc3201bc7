"""Prompt sources and the trainer-owned, seeded group sampler (no DataLoader).

Sources (``dataset``, ``prompt_fn``, split):

* builtin names ``pickscore``, ``ocr``, ``geneval``: files under
  ``benchmarks/<name>/data/``; ``tiny``: ``trainers/awm/data/tiny_prompts.txt`` (both splits);
  anything else is a directory path.
* ``prompt_fn="general_ocr"``: ``<dir>/<split>.txt``, one prompt per line, metadata ``{}``;
  ``prompt_fn="geneval"``: ``<dir>/<split>_metadata.jsonl`` (metadata = the whole record).
* GenEval has no public train file: when ``train_metadata.jsonl`` is missing for the builtin
  ``geneval`` set, 50,000 records are generated with ``benchmarks.geneval.prompts`` (seed 0,
  Flow-GRPO's task mix) and cached under ``$AWM_HOME/cache/``.

Sampler (fixes upstream traps 9.9 / 9.20): epoch ``e`` draws ``m`` prompts from
``numpy.random.default_rng([seed, e, TAG])`` (without replacement while ``m <= n``), repeats each
``k`` times (complete groups), shuffles the ``m*k`` slots with the same RNG and deals contiguous
blocks of ``images_per_process`` slots to the processes in rank order. Every slot is identified
by ``(group g, member j)`` and its rollout generator is seeded from ``(seed, epoch, g, j)``, so
any rollout can be reproduced alone, and the plan does not depend on the world size.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUILTIN = ("pickscore", "ocr", "geneval", "tiny")
_TAG_PLAN = 0x41574D50  # "AWMP"
_TAG_ROLLOUT = 0x41574D52  # "AWMR"
_TAG_TRAIN = 0x41574D54  # "AWMT"
_TAG_EVAL = 0x41574D45  # "AWME"


class PromptError(ValueError):
    pass


@dataclass
class PromptList:
    prompts: list[str]
    metadata: list[dict]
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(p.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


def _data_dir(dataset: str) -> Path:
    if dataset == "tiny":
        return Path(__file__).resolve().parent / "data"
    if dataset in BUILTIN:
        import benchmarks

        d = Path(benchmarks.__file__).resolve().parent / dataset / "data"
        if not d.is_dir():
            raise PromptError(f"builtin dataset {dataset!r}: {d} does not exist")
        return d
    d = Path(dataset).expanduser()
    if not d.is_dir():
        raise PromptError(f"dataset {dataset!r} is neither a builtin set ({', '.join(BUILTIN)}) nor a directory")
    return d.resolve()


def _geneval_generated_train() -> Path:
    from awm_platform.paths import awm_home
    from benchmarks.geneval.prompts import generate_train_prompts

    out = awm_home() / "cache" / "geneval_train_metadata_n50000_seed0.jsonl"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("generating GenEval training prompts (50000, seed 0) into %s", out)
        generate_train_prompts(n=50_000, seed=0, out_path=out)
    return out


def load_prompts(dataset: str, prompt_fn: str, split: str) -> PromptList:
    from benchmarks.base import read_jsonl, read_prompt_lines

    d = _data_dir(dataset)
    if dataset == "tiny":
        path = d / "tiny_prompts.txt"
        prompts = [p for p in read_prompt_lines(path) if p.strip()]
        return PromptList(prompts, [{} for _ in prompts], f"{path}")
    if prompt_fn == "general_ocr":
        path = d / f"{split}.txt"
        if not path.is_file():
            raise PromptError(f"dataset {dataset!r}: no {split} split ({path} is missing); give a directory with "
                              f"{split}.txt (one prompt per line) as `dataset`")
        prompts = [p for p in read_prompt_lines(path)]
        return PromptList(prompts, [{} for _ in prompts], str(path))
    if prompt_fn == "geneval":
        path = d / f"{split}_metadata.jsonl"
        if not path.is_file():
            if dataset == "geneval" and split == "train":
                path = _geneval_generated_train()
            else:
                raise PromptError(f"dataset {dataset!r}: no {split} split ({path} is missing)")
        meta = read_jsonl(path)
        prompts = []
        for i, m in enumerate(meta):
            if not isinstance(m.get("prompt"), str):
                raise PromptError(f"{path}: line {i + 1}: missing string field 'prompt'")
            prompts.append(m["prompt"])
        return PromptList(prompts, meta, str(path))
    raise PromptError(f"unknown prompt_fn {prompt_fn!r}; expected 'general_ocr' or 'geneval'")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence hashing; independent of PYTHONHASHSEED)."""
    a, b = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2, np.uint32)
    return ((int(a) << 32) | int(b)) & 0x7FFF_FFFF_FFFF_FFFF


def rollout_seed(seed: int, epoch: int, group: int, member: int) -> int:
    return derive_seed(_TAG_ROLLOUT, seed, epoch, group, member)


def train_seed(seed: int, epoch: int, rank: int, micro_batch: int) -> int:
    return derive_seed(_TAG_TRAIN, seed, epoch, rank, micro_batch)


def eval_seed(seed: int, prompt_index: int) -> int:
    return derive_seed(_TAG_EVAL, seed, prompt_index)


@dataclass
class Slot:
    group: int  # group index within the epoch (0..m-1)
    member: int  # index within the group (0..k-1)
    prompt_index: int  # index into the prompt list


@dataclass
class EpochPlan:
    epoch: int
    prompt_ids: list[int]  # (m,) prompt index of each group
    slots: list[Slot]  # (m*k,) in dealing order

    def for_rank(self, rank: int, world_size: int) -> list[Slot]:
        per = len(self.slots) // world_size
        return self.slots[rank * per:(rank + 1) * per]


@dataclass
class GroupSampler:
    """Seeded group sampler owned by the trainer (see module docstring)."""

    num_prompts: int
    seed: int
    prompts_per_epoch: int
    group_size: int
    fingerprint: str = ""
    next_epoch: int = 0
    _cache: dict[int, EpochPlan] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise PromptError("the prompt set is empty")

    def plan(self, epoch: int) -> EpochPlan:
        if epoch in self._cache:
            return self._cache[epoch]
        rng = np.random.default_rng([_TAG_PLAN, int(self.seed), int(epoch)])
        n, m, k = self.num_prompts, self.prompts_per_epoch, self.group_size
        if m <= n:
            ids = rng.choice(n, size=m, replace=False)
        else:  # more groups than prompts: whole permutations, then a partial one
            reps = [rng.permutation(n) for _ in range(m // n)]
            ids = np.concatenate(reps + [rng.choice(n, size=m % n, replace=False)])
        order = rng.permutation(m * k)
        slots = [Slot(int(s // k), int(s % k), int(ids[s // k])) for s in order]
        plan = EpochPlan(epoch, [int(i) for i in ids], slots)
        self._cache = {epoch: plan}
        return plan

    def state_dict(self) -> dict[str, Any]:
        return {"num_prompts": self.num_prompts, "seed": self.seed, "prompts_per_epoch": self.prompts_per_epoch,
                "group_size": self.group_size, "fingerprint": self.fingerprint, "next_epoch": self.next_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_prompts", "seed", "prompts_per_epoch", "group_size", "fingerprint"):
            if state.get(key) != getattr(self, key):
                raise PromptError(f"prompt sampler state mismatch on resume: {key}={state.get(key)!r} in the "
                                  f"checkpoint, {getattr(self, key)!r} now (dataset or config changed)")
        self.next_epoch = int(state["next_epoch"])
