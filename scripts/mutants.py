"""Mutation check: plant known bugs in a temporary copy of the repository and expect tests to fail.

    .venv/bin/python scripts/mutants.py [--list] [--only ID[,ID...]] [--keep]

Each plant below is one small textual edit (a knob hard-wired, a resume step dropped, a formula
changed) plus the tests that exist to catch it. For every plant the script copies the tracked and
untracked-but-not-ignored files of this checkout once into a temporary folder, applies the edit
there, runs those tests against the copy (the copy is first on ``sys.path``; ``awm_platform``, which
the editable install maps to this checkout's ``platform/``, is pointed at the copy's through a
symlink), restores the file, and records whether the tests failed ("killed") or passed
("SURVIVED"). Before the plants it checks that the copy is really what gets imported (a planted
syntax error in the copy's ``trainers/awm/recipe.py`` and ``platform/config.py`` must fail the
tests) and that the unmodified copy passes every selected test.

Prints a table (plant, result, seconds) and exits 1 if any plant survived, 2 if the setup checks
failed or a plant no longer applies (its text is gone: update the plant with the code).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "trainers/awm/recipe.py"
AWM = "trainers/awm/methods/awm.py"  # the AWM method on the methods seam (its rollout, passes and loss)


def knobs(test: str) -> list[str]:
    return [f"tests/trainer/test_knobs.py::{test}"]


LOSS_KNOBS = knobs("test_loss_receives_train_knob")
OFF_POLICY = knobs("test_off_policy_uses_ema_adapter_for_rollouts_and_old_log_probs")
RESUME = ["tests/trainer/test_train.py::test_resume_between_epochs_is_bitwise",
          "tests/trainer/test_train.py::test_resume_after_crash_mid_epoch_is_bitwise"]
PRECISION = ["tests/trainer/test_precision.py"]


@dataclass(frozen=True)
class Plant:
    id: str
    why: str
    file: str
    old: str  # must occur exactly once in file
    new: str
    tests: list[str]  # pytest node ids that must fail with the plant


PLANTS: list[Plant] = [
    # ---- the loss (the first three are the mutants of issue 10)
    Plant("loss-kl-weighting", "train.kl_weight hard-wired to Uniform in the trainer's loss call",
          AWM, "kl_weighting=tcfg.kl_weight,", 'kl_weighting="Uniform",', LOSS_KNOBS),
    Plant("loss-kl-ema-weighting", "train.kl_ema_weight hard-wired to Uniform",
          AWM, "kl_ema_weighting=tcfg.kl_ema_weight)", 'kl_ema_weighting="Uniform")', LOSS_KNOBS),
    Plant("loss-type", "train.loss_type hard-wired to exp_first",
          AWM, "loss_type=tcfg.loss_type,", 'loss_type="exp_first",', LOSS_KNOBS),
    Plant("loss-pass1-weighting", "pass-1 old log-probs ignore train.weighting",
          AWM, "per_sample_log_prob(v, target, t, weighting=cfg.train.weighting,",
          'per_sample_log_prob(v, target, t, weighting="ghuber",', OFF_POLICY),
    Plant("loss-clip-math", "PPO clip upper bound wrong in the loss itself",
          "trainers/awm/loss.py", "torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)",
          "torch.clamp(ratio, 1.0 - clip_range, 1.0 + 2 * clip_range)", ["tests/trainer_math/test_loss.py"]),
    # ---- samplers
    Plant("sampler-noise-window", "sample.noise_window ignored by the SA-Solver rollout",
          AWM, "noise_window=tuple(s.noise_window)", "noise_window=(0.3, 0.9)",
          knobs("test_rollout_solver_and_its_knobs")),
    Plant("sampler-sde-frac", "sample.sde_frac ignored by the Euler rollout",
          AWM, "sde_frac=s.sde_frac,", "sde_frac=0.0,", knobs("test_rollout_solver_and_its_knobs")),
    Plant("sampler-guidance", "classifier-free guidance scale dropped",
          "trainers/awm/generate.py", "return vu + g * (vc - vu)", "return vc", knobs("test_rollout_guidance_scale")),
    Plant("eval-guidance", "eval.guidance_scale ignored (evaluation tied to the rollout guidance)",
          RECIPE, "guidance_scale=self.eval_guidance_scale,", "guidance_scale=None,",
          knobs("test_eval_guidance_scale")),
    Plant("sampler-off-policy", "off-policy rollouts sampled with the live policy",
          AWM, "return L.EMA if self.cfg.train.off_policy else None", "return None", OFF_POLICY),
    # ---- time sampling
    Plant("time-shift", "time_shift hard-wired",
          AWM, "time_shift=cfg.time_shift, generator=gen,", "time_shift=3.0, generator=gen,",
          knobs("test_time_sampler_receives_knob")),
    Plant("time-fraction", "train.timestep_fraction hard-wired",
          AWM, "timestep_fraction=cfg.train.timestep_fraction,", "timestep_fraction=0.9,",
          knobs("test_time_sampler_receives_knob")),
    # ---- EMAs
    Plant("ema-kl-decay-type", "train.kl_ema_decay_type ignored",
          AWM, "kl_ema_mixing(ema_step, self.cfg.train.kl_ema_decay, self.cfg.train.kl_ema_decay_type)",
          'kl_ema_mixing(ema_step, self.cfg.train.kl_ema_decay, "linear")',
          knobs("test_kl_ema_adapter_mixing_follows_config")),
    Plant("ema-lora-path-step", "train.lora_path restarts the EMA ramps at step 0 (upstream continues at S)",
          RECIPE, "ema_step = self.global_step + self.ema_step_offset", "ema_step = self.global_step",
          ["tests/trainer/test_lora_path.py"]),
    Plant("ema-weight-interval", "train.ema_update_step_interval ignored",
          RECIPE, "update_interval=cfg.train.ema_update_step_interval)", "update_interval=1)",
          knobs("test_weight_ema_follows_config")),
    Plant("ema-weight-decay-math", "weight-EMA warm-up (1+s)/(10+s) dropped",
          "trainers/awm/ema.py", "decay = weight_ema_decay(step, self.max_decay)", "decay = self.max_decay",
          ["tests/trainer_math/test_ema.py"]),
    # ---- advantages
    Plant("adv-global-std", "sample.global_std hard-wired",
          RECIPE, "global_std=s.global_std,", "global_std=True,", knobs("test_advantages_receive_knob")),
    Plant("adv-std-math", "per-group and global std swapped in the advantages",
          "trainers/awm/advantages.py", "if global_std else (group_std[gidx] + eps)",
          "if not global_std else (group_std[gidx] + eps)", ["tests/trainer_math/test_advantages.py"]),
    # ---- checkpoints and resume
    Plant("resume-optimizer", "resume forgets the AdamW state",
          RECIPE, 'self.optimizer.load_state_dict(C.load_torch(path / "state" / "optimizer.pt"))', "pass", RESUME),
    Plant("resume-weight-ema", "resume re-initialises the weight EMA",
          RECIPE, 'self.wema.load_state_dict({"shadow": shadow, **state["weight_ema"]})', "pass", RESUME),
    Plant("resume-lr-schedule", "resume restarts the LR schedule",
          RECIPE, 'self.scheduler.load_state_dict(state["scheduler"])', "pass", PRECISION),
    Plant("resume-grad-scaler", "checkpoint drops the fp16 grad-scaler state",
          RECIPE, '"scaler": acc.scaler.state_dict() if acc.scaler is not None else None,', '"scaler": None,',
          PRECISION),
    Plant("checkpoint-sha256", "checkpoint validation skips the sha256 check",
          "trainers/awm/checkpoint.py", "if verify_hashes and sha256_file(f) != digest:", "if False:",
          ["tests/trainer/test_components.py::test_checkpoint_atomic_validate_and_corruption"]),
]

# Sanity plants: if the copy were not what the tests import, these would "survive".
SANITY: list[Plant] = [
    Plant("sanity-trainer-copy", "syntax error in the copy's recipe",
          RECIPE, '"""The AWM training loop', 'def (:\n"""The AWM training loop',
          ["tests/trainer/test_components.py::test_lr_schedule_closed_form"]),
    Plant("sanity-platform-copy", "syntax error in the copy's config",
          "platform/config.py", '"""The experiment spec', 'def (:\n"""The experiment spec',
          ["tests/foundation/test_config.py::test_defaults_are_upstream_awm_values"]),
]


def copy_checkout(dest: Path) -> None:
    """Tracked + untracked-not-ignored files of the working tree (uncommitted edits included)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    shim = dest / ".mutants-path"
    shim.mkdir()
    (shim / "awm_platform").symlink_to(dest / "platform", target_is_directory=True)


def pytest_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(copy / ".mutants-path")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "--no-header", "-o", "addopts=",
           "--rootdir", str(copy), "-c", str(copy / "pyproject.toml"), *tests]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=pytest_env(copy), capture_output=True, text=True, timeout=timeout,
                           check=False)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"
    return rc, time.perf_counter() - t0, out


