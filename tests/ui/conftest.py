"""A seeded platform store for the leaderboard's tests, written through the platform's own APIs.

`seeded` (session scope) builds it once in a temporary `$AWM_HOME`:

* 3 sweeps x 8 trials (runs `<sweep>-t<n>`, real resolved configs from configs/quickstart_sweep.yaml)
  x 10 checkpoints (steps 10..100) x 3 benchmarks (geneval with its six tags, ocr, pickscore), each
  evaluation run through the store's real protocol: ensure_evaluation -> claim_shard -> commit_shard
  (12 prompts x 2 samples of per-sample rows) -> complete_evaluation with the benchmark's own
  aggregate (GenEval: `aggregate_records`, per-tag sub scores; OCR/PickScore: per-prompt mean +
  bootstrap CI, as `Benchmark.aggregate`);
* images (tiny PNGs + their WebP thumbnails, `ImageCache.save` + `link_images`) for what the views
  show: every checkpoint of `alpha-t0` and `alpha-t1` (gallery, compare) and the base model;
* the base model's row (weights `base`), EMA rows for `alpha-t0`, a partial (`--limit 6`) evaluation,
  a failed one, and one extra checkpoint per run with no benchmark evaluation (the in-loop section:
  `eval/*` metrics only);
* real Optuna studies (SQLite) for `alpha` (1 objective) and `beta` (2 objectives: a Pareto front)
  with trials COMPLETE, PRUNED and FAIL; `gamma`'s recorded Optuna storage is a PostgreSQL URL with a
  password that nothing can reach: the pages must show it redacted (and its error state).

Tests only read it (the app opens it read-only); a test that must write copies `seeded.home`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image
from streamlit.testing.v1 import AppTest

from awm_platform.config import config_from_dict, config_hash, resolved_config
from awm_platform.evals import images
from awm_platform.evals.spec import EvalSpec, generation_key
from awm_platform.store import Store
from benchmarks.base import SampleRecord
from benchmarks.geneval.benchmark import aggregate_records
from benchmarks.geneval.prompts import TAGS

REPO = Path(__file__).resolve().parents[2]
SWEEPS = ("alpha", "beta", "gamma")
N_TRIALS = 8
STEPS = tuple(range(10, 101, 10))
INLOOP_STEP = 110  # a checkpoint with in-loop metrics only (no benchmark evaluation yet)
N_PROMPTS = 12
N_SAMPLES = 2
BENCHMARKS = ("geneval", "ocr", "pickscore")
VERSIONS = {"geneval": "geneval-official-1.0+0a1b2c3d4e5f", "ocr": "ocr-1.0+0a1b2c3d4e5f",
            "pickscore": "pickscore-1.0+0a1b2c3d4e5f"}
BASE_MODEL = "/models/tiny-sd3"
BASE_SHA = hashlib.sha256(b"base model").hexdigest()
PROMPT_SHA = hashlib.sha256(b"prompts").hexdigest()
#: what gamma's recorded Optuna storage holds; the pages must never show the password
SECRET = "Sup3r-S3cret-PW"
GAMMA_STORAGE = f"postgresql+psycopg://optuna:{SECRET}@127.0.0.1:1/optuna"
#: the MLflow server the pages link to (never contacted); its password must never show either
TRACKING_URI = f"http://ui:{SECRET}@127.0.0.1:5999"
IMAGE_RUNS = ("alpha-t0", "alpha-t1")
FAILED_RUN, FAILED_STEP = "beta-t3", 50
PARTIAL_RUN, PARTIAL_STEP = "alpha-t2", 100
EMA_RUN = "alpha-t0"
TRIAL_STATES = ("COMPLETE",) * 6 + ("PRUNED", "FAIL")
GENEVAL_PROMPTS = [f"a photo of {tag.replace('_', ' ')} number {i}" for i in range(N_PROMPTS // len(TAGS))
                   for tag in TAGS]


@dataclass
class Seeded:
    """What the seed wrote (tests compare the pages with it, and with the store itself)."""

    home: Path
    url: str
    optuna_url: str
    evals_root: Path
    runs: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)  # run -> its true quality (drives the scores)
    eval_ids: dict[tuple[str | None, int | None, str, str], int] = field(default_factory=dict)  # (run, step, bench, weights)
    partial_id: int = 0
    failed_id: int = 0
    failed_error: str = ""
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)  # benchmark -> policy spec
    seconds: float = 0.0

    def store(self) -> Store:
        return Store(self.url, upgrade=False, read_only=True)


def _spec(weights: str, limit: int | None = None) -> EvalSpec:
    return EvalSpec(model=BASE_MODEL, revision=None, family="sd3", sampler="ode", num_steps=6, guidance_scale=1.0,
                    resolution=64, samples_per_prompt=N_SAMPLES, precision="fp32", weights=weights,
                    prompt_set="test", limit=limit, seed=0, max_sequence_length=16, batch_size=8)


def _rows(bench: str, quality: float, rng: random.Random, n_prompts: int) -> list[dict[str, Any]]:
    """Per-sample rows shaped like each benchmark's `score_records`: GenEval 0/1 with its tag and
    prompt text; OCR a [0, 1] similarity; PickScore ~21 +- 1."""
    rows = []
    for p in range(n_prompts):
        for s in range(N_SAMPLES):
            if bench == "geneval":
                tag = TAGS[p % len(TAGS)]
                ok = rng.random() < min(0.95, quality * (0.6 + 0.15 * (p % 3)))
                rows.append({"prompt_index": p, "sample_index": s, "score": float(ok), "seed": p * 100 + s,
                             "extra": {"tag": tag, "prompt": GENEVAL_PROMPTS[p], "strict_correct": ok}})
            elif bench == "ocr":
                v = min(1.0, max(0.0, quality + rng.gauss(0.0, 0.08)))
                rows.append({"prompt_index": p, "sample_index": s, "score": v, "seed": p * 100 + s,
                             "extra": {"prompt": f'a sign that says "WORD{p}"'}})
            else:
                rows.append({"prompt_index": p, "sample_index": s, "score": 20.0 + 2.0 * quality + rng.gauss(0, 0.3),
                             "seed": p * 100 + s, "extra": {"prompt": f"a painting of a cat {p}"}})
    return rows


def _aggregate(bench: str, rows: list[dict[str, Any]]) -> tuple[float, float, float, dict[str, Any]]:
    """The benchmark's own aggregate of the rows (what the evaluation worker stores)."""
    records = [SampleRecord(r["prompt_index"], r["sample_index"], r["score"], dict(r["extra"])) for r in rows]
    if bench == "geneval":
        summary = aggregate_records(records, name="geneval", version=VERSIONS[bench], engine="test", n_boot=200)
        return summary.score, summary.ci_low, summary.ci_high, dict(summary.extra)
    per_prompt: dict[int, list[float]] = {}
    for r in records:
        per_prompt.setdefault(r.prompt_index, []).append(r.score)
    vals = np.array([np.mean(v) for _, v in sorted(per_prompt.items())])
    boot = np.random.default_rng(0).choice(vals, size=(200, vals.size)).mean(axis=1)
    lo, hi = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
    return float(vals.mean()), lo, hi, {"n_prompts": int(vals.size), "n_boot": 200, "seed": 0}


