"""AWM vs Flow-GRPO vs DiffusionNFT vs AdvantageFlow (derived) on the tiny model: reward against epochs
and against counted transformer forward-equivalents (issue 14 "The comparison", objectives.md section 6).

    python perf/method_compare.py [--quick] [--seeds 3] [--epochs 12] [--jobs 2] [--methods awm,flow_grpo,...] [--out DIR]

Held fixed across methods (section 6): the tiny SD3 pipeline (``make_tiny``, same weights), LoRA rank,
alpha, targets and Gaussian init (B = 0: every run starts at the reference), prompts and the per-epoch
prompt draw (the trainer's seeded group sampler), group size k, prompts per epoch m, the reward
(``jpeg_compressibility``), the advantage (per-prompt mean, global std + 1e-4, clamp +-5), AdamW (lr,
wd 1e-4, clip 1.0), fp32, ONE optimizer step per epoch for every method (Flow-GRPO's 2 overridden) made of
ONE micro-batch holding every rollout image (see ``FULL``),
the rollout grid (N steps, shift 3), no CFG anywhere, and the in-loop evaluation (deterministic Euler,
the same N_eval, the same eval prompts and per-prompt seeds, live weights and the weight EMA, which
every method keeps). Each method keeps its own sampler (AWM: SA-Solver; Flow-GRPO: Euler-SDE with
log-probs; DiffusionNFT / AdvantageFlow: Euler ODE with the old adapter, all N grid sigmas per sample, see
``method_overrides``). The reference KL is off for
all (train.beta = 0), so no method pays for reference forwards; AWM keeps its KL-EMA term (part of
its method). Whether each method rescales the advantage: AWM, NFT, AF by 1/5; Flow-GRPO does not.

Compute is COUNTED, not taken from formulas: a forward hook on the transformer adds the rows of every
call (a CFG call counts its doubled batch), split by phase (rollout / training) and by grad mode; a
tensor hook on each grad-enabled output counts the rows that are back-propagated. One
forward-equivalent = one row forward; a backward counts 2 (the section 5 convention, forward+backward
~ 3). In-loop evaluation is not counted.

Output (in --out): ``curves.csv`` (method, seed, step, forward-equivalents, eval reward live / EMA),
``method_compare.png`` (mean and min-max band over seeds against epochs and against
forward-equivalents), ``summary.json``; the last stdout line is the same JSON: per method the final
eval reward (mean/min/max over seeds), forward-equivalents per epoch (and the split), and
``speedup_vs_flow_grpo`` = FE Flow-GRPO needs to first reach its own final mean eval reward / FE the
method needs to first reach it (first crossing of the seed-mean curve, linear between eval points; null,
with ``speedup_note``, when not reached or when Flow-GRPO was not run).

``--quick`` (the test suite's mode): the full setup cut to 1 seed (0) and 2 epochs; the test
checks that every method learns something (its final live eval reward is above the shared start:
``reward_gain`` > 0) and that the counted forwards match the configuration.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainers.awm.config import MethodName  # after the repo is on sys.path (torch-free)

METHODS: tuple[str, ...] = get_args(MethodName)
LABELS = {"awm": "AWM", "flow_grpo": "Flow-GRPO", "diffusionnft": "DiffusionNFT",
          "advantageflow": "AdvantageFlow (derived)"}
REWARD = "jpeg_compressibility"


@dataclass(frozen=True)
class Setup:
    """The sizes of one comparison (quick or full)."""

    epochs: int
    seeds: int
    prompts_per_epoch: int
    images_per_prompt: int
    micro_batch: int
    num_steps: int
    eval_prompts: int
    eval_freq: int
    learning_rate: float


# micro_batch = every image of the epoch: each optimizer step then sees whole prompt groups in ONE
# micro-batch, so a training time the micro-batch shares (AWM's discrete times are shared by its samples)
# meets advantages that sum to zero. With 16 of 32 images a micro-batch holds part-groups whose advantages
# do not cancel, and its shared times then add a random-signed "fit / unfit every sample at these times"
# term that, at 32 images per step, is as large as the advantage signal (a memory knob otherwise: no
# method's math or counted compute changes). Eval: all 16 tiny prompts (8 left the start inside the noise).
FULL = Setup(epochs=12, seeds=3, prompts_per_epoch=4, images_per_prompt=8, micro_batch=32, num_steps=6,
             eval_prompts=16, eval_freq=2, learning_rate=2e-2)
# the test suite's mode: 2 epochs, evaluated at the start and the end only (an eval of 16 prompts costs
# half an epoch). In the probes every method was above the start after every one of epochs 1-4 on each of
# seeds 0-2, and below it with the advantage's sign flipped (tests/trainer/test_method_compare.py)
QUICK = Setup(epochs=2, seeds=1, prompts_per_epoch=4, images_per_prompt=8, micro_batch=32, num_steps=6,
              eval_prompts=16, eval_freq=2, learning_rate=2e-2)

LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out",
                "pos_embed.proj"]


def method_overrides(method: str, setup: Setup) -> dict[str, Any]:
    """Each method's own keys (its upstream defaults where they make sense on the tiny model)."""
    if method == "awm":  # quickstart's AWM: SA-Solver rollouts, T = 3 stratified times, ghuber, KL-EMA
        return {"train": {"train_timesteps": 3, "timestep_fraction": 0.9}}
    if method == "flow_grpo":  # full-window SDE, a = 0.7, J = int(N * 0.99), c = 1e-4, zero-std filter; no CFG
        return {"sample": {"noise_level": 0.7, "zero_std_policy": "drop"},
                "train": {"timestep_fraction": 0.99, "clip_range": 1e-4}}
    # DiffusionNFT / AdvantageFlow: J = N (timestep_fraction 1.0, upstream 0.99 -> J = N - 1). Each sample
    # trains on its own random permutation of the grid (upstream, trap 3); with J = N - 1 each sample drops
    # one grid sigma, so at a given sigma the trained samples' advantages no longer sum to zero and the
    # sigma-weighted loss (AF: sigma^2, NFT: sigma / m) adds a random-signed "fit / unfit every sample at
    # that sigma" term. Upstream averages it away over 1152 images per step; at 32 it outweighed the
    # advantage signal and the eval reward fell whatever the advantage's sign (issue 14's diagnosis, in
    # trainers/awm/README.md). With J = N every sample is trained once at every grid sigma per step and the
    # term cancels (exactly for AF's sigma^2 weights). Section 6 lets J differ per method.
    if method == "diffusionnft":  # nft_beta 1, decay type 1, all N grid sigmas per sample
        return {"train": {"timestep_fraction": 1.0, "nft_beta": 1.0, "old_decay_type": 1}}
    if method == "advantageflow":  # derived: lambda 2, x0 weighting, NFT's infrastructure, J = N as NFT
        return {"train": {"timestep_fraction": 1.0, "af_lambda": 2.0, "af_weighting": "x0",
                          "old_decay_type": 1}}
    raise ValueError(method)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_dict(method: str, seed: int, model: Path, setup: Setup) -> dict[str, Any]:
    s = setup
    base = {
        "name": f"compare-{method}-{seed}", "method": method, "seed": seed,
        "pretrained": {"model": str(model), "dtype": "fp32"}, "resolution": 64, "mixed_precision": "no",
        "num_epochs": s.epochs, "save_freq": 10_000, "eval_freq": s.eval_freq, "dataset": "tiny",
        "reward_fn": {REWARD: 1.0},
        "lora": {"rank": 16, "alpha": 32, "target_modules": LORA_TARGETS},
        "sample": {"num_steps": s.num_steps, "eval_num_steps": s.num_steps, "guidance_scale": 1.0,
                   "num_image_per_prompt": s.images_per_prompt, "prompts_per_epoch": s.prompts_per_epoch,
                   "max_batch_size_per_gpu": 32, "test_batch_size": 8, "max_sequence_length": 16},
        "train": {"batch_size": s.micro_batch, "steps_per_epoch": 1, "learning_rate": s.learning_rate,
                  "beta": 0.0, "ema": True},
        "eval": {"max_prompts": s.eval_prompts, "at_start": True, "ema": True},
    }
    return _merge(base, method_overrides(method, setup))


