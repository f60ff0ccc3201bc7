"""`OpenStudy`: what the orchestrator relies on from Optuna's public API, pinned on both storage kinds.

The orchestrator never holds the `Study` the training job would: it asks a trial, and later (maybe
after a restart, in a new process) writes that trial's user attrs, reports eval values and asks
the pruner, by trial number. If an Optuna upgrade changes how a storage opened by us and the
`Study` opened on it see each other's writes, these fail first.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from awm_platform.sweeps.optuna_bridge import OpenStudy, load_study, open_storage

SPACE = {"x": FloatDistribution(0.0, 1.0)}


@pytest.fixture(params=["sqlite", "journal"])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'o.db'}" if request.param == "sqlite" else f"journal:{tmp_path / 'o.journal'}"


def _create(url: str) -> OpenStudy:
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    return OpenStudy(study, storage)


def test_trial_user_attrs_by_number_are_seen_by_the_study_and_a_reloaded_one(url: str) -> None:
    opened = _create(url)
    first, second = opened.study.ask(SPACE), opened.study.ask(SPACE)
    opened.set_trial_user_attr(second.number, "run_name", "s-t1")
    opened.set_trial_user_attr(first.number, "seed", 7)
    assert opened.trial_user_attrs(second.number) == {"run_name": "s-t1"}
    assert opened.trial_id(first.number) != opened.trial_id(second.number)
    # the Study reads through its own (possibly caching) wrapper of the storage: it sees our writes
    assert [t.user_attrs for t in opened.study.get_trials()] == [{"seed": 7}, {"run_name": "s-t1"}]
    again = load_study(url, "s")
    assert again.study_id == opened.study_id
    assert again.trial_id(second.number) == opened.trial_id(second.number)
    assert again.trial_user_attrs(second.number) == {"run_name": "s-t1"}


def test_a_reloaded_study_reports_and_prunes_a_trial_asked_elsewhere(url: str) -> None:
    opened = _create(url)
    good, bad = opened.study.ask(SPACE), opened.study.ask(SPACE)
    for step in range(3):
        opened.live_trial(good.number).report(1.0 + step, step)
    opened.study.tell(good.number, 3.0)
    # another process (a restarted orchestrator) picks up the running trial by its number
    storage = open_storage(url)
    study = optuna.load_study(study_name="s", storage=storage,
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    again = OpenStudy(study, storage)
    trial = again.live_trial(bad.number)
    trial.report(0.1, 0)
    assert trial.should_prune()  # below the completed trial's value at step 0, maximizing
    study.tell(bad.number, state=TrialState.PRUNED)
    frozen = {t.number: t for t in optuna.load_study(study_name="s", storage=open_storage(url)).trials}
    assert frozen[good.number].intermediate_values == {0: 1.0, 1: 2.0, 2: 3.0}
    assert frozen[bad.number].intermediate_values == {0: 0.1} and frozen[bad.number].state == TrialState.PRUNED
