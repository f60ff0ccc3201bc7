"""Turn the optuna-free `sweep:` models into Optuna objects, open Optuna storages safely, and
reach one study's trials through the public storage API.

Imported only by the orchestrator and the sweep commands (never at CLI start-up: the `awm sweep`
commands import it inside the command).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
from optuna.trial import Trial

from awm_platform.paths import default_optuna_storage_url
from awm_platform.sweeps.spec import ParamSpec, SweepSpec

JOURNAL_PREFIX = "journal:"


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    out: dict[str, BaseDistribution] = {}
    for key, p in spec.params.items():
        if p.type == "categorical":
            out[key] = CategoricalDistribution(list(p.choices or []))
        elif p.type == "int":
            out[key] = IntDistribution(int(p.low), int(p.high), log=p.log,  # type: ignore[arg-type]
                                       step=int(p.step) if p.step is not None else 1)
        else:
            out[key] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)  # type: ignore[arg-type]
    return out


def grid_values(p: ParamSpec) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices or [])
    assert p.low is not None and p.high is not None
    step = p.step if p.step is not None else 1
    n = round((p.high - p.low) / step) + 1
    vals = [p.low + i * step for i in range(n) if p.low + i * step <= p.high + 1e-12]
    return [round(v) for v in vals] if p.type == "int" else [round(float(v), 12) for v in vals]


def grid_size(spec: SweepSpec) -> int:
    n = 1
    for p in spec.params.values():
        n *= len(grid_values(p))
    return n


def make_sampler(spec: SweepSpec, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """`seed_offset` (the number of trials already in the study on resume) keeps a resumed
    orchestrator from replaying the random start-up suggestions it already made."""
    s = spec.sampler
    seed = s.seed + seed_offset
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                          multivariate=len(spec.params) > 1)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return AskTellGridSampler({k: grid_values(p) for k, p in spec.params.items()}, seed=seed)
    if s.name == "cmaes":
        # optuna's CmaEsSampler needs the optional `cmaes` package, and says so only at first use
        if importlib.util.find_spec("cmaes") is None:
            raise RuntimeError("sweep.sampler.name=cmaes needs the 'cmaes' package: pip install cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                            warn_independent_sampling=False)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    raise ValueError(f"unknown sampler {s.name!r}")  # pragma: no cover - pydantic restricts names


class AskTellGridSampler(optuna.samplers.GridSampler):
    """optuna's GridSampler calls `study.stop()` once the grid is exhausted, which raises
    outside `study.optimize`; the orchestrator caps n_trials at the grid size instead."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------- storage ----
def storage_url(spec: SweepSpec) -> str:
    """The study's storage as one string: an RDB URL, or `journal:<path>`."""
    if spec.journal_path:
        return f"{JOURNAL_PREFIX}{Path(spec.journal_path).expanduser().resolve()}"
    return spec.storage or default_optuna_storage_url()


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """P6: two processes opening a *fresh* SQLite file race on creating Optuna's schema
    ("table studies already exists"). Serialise storage creation per file with flock."""
    if not url.startswith("sqlite:///"):
        yield
        return
    db = Path(url.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.optuna-init.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_storage(url: str) -> BaseStorage:
    """RDB (SQLite / PostgreSQL) or journal file. No Optuna heartbeat: the orchestrator, not
    the training job, owns every trial, so an orchestrator restart must *adopt* RUNNING
    trials, not have Optuna fail and re-enqueue them (see docs/sweeps.md)."""
    if url.startswith(JOURNAL_PREFIX):
        path = url.removeprefix(JOURNAL_PREFIX)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # the open(O_EXCL)-based lock works on NFS, where symlink locks may not
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True})
    with _creation_lock(url):
        return RDBStorage(url, engine_kwargs=engine_kwargs)


def study_exists(storage: BaseStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Reproducible per-trial training seed (cfg.seed) from the study seed and the trial's
    number (a retry reuses its original trial's number, hence its seed)."""
    digest = hashlib.sha256(f"awm-sweep:{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


class OpenStudy:
    """A study with the storage it was opened on. Optuna's `Study` keeps its storage and study id
    private; this reaches its trials, by number, through the storage's public `BaseStorage` API:
    the orchestrator's bookkeeping (run name, seed, job id, error) as trial user attrs, and eval
    values reported for trials that run in other processes."""

    def __init__(self, study: optuna.Study, storage: BaseStorage) -> None:
        self.study = study
        self.storage = storage
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.trial_ids: dict[int, int] = {}  # number -> id; a trial's id never changes

    def trial_id(self, number: int) -> int:
        if number not in self.trial_ids:
            self.trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.trial_ids[number]

    def set_trial_user_attr(self, number: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id(number), key, value)

    def trial_user_attrs(self, number: int) -> dict[str, Any]:
        return dict(self.storage.get_trial(self.trial_id(number)).user_attrs)

    def live_trial(self, number: int) -> Trial:
        """The running trial as the objective function would see it: `report` an intermediate
        value on its behalf, ask `should_prune`."""
        return Trial(self.study, self.trial_id(number))


def load_study(url: str, study_name: str) -> OpenStudy:
    """An existing study, with Optuna's default sampler and pruner (to read it and tell its trials)."""
    storage = open_storage(url)
    return OpenStudy(optuna.load_study(study_name=study_name, storage=storage), storage)