@dataclass
class ForwardCounter:
    """Rows through the transformer, by phase and grad mode; back-propagated rows via tensor hooks."""

    phase: str = "other"
    paused: bool = False
    rows: dict[str, int] = field(default_factory=dict)  # "<phase>/fwd", "<phase>/fwd_grad", "<phase>/bwd"

    def _add(self, key: str, n: int) -> None:
        self.rows[key] = self.rows.get(key, 0) + n

    def attach(self, module) -> Callable[[], None]:
        import torch

        def pre(mod, args, kwargs):
            if self.paused:
                return
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self._add(f"{self.phase}/{'fwd_grad' if torch.is_grad_enabled() else 'fwd'}", int(x.shape[0]))

        def post(mod, args, kwargs, output):
            if self.paused or not torch.is_grad_enabled():
                return
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                n, key = int(out.shape[0]), f"{self.phase}/bwd"
                out.register_hook(lambda g: self._add(key, n))

        h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = module.register_forward_hook(post, with_kwargs=True)
        return lambda: (h1.remove(), h2.remove())

    def snapshot(self) -> dict[str, int]:
        return dict(self.rows)


def forward_equivalents(rows: dict[str, int]) -> float:
    fwd = sum(v for k, v in rows.items() if k.endswith(("/fwd", "/fwd_grad")))
    bwd = sum(v for k, v in rows.items() if k.endswith("/bwd"))
    return float(fwd + 2 * bwd)


