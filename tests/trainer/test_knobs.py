"""Every config knob of the AWM loss, the samplers, the time sampling, the advantages and the EMAs
reaches the code that uses it.

The math modules have their own exact tests (tests/trainer_math/); what those cannot see is the
wiring: a trainer that calls the loss with ``loss_type="exp_first"`` whatever the config says still
completes with finite losses. Here three tiny real training runs (one epoch each, every knob at a
non-default value in at least one of them, and the two KL weightings / the two solvers swapped
between runs so that a swapped argument shows) run with *recording spies* installed at the module
attributes the trainer looks its math up from. A spy records its arguments and calls the real
function, so the real computation runs and the run is the real run. Each test below then asserts
one knob against what the code received, in every run. ``test_logged_loss_equals_direct_call``
also recomputes every micro-batch loss by calling the loss function directly with the config's
settings and compares it with what the trainer logged.

``scripts/mutants.py`` plants the bugs these tests exist for and expects them to fail.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.trainer.conftest import small_config

# Three runs. SA and EULER move every knob, on the two rollout solvers; DEFAULT keeps small_config's
# values (the shipped defaults for every knob tested here, except timestep_fraction). The tests walk
# them in this order and each run starts when first needed, so a broken knob usually fails after the
# first run (scripts/mutants.py relies on that for its speed).
VARIANTS: dict[str, dict[str, Any]] = {
    "sa": {
        "num_epochs": 1, "time_type": "discrete_with_init", "time_shift": 2.0, "per_prompt_stat_tracking": False,
        "sample": {"num_steps": 5, "eval_num_steps": 2, "noise_level": 0.8, "noise_window": [0.2, 0.7],
                   "global_std": False},
        "train": {"batch_size": 1, "steps_per_epoch": 2, "train_timesteps": 3, "timestep_fraction": 0.8,
                  "weighting": "t**2", "ghuber_power": 0.5, "clip_range": 0.5, "loss_type": "sum_first",
                  "beta": 0.02, "kl_weight": "ELBO", "ema_beta": 0.5, "kl_ema_weight": "Uniform",
                  "kl_ema_decay": 0.2, "kl_ema_decay_type": "constant", "ema_decay": 0.9,
                  "ema_update_step_interval": 2, "adv_clip_max": 2.0, "advantage_max": 0.5, "off_policy": True,
                  "lr_scheduler": "cosine_then_constant", "decay_steps": 1, "max_grad_norm": 0.5,
                  "adam_beta1": 0.8, "adam_beta2": 0.95, "adam_weight_decay": 0.01, "adam_epsilon": 1e-6},
        "eval": {"guidance_scale": 4.5},  # Flow-GRPO-style evaluation of a no-CFG run
    },
    "euler": {
        "num_epochs": 1, "time_type": "logit_normal", "time_shift": 1.5,
        "sample": {"noise_level": 0.7, "sde_frac": 0.5, "guidance_scale": 2.0, "zero_std_policy": "drop",
                   "global_std": False},
        "train": {"use_sa_solver": False, "weighting": "t", "beta": 0.0, "ema_beta": 0.3, "kl_weight": "ELBO",
                  "kl_ema_weight": "ELBO", "kl_ema_decay": 0.0005, "ema": False, "lr_scheduler": "constant",
                  "learning_rate": 1e-3},
    },
    "default": {"num_epochs": 1},
}


@dataclass
class Recording:
    """What the math functions received during one real run, in call order."""

    cfg: Any
    trainer: Any = None
    phase: str = "setup"
    in_loss: int = 0
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (function, phase, data)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def calls(self, fn: str, phase: str | None = None) -> list[dict[str, Any]]:
        out = [d for f, p, d in self.events if f == fn and (phase is None or p == phase)]
        assert out, f"{fn} was never called{'' if phase is None else ' during ' + phase}"
        return out

    def active_adapters(self) -> list[str]:
        return list(self.trainer.unwrapped.active_adapters())


def _detach(v: Any) -> Any:
    import torch

    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def _install_spies(monkeypatch: pytest.MonkeyPatch, rec: Recording) -> None:
    """Wrap the real functions where the trainer looks them up: the math modules and every trainer
    module that imported the function at its top (recipe, evaluation)."""
    import trainers.awm.advantages as adv_mod
    import trainers.awm.ema as ema_mod
    import trainers.awm.loss as loss_mod
    import trainers.awm.samplers as samplers_mod
    import trainers.awm.timesteps as time_mod
    from trainers.awm.methods.awm import AWMMethod
    from trainers.awm.model import SD3Family
    from trainers.awm.recipe import AWMTrainer

    def patch(module, name: str, spy) -> None:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, spy)
        for user in [m for n, m in sys.modules.items() if n.startswith("trainers.awm.") and m is not module]:
            if getattr(user, name, None) is original:
                monkeypatch.setattr(user, name, spy)

    def phase_of(owner: type, method: str, phase: str) -> None:
        real = getattr(owner, method)

        @functools.wraps(real)
        def spy(self, *a, **k):
            old, rec.phase = rec.phase, phase
            try:
                return real(self, *a, **k)
            finally:
                rec.phase = old

        monkeypatch.setattr(owner, method, spy)

    real_setup = AWMTrainer.setup

    def setup_spy(self):
        rec.trainer = self
        return real_setup(self)

    monkeypatch.setattr(AWMTrainer, "setup", setup_spy)
    # pass 1 is the AWM method's prepare_epoch (trainers/awm/methods/awm.py, the methods seam)
    for owner, method, phase in ((AWMTrainer, "rollout", "rollout"), (AWMMethod, "prepare_epoch", "pass1"),
                                 (AWMTrainer, "train_step", "train"), (AWMTrainer, "evaluate", "eval")):
        phase_of(owner, method, phase)

    real_loss = loss_mod.compute_awm_loss

    def loss_spy(pred, target, t, advantages, **kw):
        rec.events.append(("compute_awm_loss", rec.phase, {
            "micro_batch": sum(f == "sample_training_times" and p == "train" for f, p, _ in rec.events) - 1,
            "pred": _detach(pred), "target": _detach(target), "t": _detach(t), "advantages": _detach(advantages),
            "step": rec.trainer.global_step, **{k: _detach(v) for k, v in kw.items()}}))
        rec.in_loss += 1
        try:
            return real_loss(pred, target, t, advantages, **kw)
        finally:
            rec.in_loss -= 1

    patch(loss_mod, "compute_awm_loss", loss_spy)

    real_lp = loss_mod.per_sample_log_prob

    def lp_spy(pred, target, t, **kw):
        if not rec.in_loss:  # the old log-probs of pass 1 (the loss calls it too)
            rec.events.append(("per_sample_log_prob", rec.phase, {"adapters": rec.active_adapters(), **kw}))
        return real_lp(pred, target, t, **kw)

    patch(loss_mod, "per_sample_log_prob", lp_spy)

    real_velocity = SD3Family.velocity

    def velocity_spy(self, module, x, t, cond):
        out = real_velocity(self, module, x, t, cond)
        if rec.phase in ("rollout", "eval") and not any(f == "velocity" and p == rec.phase for f, p, _ in rec.events):
            rec.events.append(("velocity", rec.phase, {"rows": x.shape[0], "out": out.detach().clone()}))
        return out

    monkeypatch.setattr(SD3Family, "velocity", velocity_spy)

    real_factory = AWMTrainer.velocity_factory

    def factory_spy(self, module, cond, guidance_scale=None):
        rec.events.append(("velocity_factory", rec.phase, {"guidance_scale": guidance_scale}))
        return real_factory(self, module, cond, guidance_scale)

    monkeypatch.setattr(AWMTrainer, "velocity_factory", factory_spy)

    def sampler_spy(name: str, real):
        def spy(velocity_fn, latents, sigmas, **kw):
            first: list[Any] = []

            def vfn(x, t):
                v = velocity_fn(x, t)
                if not first:  # the sampler's view of the first evaluation (guidance applied)
                    first.append({"rows": x.shape[0], "v": v.detach().clone()})
                return v

            data = {"sigmas": sigmas.clone(), "rows": latents.shape[0], "adapters": rec.active_adapters(), **kw}
            rec.events.append((name, rec.phase, data))
            out = real(vfn, latents, sigmas, **kw)
            data["first_eval"] = first[0]
            return out

        return spy

    patch(samplers_mod, "sa_solver_sample", sampler_spy("sa_solver_sample", samplers_mod.sa_solver_sample))
    patch(samplers_mod, "euler_sample", sampler_spy("euler_sample", samplers_mod.euler_sample))

    real_times = time_mod.sample_training_times

    def times_spy(time_type, **kw):
        out = real_times(time_type, **kw)
        rec.events.append(("sample_training_times", rec.phase, {
            "time_type": time_type, "out": out.clone(), **{k: _detach(v) for k, v in kw.items() if k != "generator"}}))
        return out

    patch(time_mod, "sample_training_times", times_spy)

    real_adv = adv_mod.compute_advantages

    def adv_spy(rewards, group_ids, **kw):
        out = real_adv(rewards, group_ids, **kw)
        rec.events.append(("compute_advantages", rec.phase, {"result": out, **kw}))
        return out

    patch(adv_mod, "compute_advantages", adv_spy)

    real_mix = ema_mod.kl_ema_mixing

    def mix_spy(global_step, kl_ema_decay, decay_type):
        d = real_mix(global_step, kl_ema_decay, decay_type)
        rec.events.append(("kl_ema_mixing", rec.phase, {"global_step": global_step, "kl_ema_decay": kl_ema_decay,
                                                        "decay_type": decay_type, "result": d}))
        return d

    patch(ema_mod, "kl_ema_mixing", mix_spy)

    real_update = ema_mod.update_ema_adapter_

    def update_spy(ema_params, policy_params, d):
        ema_params, policy_params = list(ema_params), list(policy_params)
        rec.events.append(("update_ema_adapter_", rec.phase, {
            "d": d, "n": len(ema_params), "same_as_trainer": (
                [id(p) for p in ema_params] == [id(p) for p in rec.trainer.ema_adapter_params]
                and [id(p) for p in policy_params] == [id(p) for p in rec.trainer.policy_params])}))
        return real_update(ema_params, policy_params, d)

    patch(ema_mod, "update_ema_adapter_", update_spy)

    real_wema_update = ema_mod.WeightEMA.update

    def wema_update_spy(self, params, step):
        d = real_wema_update(self, params, step)
        rec.events.append(("WeightEMA.update", rec.phase, {"step": step, "result": d, "max_decay": self.max_decay,
                                                           "interval": self.update_interval}))
        return d

    monkeypatch.setattr(ema_mod.WeightEMA, "update", wema_update_spy)

    from accelerate import Accelerator

    real_clip = Accelerator.clip_grad_norm_

    def clip_spy(self, parameters, max_norm, *a, **k):
        rec.events.append(("clip_grad_norm_", rec.phase, {"max_norm": max_norm}))
        return real_clip(self, parameters, max_norm, *a, **k)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip_spy)


@pytest.fixture(scope="module")
def recordings(tiny_dir, tmp_path_factory):
    """The three recorded runs (each run lazily, once per module)."""
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import train

    done: dict[str, Recording] = {}

    def get(name: str) -> Recording:
        if name not in done:
            cfg = small_config(tiny_dir, **VARIANTS[name])
            rec = Recording(cfg)
            run = tmp_path_factory.mktemp(f"knobs-{name}") / "run"
            with pytest.MonkeyPatch.context() as mp:
                _install_spies(mp, rec)
                res = train(cfg, run)
            assert res.status == "completed"
            rec.metrics = [r for r in read_jsonl_metrics(run / "metrics.jsonl") if "train/loss" in r]
            done[name] = rec
        return done[name]

    return get


def _each(recordings):
    for name in VARIANTS:
        yield name, recordings(name)


# ------------------------------------------------------------------------------- the loss
LOSS_KNOBS = {  # compute_awm_loss keyword <- config field of `train`
    "weighting": "weighting", "ghuber_power": "ghuber_power", "clip_range": "clip_range",
    "loss_type": "loss_type", "beta": "beta", "ema_beta": "ema_beta", "kl_weighting": "kl_weight",
    "kl_ema_weighting": "kl_ema_weight",
}


@pytest.mark.parametrize("kwarg", list(LOSS_KNOBS))
def test_loss_receives_train_knob(recordings, kwarg):
    seen = set()
    for name, rec in _each(recordings):
        want = getattr(rec.cfg.train, LOSS_KNOBS[kwarg])
        got = [c[kwarg] for c in rec.calls("compute_awm_loss", "train")]
        assert got == [want] * len(got), f"{name}: train.{LOSS_KNOBS[kwarg]}={want!r} but the loss got {got}"
        seen.add(want)
    assert len(seen) > 1, "the variants must give this knob two values"


def test_reference_and_ema_forwards_follow_their_coefficients(recordings):
    for name, rec in _each(recordings):
        for c in rec.calls("compute_awm_loss", "train"):
            assert (c["pred_ref"] is not None) == (rec.cfg.train.beta > 0), name
            assert (c["pred_ema"] is not None) == (rec.cfg.train.ema_beta > 0), name


def test_off_policy_uses_ema_adapter_for_rollouts_and_old_log_probs(recordings):
    from trainers.awm import lora as L

    for name, rec in _each(recordings):
        t = rec.cfg.train
        behaviour = [L.EMA] if t.off_policy else [L.POLICY]
        solver = "sa_solver_sample" if t.use_sa_solver else "euler_sample"
        for c in rec.calls(solver, "rollout"):
            assert c["adapters"] == behaviour, f"{name}: rollout ran with {c['adapters']}"
        ga = rec.trainer.topo.gradient_accumulation_steps
        for c in rec.calls("compute_awm_loss", "train"):  # old log-probs: off-policy, or after the 1st step
            needs_old = t.off_policy or c["micro_batch"] >= ga
            assert (c["lp_old"] is not None) == needs_old, f"{name}: micro-batch {c['micro_batch']}"
        if t.off_policy or t.steps_per_epoch > 1:
            for c in rec.calls("per_sample_log_prob", "pass1"):
                assert c["weighting"] == t.weighting and c["ghuber_power"] == t.ghuber_power, name
                assert c["adapters"] == behaviour, name


def test_logged_loss_equals_direct_call(recordings):
    """Per optimizer step, the logged train/* losses are the mean over its micro-batches of
    compute_awm_loss called directly with the config's settings on the recorded inputs."""
    import torch

    from trainers.awm.loss import compute_awm_loss

    for name, rec in _each(recordings):
        t = rec.cfg.train
        by_step: dict[int, list[dict[str, torch.Tensor]]] = {}
        for c in rec.calls("compute_awm_loss", "train"):
            out = compute_awm_loss(
                c["pred"], c["target"], c["t"], c["advantages"], weighting=t.weighting, ghuber_power=t.ghuber_power,
                clip_range=t.clip_range, loss_type=t.loss_type, beta=t.beta, ema_beta=t.ema_beta, lp_old=c["lp_old"],
                pred_ref=c["pred_ref"], pred_ema=c["pred_ema"], kl_weighting=t.kl_weight,
                kl_ema_weighting=t.kl_ema_weight)
            by_step.setdefault(c["step"] + 1, []).append(out)
        assert sorted(by_step) == [r["step"] for r in rec.metrics]
        for row in rec.metrics:
            outs = by_step[row["step"]]
            for k in ("loss", "policy_loss", "kl_loss", "ema_kl_loss"):
                want = sum(float(o[k]) for o in outs) / len(outs)
                assert row[f"train/{k}"] == pytest.approx(want, rel=1e-9, abs=1e-12), f"{name} step {row['step']} {k}"


# ------------------------------------------------------------------------------- samplers
def test_rollout_solver_and_its_knobs(recordings):
    for name, rec in _each(recordings):
        s, t = rec.cfg.sample, rec.cfg.train
        used = {f for f, p, _ in rec.events if p == "rollout" and f in ("sa_solver_sample", "euler_sample")}
        assert used == {"sa_solver_sample" if t.use_sa_solver else "euler_sample"}, name
        for c in rec.calls(used.pop(), "rollout"):
            assert c["noise_level"] == s.noise_level, name
            assert len(c["sigmas"]) == s.num_steps + 1, name
            if t.use_sa_solver:
                assert tuple(c["noise_window"]) == tuple(s.noise_window), name
            else:
                assert c["sde_frac"] == s.sde_frac, name


def _assert_guided(first: dict, raw: dict, g: float, name: str) -> None:
    """The sampler's first velocity is v_u + g (v_c - v_u) of one doubled [uncond, cond] model batch
    when g > 1, and the model's output as it is otherwise."""
    if g > 1:
        assert raw["rows"] == 2 * first["rows"], name
        vu, vc = raw["out"].chunk(2)
        assert first["v"].allclose(vu + g * (vc - vu), rtol=1e-5, atol=1e-6), name
    else:
        assert raw["rows"] == first["rows"] and first["v"].equal(raw["out"]), name


def test_rollout_guidance_scale(recordings):
    """With guidance_scale g > 1 the sampler sees v_u + g (v_c - v_u) of one doubled [uncond, cond] batch."""
    for name, rec in _each(recordings):
        g = rec.cfg.sample.guidance_scale
        solver = "sa_solver_sample" if rec.cfg.train.use_sa_solver else "euler_sample"
        call = rec.calls(solver, "rollout")[0]
        first = call["first_eval"]
        raw = next(d for f, p, d in rec.events if f == "velocity" and p == "rollout")
        _assert_guided(first, raw, g, name)


def test_eval_guidance_scale(recordings):
    """In-loop evaluation gets eval.guidance_scale (None = sample.guidance_scale, as upstream) whatever the
    rollouts use: the eval sampler sees v_u + g (v_c - v_u) with that g; rollouts keep sample.guidance_scale."""
    seen = set()
    for name, rec in _each(recordings):
        want = rec.cfg.eval.guidance_scale
        if want is None:
            want = rec.cfg.sample.guidance_scale
        assert {c["guidance_scale"] for c in rec.calls("velocity_factory", "eval")} == {want}, name
        assert {c["guidance_scale"] for c in rec.calls("velocity_factory", "rollout")} == {None}, name
        first = rec.calls("euler_sample", "eval")[0]["first_eval"]
        raw = next(d for f, p, d in rec.events if f == "velocity" and p == "eval")
        _assert_guided(first, raw, want, name)
        seen.add((rec.cfg.sample.guidance_scale, want))
    assert {(1.0, 4.5), (2.0, 2.0), (1.0, 1.0)} <= seen  # separate from, and defaulting to, the rollout value


def test_eval_uses_eval_num_steps_ode(recordings):
    for name, rec in _each(recordings):
        for c in rec.calls("euler_sample", "eval"):
            assert len(c["sigmas"]) == rec.cfg.sample.eval_num_steps + 1, name
            assert c.get("noise_level", 0.0) == 0.0, name


# ------------------------------------------------------------------------------- time sampling
@pytest.mark.parametrize("knob", ["time_type", "time_shift", "train.train_timesteps", "train.timestep_fraction",
                                  "train.batch_size", "sample.num_steps"])
def test_time_sampler_receives_knob(recordings, knob):
    arg = {"time_type": "time_type", "time_shift": "time_shift", "train.train_timesteps": "num_train_timesteps",
           "train.timestep_fraction": "timestep_fraction", "train.batch_size": "batch_size",
           "sample.num_steps": "grid"}[knob]
    seen = set()
    for name, rec in _each(recordings):
        want = functools.reduce(getattr, knob.split("."), rec.cfg)
        for c in rec.calls("sample_training_times"):
            got = len(c["grid"]) if arg == "grid" else c[arg]
            assert got == want, f"{name}: {knob}={want!r} but the time sampler got {arg}={got!r}"
        seen.add(want)
    assert len(seen) > 1


def test_sampled_times_reach_the_loss(recordings):
    """The t of each loss call is the draw made for that micro-batch (pass 2 redraws pass 1's t)."""
    for name, rec in _each(recordings):
        last = None
        for f, p, d in rec.events:
            if f == "sample_training_times":
                last = d["out"]
            elif f == "compute_awm_loss":
                assert last is not None and d["t"].equal(last), name


# ------------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("knob", ["per_prompt_stat_tracking", "sample.global_std", "train.adv_clip_max",
                                  "train.advantage_max", "sample.zero_std_policy"])
def test_advantages_receive_knob(recordings, knob):
    seen = set()
    for name, rec in _each(recordings):
        want = functools.reduce(getattr, knob.split("."), rec.cfg)
        (c,) = rec.calls("compute_advantages", "rollout")
        assert c[knob.split(".")[-1]] == want, name
        seen.add(want)
    assert len(seen) > 1


def test_advantages_reach_the_loss(recordings):
    import torch

    for name, rec in _each(recordings):
        (c,) = rec.calls("compute_advantages", "rollout")
        res = c["result"]
        want = sorted(res.advantages[res.keep].tolist())
        got = sorted(torch.cat([d["advantages"] for d in rec.calls("compute_awm_loss", "train")]).tolist())
        assert got == want, name


# ------------------------------------------------------------------------------- EMAs
def test_kl_ema_adapter_mixing_follows_config(recordings):
    from trainers.awm.ema import kl_ema_mixing

    seen = set()
    for name, rec in _each(recordings):
        t = rec.cfg.train
        mixes = rec.calls("kl_ema_mixing", "train")
        updates = rec.calls("update_ema_adapter_", "train")
        assert [m["global_step"] for m in mixes] == [r["step"] for r in rec.metrics], name
        for m, u, row in zip(mixes, updates, rec.metrics, strict=True):
            assert (m["kl_ema_decay"], m["decay_type"]) == (t.kl_ema_decay, t.kl_ema_decay_type), name
            want = kl_ema_mixing(row["step"], t.kl_ema_decay, t.kl_ema_decay_type)
            assert u["d"] == want == row["train/kl_ema_decay"], name
            assert u["same_as_trainer"] and u["n"] > 0, name
        seen.add((t.kl_ema_decay, t.kl_ema_decay_type))
    assert len(seen) == len(VARIANTS)


def test_weight_ema_follows_config(recordings):
    from trainers.awm.ema import weight_ema_decay

    for name, rec in _each(recordings):
        t = rec.cfg.train
        if not t.ema:
            assert rec.trainer.wema is None
            assert not [1 for f, _, _ in rec.events if f == "WeightEMA.update"], name
            assert all("train/weight_ema_decay" not in r for r in rec.metrics)
            continue
        calls = rec.calls("WeightEMA.update", "train")
        assert [c["step"] for c in calls] == [r["step"] for r in rec.metrics], name
        for c, row in zip(calls, rec.metrics, strict=True):
            assert (c["max_decay"], c["interval"]) == (t.ema_decay, t.ema_update_step_interval), name
            due = (c["step"] + 1) % t.ema_update_step_interval == 0
            assert c["result"] == (weight_ema_decay(c["step"], t.ema_decay) if due else None), name
            assert row.get("train/weight_ema_decay") == c["result"], name
    skipped = [c for c in recordings("sa").calls("WeightEMA.update") if c["result"] is None]
    assert skipped, "the interval-2 run must skip an update"


# ------------------------------------------------------------------------------- optimizer
def test_optimizer_and_lr_schedule_follow_config(recordings):
    from trainers.awm.recipe import _lr_lambda

    for name, rec in _each(recordings):
        t = rec.cfg.train
        group = rec.trainer.optimizer.param_groups[0]
        assert group["betas"] == (t.adam_beta1, t.adam_beta2) and group["eps"] == t.adam_epsilon, name
        assert group["weight_decay"] == t.adam_weight_decay, name
        assert [c["max_norm"] for c in rec.calls("clip_grad_norm_", "train")] == [t.max_grad_norm] * len(rec.metrics)
        f = _lr_lambda(t.decay_steps, t.lr_scheduler)
        for row in rec.metrics:
            assert row["train/lr"] == pytest.approx(t.learning_rate * f(row["step"] - 1), rel=1e-12), name
    lrs = [r["train/lr"] for r in recordings("sa").metrics]
    assert lrs[1] == pytest.approx(lrs[0] / 3), "decay_steps=1: the second step runs at lr/3"


def test_variants_move_every_knob(tiny_dir):
    """Guard for the table above: every knob these tests cover takes two values among the runs, so
    hard-wiring any constant in its place shows."""
    cfgs = [small_config(tiny_dir, **over) for over in VARIANTS.values()]

    def value(c, key):
        return functools.reduce(getattr, key.split("."), c)

    needed = {f"train.{f}" for f in LOSS_KNOBS.values()} | {
        "time_type", "time_shift", "per_prompt_stat_tracking", "sample.noise_level", "sample.noise_window",
        "sample.sde_frac", "sample.num_steps", "sample.eval_num_steps", "sample.guidance_scale",
        "sample.global_std", "sample.zero_std_policy", "eval.guidance_scale", "train.train_timesteps", "train.timestep_fraction",
        "train.adv_clip_max", "train.advantage_max", "train.kl_ema_decay", "train.kl_ema_decay_type",
        "train.ema", "train.ema_decay", "train.ema_update_step_interval", "train.off_policy",
        "train.use_sa_solver", "train.lr_scheduler", "train.max_grad_norm", "train.adam_beta1", "train.adam_beta2",
        "train.adam_weight_decay", "train.adam_epsilon", "train.learning_rate"}
    flat = [k for k in sorted(needed) if len({repr(value(c, k)) for c in cfgs}) < 2]
    assert not flat, f"these knobs have one value in all runs: {flat}"
