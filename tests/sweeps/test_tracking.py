"""Study summary pieces (no MLflow server needed; the MLflow path is covered end to end in
test_sweep_local)."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution

from awm_platform.sweeps.tracking import _plots, summarize_study


def _study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="s")
    dists = {"train.beta": FloatDistribution(1e-4, 1e-2, log=True), "train.ghuber_power": FloatDistribution(0.1, 1)}
    for i, v in enumerate(values):
        t = study.ask(dists)
        t.set_user_attr("run_name", f"s-t{i}")
        study.tell(t, v)
    return study


def test_summary_guards_importances_below_two_complete_trials(tmp_path):
    one = summarize_study(_study([1.0]))
    assert one["best_trials"][0]["run_name"] == "s-t0" and "param_importances" not in one
    many = summarize_study(_study([0.1, 0.5, 0.2, 0.9, 0.3]))
    assert many["best_trials"][0]["values"] == [0.9]
    assert set(many["param_importances"]) == {"train.beta", "train.ghuber_power"}
    assert abs(sum(many["param_importances"].values()) - 1) < 1e-6
    out = tmp_path / "plots"
    out.mkdir()
    _plots(_study([0.1, 0.5, 0.2]), out)
    assert {p.name for p in out.iterdir()} == {"optimization_history.png", "parallel_coordinate.png"}
    assert all(p.stat().st_size > 1000 for p in out.iterdir())