def run_one(method: str, seed: int, model: Path, setup: Setup, out_dir: Path) -> dict[str, Any]:
    """Train one (method, seed) in-process; return its eval curve with counted compute."""
    import torch

    from awm_platform.config import config_from_dict
    from trainers.awm.logging import read_jsonl_metrics
    from trainers.awm.recipe import AWMTrainer

    torch.set_num_threads(1)
    cfg = config_from_dict(config_dict(method, seed, model, setup))
    run_dir = out_dir / "runs" / f"{method}-{seed}"
    tr = AWMTrainer(cfg, run_dir)
    counter = ForwardCounter()
    points: list[tuple[int, dict[str, int]]] = []  # (global_step at an eval, counted rows so far)
    epoch_rows: list[dict[str, int]] = []  # counted rows at the start of every rollout
    t0 = time.perf_counter()
    try:
        tr.setup()
        detach = counter.attach(tr.family.transformer)
        evaluate, rollout = tr.evaluate, tr.rollout

        def counted_eval() -> dict[str, float]:
            points.append((tr.global_step, counter.snapshot()))
            counter.paused = True
            try:
                return evaluate()
            finally:
                counter.paused = False

        def counted_rollout(epoch: int):
            epoch_rows.append(counter.snapshot())
            counter.phase = "rollout"
            try:
                return rollout(epoch)
            finally:
                counter.phase = "train"

        tr.evaluate, tr.rollout = counted_eval, counted_rollout
        result = tr.run()
        detach()
    finally:
        tr.close()
    epoch_rows.append(counter.snapshot())
    rows = read_jsonl_metrics(run_dir / "metrics.jsonl")
    live = {r["step"]: r[f"eval/{REWARD}"] for r in rows if f"eval/{REWARD}" in r}
    ema = {r["step"]: r[f"eval_ema/{REWARD}"] for r in rows if f"eval_ema/{REWARD}" in r}
    train_reward = [r[f"train/reward_{REWARD}"] for r in rows if f"train/reward_{REWARD}" in r]
    curve = [{"step": step, "fe": forward_equivalents(snap), "live": live.get(step), "ema": ema.get(step)}
             for step, snap in points]
    per_epoch = [_diff(b, a) for a, b in itertools.pairwise(epoch_rows)]
    return {"method": method, "seed": seed, "status": result.status, "seconds": time.perf_counter() - t0,
            "curve": curve, "train_reward": train_reward, "epoch_rows": per_epoch,
            "images_per_epoch": setup.prompts_per_epoch * setup.images_per_prompt}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def mean_curve(runs: list[dict[str, Any]], key: str = "live") -> list[tuple[int, float, float]]:
    """(step, mean FE, mean reward) over seeds at every eval step all seeds share."""
    steps = sorted(set.intersection(*({p["step"] for p in r["curve"]} for r in runs)))
    out = []
    for s in steps:
        pts = [next(p for p in r["curve"] if p["step"] == s) for r in runs]
        out.append((s, statistics.fmean(p["fe"] for p in pts), statistics.fmean(p[key] for p in pts)))
    return out