def check_imports(copy: Path) -> str | None:
    code = "import awm_platform.config, trainers.awm.recipe, tests.trainer; print(awm_platform.config.__file__); " \
           "print(trainers.awm.recipe.__file__); print(tests.trainer.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=copy, env=pytest_env(copy), capture_output=True, text=True,
                       check=False)
    if r.returncode:
        return r.stderr[-2000:]
    bad = [p for p in r.stdout.split() if not Path(p).resolve().is_relative_to(copy.resolve())]
    return f"imported from outside the copy: {bad}" if bad else None


def apply(copy: Path, plant: Plant) -> str | None:
    """Apply the plant; return the original text, or None when the plant's text is not there exactly once."""
    path = copy / plant.file
    text = path.read_text()
    if text.count(plant.old) != 1:
        return None
    path.write_text(text.replace(plant.old, plant.new))
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the plants and exit")
    ap.add_argument("--only", default="", help="comma-separated plant ids")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per plant")
    args = ap.parse_args()
    plants = PLANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.id for p in PLANTS}
        if unknown:
            print(f"unknown plant(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        plants = [p for p in PLANTS if p.id in wanted]
    if args.list:
        for p in PLANTS:
            print(f"{p.id:24} {p.file:28} {p.why}")
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill the running pytest, remove the copy
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="awm-mutants-"))
    copy = tmp / "repo"
    rows: list[tuple[str, str, float]] = []
    try:
        copy_checkout(copy)
        problem = check_imports(copy)
        if problem:
            print(f"setup: the copy is not what python imports: {problem}", file=sys.stderr)
            return 2
        selected = sorted({t for p in plants + SANITY for t in p.tests})
        rc, secs, out = run_tests(copy, selected, args.timeout)
        print(f"baseline: the unmodified copy, {len(selected)} test selections: "
              f"{'pass' if rc == 0 else 'FAIL'} ({secs:.0f} s)", flush=True)
        if rc != 0:
            print(out[-5000:], file=sys.stderr)
            return 2
        for plant in SANITY:
            original = apply(copy, plant)
            if original is None:
                print(f"setup: sanity plant {plant.id} no longer applies", file=sys.stderr)
                return 2
            rc, secs, out = run_tests(copy, plant.tests, args.timeout)
            (copy / plant.file).write_text(original)
            if rc in (0, 5):
                print(f"setup: {plant.id} was not detected (rc {rc}): the tests do not import the copy\n{out[-3000:]}",
                      file=sys.stderr)
                return 2
        print(f"sanity: syntax errors planted in the copy's {' and '.join(p.file for p in SANITY)} fail the tests",
              flush=True)
        for plant in plants:
            original = apply(copy, plant)
            if original is None:
                rows.append((plant.id, "STALE (text not found once)", 0.0))
                continue
            rc, secs, out = run_tests(copy, plant.tests, args.timeout)
            (copy / plant.file).write_text(original)
            result = "killed" if rc not in (0, 5) else "SURVIVED"
            if rc == -1:
                result = "killed (timeout)"
            rows.append((plant.id, result, secs))
            print(f"  {plant.id:24} {result:10} {secs:6.1f} s", flush=True)
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"| {'plant':24} | {'result':28} | {'seconds':>7} |")
    print(f"|{'-' * 26}|{'-' * 30}|{'-' * 9}|")
    for pid, result, secs in rows:
        print(f"| {pid:24} | {result:28} | {secs:7.1f} |")
    survived = [r for r in rows if r[1] == "SURVIVED"]
    stale = [r for r in rows if r[1].startswith("STALE")]
    print(f"\n{len(rows) - len(survived) - len(stale)} killed, {len(survived)} survived, {len(stale)} stale; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if survived:
        return 1
    return 2 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