def _image(rng: random.Random) -> Image.Image:
    return Image.new("RGB", (24, 24), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))


class _Seeder:
    def __init__(self, store: Store, out: Seeded) -> None:
        self.store, self.out = store, out
        self.rng = random.Random(0)

    def evaluate(self, *, sha: str, bench: str, weights: str, quality: float, run: str | None, step: int | None,
                 checkpoint_path: str | None, target: str, with_images: bool, limit: int | None = None,
                 fail: str | None = None, checkpoint_id: int | None = None) -> int:
        spec = _spec(weights, limit)
        gen_key = generation_key(sha, spec, PROMPT_SHA)
        eval_key = hashlib.sha256(f"{sha}{bench}{spec.hash}".encode()).hexdigest()[:16]
        images_dir = images.eval_images_dir(eval_key, self.out.evals_root)
        ev, created = self.store.ensure_evaluation(
            checkpoint_sha256=sha, benchmark=bench, benchmark_version=VERSIONS[bench], spec_hash=spec.hash,
            spec=spec.model_dump(mode="json"), target=target, num_shards=1, run_name=run, step=step,
            checkpoint_id=checkpoint_id, checkpoint_path=checkpoint_path, partial=spec.partial, images_dir=str(images_dir))
        assert created
        n_prompts = limit or N_PROMPTS
        shard = self.store.claim_shard(ev.id, "seed", lease_s=600)
        assert shard is not None
        if fail is not None:
            assert self.store.fail_evaluation(ev.id, fail)
            return ev.id
        rows = _rows(bench, quality, self.rng, n_prompts)
        assert self.store.commit_shard(shard.id, "seed", rows)
        score, lo, hi, sub = _aggregate(bench, rows)
        assert self.store.complete_evaluation(ev.id, score=score, ci_low=lo, ci_high=hi, sub_scores=sub,
                                              num_samples=len(rows), wall_s=3.0, gpu_hours=0.001)
        if with_images:
            images.link_images(eval_key, gen_key, self.out.evals_root)
            cache = images.ImageCache(gen_key, self.out.evals_root)
            for p in range(n_prompts):
                for s in range(N_SAMPLES):
                    if not cache.path(p, s).exists():
                        cache.save(p, s, _image(self.rng))
        self.out.eval_ids[(run, step, bench, weights)] = ev.id
        return ev.id