def compute_to_reach(curve: list[tuple[int, float, float]], target: float) -> float | None:
    """Forward-equivalents at which the mean curve first reaches ``target`` (linear between eval points)."""
    for (_, f0, r0), (_, f1, r1) in itertools.pairwise(curve):
        if r0 >= target:
            return f0
        if r1 >= target:
            return f0 + (f1 - f0) * (target - r0) / (r1 - r0)
    if curve and curve[-1][2] >= target:
        return curve[-1][1]
    return None


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-method figures and the speedups.

    ``speedup_vs_flow_grpo`` = FE Flow-GRPO's seed-mean curve needs to first reach its own final mean eval
    reward / FE the method's seed-mean curve needs to first reach that reward (the same rule for both). It is null, with
    ``speedup_note`` saying why, when Flow-GRPO did not run, when its final reward is not above the common
    starting reward (then there is nothing to reach), or when the method never reached it."""
    out: dict[str, Any] = {}
    curves = {m: mean_curve(rs) for m, rs in results.items() if rs}
    fg = curves.get("flow_grpo")
    target = fg[-1][2] if fg else None
    start = fg[0][2] if fg else None
    fg_fe = compute_to_reach(fg, target) if fg else None  # Flow-GRPO's own first crossing: its speedup is 1
    for m, rs in results.items():
        per_epoch = [forward_equivalents(e) for r in rs for e in r["epoch_rows"]]
        split: dict[str, float] = {}
        for r in rs:
            for e in r["epoch_rows"]:
                for k, v in e.items():
                    split[k] = split.get(k, 0.0) + v
        n_epochs = sum(len(r["epoch_rows"]) for r in rs)
        images = rs[0]["images_per_epoch"]
        m_fe, speedup, note = None, None, None
        if target is None:
            note = "flow_grpo was not run"
        elif target <= start:
            note = f"flow_grpo's final eval reward {target:.4f} is not above the start {start:.4f}: nothing to reach"
        else:
            m_fe = compute_to_reach(curves[m], target)
            if m_fe is None:
                note = f"did not reach flow_grpo's final eval reward {target:.4f} in {curves[m][-1][0]} epochs"
            else:
                speedup = fg_fe / m_fe
        out[m] = {
            "label": LABELS[m],
            "final_reward": _stats([r["curve"][-1]["live"] for r in rs]),
            "final_reward_ema": _stats([r["curve"][-1]["ema"] for r in rs]),
            # final minus starting live eval reward, per seed: > 0 = the method learned something
            "reward_gain": _stats([r["curve"][-1]["live"] - r["curve"][0]["live"] for r in rs]),
            "initial_reward": statistics.fmean(r["curve"][0]["live"] for r in rs),
            "best_reward_mean_curve": max(p[2] for p in curves[m]),
            "forward_equivalents_per_epoch": statistics.fmean(per_epoch),
            "forward_equivalents_per_image": statistics.fmean(per_epoch) / images,
            "rows_per_epoch": {k: v / n_epochs for k, v in sorted(split.items())},
            "fe_to_flow_grpo_final": m_fe,
            "speedup_vs_flow_grpo": speedup,
            "speedup_note": note,
            "seconds": statistics.fmean(r["seconds"] for r in rs),
        }
    out["flow_grpo_final_reward_target"] = target
    out["flow_grpo_fe_to_its_final"] = fg_fe
    return out


def write_csv(path: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "step", "forward_equivalents", f"eval_{REWARD}", f"eval_ema_{REWARD}"])
        for m, rs in results.items():
            for r in rs:
                for p in r["curve"]:
                    w.writerow([m, r["seed"], p["step"], p["fe"], p["live"], p["ema"]])


def plot(path: Path, results: dict[str, list[dict[str, Any]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for m, rs in results.items():
        if not rs:
            continue
        steps = sorted(set.intersection(*({p["step"] for p in r["curve"]} for r in rs)))
        ys = [[next(p["live"] for p in r["curve"] if p["step"] == s) for r in rs] for s in steps]
        fes = [statistics.fmean(next(p["fe"] for p in r["curve"] if p["step"] == s) for r in rs) for s in steps]
        mean = [statistics.fmean(y) for y in ys]
        lo, hi = [min(y) for y in ys], [max(y) for y in ys]
        for ax, x in ((axes[0], steps), (axes[1], fes)):
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{LABELS[m]} (n={len(rs)})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    axes[0].set_xlabel("epoch (= optimizer step)")
    axes[1].set_xlabel("counted transformer forward-equivalents (backward = 2)")
    axes[0].set_ylabel(f"eval {REWARD}, live weights\n(mean; band: min-max over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finish(out: Path, results: dict[str, list[dict[str, Any]]], setup: Setup) -> None:
    summary = summarise(results)
    summary["setup"] = {**setup.__dict__, "reward": REWARD, "model": "make_tiny (sd3, 64 px)"}
    write_csv(out / "curves.csv", results)
    if any(results.values()):
        plot(out / "method_compare.png", results,
             f"tiny SD3, {REWARD}, {setup.prompts_per_epoch}x{setup.images_per_prompt} images/epoch, "
             f"1 optimizer step/epoch, N={setup.num_steps}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "runs.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'curves.csv'}, {out / 'method_compare.png'}, {out / 'summary.json'}", flush=True)
    print(json.dumps(summary, separators=(",", ":")))


def _resummarise(out: Path) -> int:
    results = json.loads((out / "runs.json").read_text())
    old = json.loads((out / "summary.json").read_text())
    setup = Setup(**{k: old["setup"][k] for k in Setup.__dataclass_fields__})
    _finish(out, results, setup)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the test suite's mode: 1 seed, 2 epochs")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per method (full: 3)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (full: 12)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary one)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes of 1 torch thread each)")
    ap.add_argument("--resummarise", type=Path, default=None,
                    help="rebuild the summary, CSV and plot of an earlier --out folder from its runs.json (no training)")
    args = ap.parse_args(argv)
    if args.resummarise is not None:
        return _resummarise(args.resummarise)

    from trainers.awm.tiny import make_tiny

    setup = QUICK if args.quick else FULL
    if args.seeds is not None or args.epochs is not None:
        setup = Setup(**{**setup.__dict__, "seeds": args.seeds or setup.seeds, "epochs": args.epochs or setup.epochs})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="awm-method-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    model = make_tiny(out / "tiny-model")
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    todo = [(m, seed) for m in methods for seed in range(setup.seeds)]

    def report(r: dict[str, Any]) -> None:
        c = r["curve"]
        print(f"{r['method']} seed {r['seed']}: eval {c[0]['live']:.4f} -> {c[-1]['live']:.4f}, "
              f"{forward_equivalents(r['epoch_rows'][-1]):.0f} forward-equivalents/epoch, {r['seconds']:.0f} s",
              flush=True)

    if args.jobs > 1:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, m, seed, model, setup, out): (m, seed) for m, seed in todo}
            done = {}
            for f in as_completed(futures):
                done[futures[f]] = f.result()
                report(done[futures[f]])
        for m, seed in todo:
            results[m].append(done[(m, seed)])
    else:
        for m, seed in todo:
            results[m].append(run_one(m, seed, model, setup, out))
            report(results[m][-1])
    _finish(out, results, setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