def _study(storage: str, name: str, sweep_cfg: dict[str, Any], trials: list[tuple[int, dict[str, float], str,
                                                                                   list[float]]]) -> None:
    objectives = sweep_cfg["objective"]
    directions = [o["direction"] for o in (objectives if isinstance(objectives, list) else [objectives])]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    for number, params, state, values in trials:
        dists = {k: optuna.distributions.FloatDistribution(v["low"], v["high"], log=bool(v.get("log")))
                 for k, v in sweep_cfg["params"].items()}
        study.enqueue_trial(params)
        trial = study.ask(dists)
        assert trial.number == number and all(math.isclose(trial.params[k], v) for k, v in params.items())
        if state == "PRUNED":
            if len(directions) == 1:  # Optuna has no intermediate values for multi-objective trials
                trial.report(values[0], step=40)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "FAIL":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values if len(values) > 1 else values[0])


def seed(home: Path) -> Seeded:
    t0 = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    out = Seeded(home=home, url=f"sqlite:///{home / 'awm.db'}", optuna_url=f"sqlite:///{home / 'optuna.db'}",
                 evals_root=images.evals_root(home))
    base_yaml = yaml.safe_load((REPO / "configs" / "quickstart_sweep.yaml").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with Store(out.url) as store:
        seeder = _Seeder(store, out)
        for b in BENCHMARKS:
            seeder.evaluate(sha=BASE_SHA, bench=b, weights="base", quality=0.35, run=None, step=None,
                            checkpoint_path=None, target=f"base:{BASE_MODEL}", with_images=True)
        out.specs = {b: _spec("policy").model_dump(mode="json") for b in BENCHMARKS}
        for si, sweep in enumerate(SWEEPS):
            data = dict(base_yaml, name=sweep)
            data["pretrained"] = dict(base_yaml["pretrained"], model=BASE_MODEL)
            data["tags"] = ["leaderboard-test", f"family:{sweep}"]
            if sweep == "beta":  # two objectives: the sweeps page draws a Pareto front
                data["sweep"] = dict(base_yaml["sweep"], objective=[
                    {"metric": "eval/jpeg_compressibility", "direction": "maximize"},
                    {"metric": "train/reward_avg", "direction": "maximize"}],
                    sampler={"name": "nsga2", "seed": 0}, pruner={"name": "none"})
            cfg = config_from_dict(data)
            storage = GAMMA_STORAGE if sweep == "gamma" else out.optuna_url
            store.create_sweep(study_name=sweep, optuna_storage=storage, mlflow_parent_run_id=f"parent{si}" * 4,
                               config_hash=config_hash(cfg), resolved_config=resolved_config(cfg))
            trials = []
            for n in range(N_TRIALS):
                name = f"{sweep}-t{n}"
                beta = 10 ** (-4 + 2 * ((n * 3 + si) % N_TRIALS) / (N_TRIALS - 1))
                power = round(0.1 + 0.9 * ((n * 5 + si) % N_TRIALS) / (N_TRIALS - 1), 4)
                quality = 0.3 + 0.6 * (1 - abs(math.log10(beta) + 3) / 2) * (0.5 + 0.5 * power)
                out.quality[name] = quality
                out.runs.append(name)
                state = TRIAL_STATES[n]
                run_data = dict(data, name=name, seed=n)
                run_data.pop("sweep")
                run_data["train"] = dict(data["train"], beta=beta, ghuber_power=power)
                run_cfg = config_from_dict(run_data)
                run_dir = home / "runs" / name
                store.create_run(name=name, config_hash=config_hash(run_cfg), resolved_config=resolved_config(run_cfg),
                                 output_dir=run_dir, cluster="local", sweep_name=sweep, trial_number=n,
                                 status={"COMPLETE": "COMPLETED", "PRUNED": "CANCELLED", "FAIL": "FAILED"}[state])
                store.add_gpu_hours(name, gpu_hours=0.5 + 0.1 * n)
                store.update_run(name, mlflow_run_id=hashlib.sha256(name.encode()).hexdigest()[:32])
                steps = STEPS if state != "FAIL" else STEPS[:4]
                for step in (*steps, INLOOP_STEP):
                    q = quality * (0.6 + 0.4 * step / STEPS[-1])
                    store.log_metrics(name, {"train/reward_avg": q, "eval/jpeg_compressibility": q * 0.9,
                                             "eval_ema/jpeg_compressibility": q * 0.92}, step=step)
                    sha = hashlib.sha256(f"{name}/{step}".encode()).hexdigest()
                    path = run_dir / "checkpoints" / f"checkpoint-{step}"
                    ck = store.add_checkpoint(name, step=step, path=path, sha256=sha, formats=["diffusers"]).id
                    if step == INLOOP_STEP:
                        continue
                    for bench in BENCHMARKS:
                        fail = None
                        if (name, step, bench) == (FAILED_RUN, FAILED_STEP, "ocr"):
                            fail = "shard 0: CUDA out of memory (tried to allocate 2.00 GiB)"
                        ev_id = seeder.evaluate(sha=sha, bench=bench, weights="policy", quality=q, run=name, step=step,
                                                checkpoint_path=str(path), target=f"run:{name}@{step}", checkpoint_id=ck,
                                                with_images=name in IMAGE_RUNS and bench != "pickscore", fail=fail)
                        if fail:
                            out.failed_id, out.failed_error = ev_id, fail
                        if name == EMA_RUN and step in (50, 100):
                            seeder.evaluate(sha=sha, bench=bench, weights="ema", quality=q + 0.03, run=name,
                                            step=step, checkpoint_path=str(path), target=f"run:{name}@{step}",
                                            with_images=False, checkpoint_id=ck)
                        if (name, step, bench) == (PARTIAL_RUN, PARTIAL_STEP, "ocr"):
                            out.partial_id = seeder.evaluate(
                                sha=sha, bench=bench, weights="policy", quality=q, run=name, step=step,
                                checkpoint_path=str(path), target=f"run:{name}@{step}", with_images=False, limit=6,
                                checkpoint_id=ck)
                final = quality
                values = [final, final * 1.1 - 0.2 * power] if sweep == "beta" else [final]
                trials.append((n, {"train.beta": beta, "train.ghuber_power": power}, state, values))
            if sweep != "gamma":
                _study(out.optuna_url, sweep, data["sweep"], trials)
            if si < 2:
                store.update_sweep(sweep, status="COMPLETED")
    out.seconds = time.monotonic() - t0
    return out


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """The seeded store (module docstring); built once per test session."""
    home = (tmp_path_factory.mktemp("leaderboard") / "awm_home").resolve()
    prev = os.environ.get("AWM_HOME")
    os.environ["AWM_HOME"] = str(home)  # anything that defaults to $AWM_HOME while seeding lands there
    try:
        out = seed(home)
    finally:
        if prev is None:
            os.environ.pop("AWM_HOME", None)
        else:
            os.environ["AWM_HOME"] = prev
    yield out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class UiServer:
    """`awm ui` running on the seeded store (its own process group, stopped by pid at the end)."""

    proc: subprocess.Popen[str]
    port: int
    base_url: str
    log: Path


def start_ui(seeded: Seeded, log: Path, *extra: str, timeout: float = 60.0) -> UiServer:
    port = free_port()
    env = {**os.environ, "AWM_HOME": str(seeded.home)}
    env.pop("AWM_UI_DB_URL", None)
    with log.open("w") as fh:
        # no --db: the default is $AWM_HOME's store, where the seed wrote it
        proc = subprocess.Popen([str(Path(sys.executable).parent / "awm"), "ui", "--port", str(port),
                                 "--tracking-uri", TRACKING_URI, *extra], stdout=fh, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"awm ui exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return UiServer(proc=proc, port=port, base_url=base, log=log)
        except OSError:
            time.sleep(0.2)
    stop_ui(proc)
    raise AssertionError(f"awm ui did not answer within {timeout} s: {log.read_text()[-2000:]}")


def stop_ui(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ui_server(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    server = start_ui(seeded, tmp_path_factory.mktemp("ui") / "awm-ui.log")
    try:
        yield server
    finally:
        stop_ui(server.proc)


APP_FILE = REPO / "platform" / "ui" / "app.py"


@pytest.fixture
def open_page(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """open_page(view=..., **query params) -> the app rendered in AppTest against the seeded store
    (as `awm ui` starts it: the URLs in environment variables, $AWM_HOME the seed's)."""
    monkeypatch.setenv("AWM_HOME", str(seeded.home))
    monkeypatch.setenv("AWM_UI_DB_URL", seeded.url)
    monkeypatch.setenv("AWM_UI_TRACKING_URI", TRACKING_URI)

    def run(**params: Any) -> AppTest:
        at = AppTest.from_file(str(APP_FILE), default_timeout=60)
        for k, v in params.items():
            at.query_params[k.replace("__", ".")] = str(v)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return run


def page_text(at: AppTest) -> str:
    """Everything a page shows as text: markdown, captions, alerts, code, metrics, tables, JSON."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "error", "warning", "info", "success",
                 "code", "json", "text"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [df.value.to_csv() for df in at.dataframe]
    parts += [" ".join(map(str, w.options)) for w in (*at.selectbox, *at.multiselect)]
    parts += [" ".join(img.captions) for img in at.get("image")]
    return "\n".join(parts)
