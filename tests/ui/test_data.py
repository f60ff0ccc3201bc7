"""Contract tests of the leaderboard's SQL read layer (awm_platform.ui.data) on SQLite AND PostgreSQL.

A small store is seeded through the platform's own Store API (runs with their configs, sweeps,
checkpoints, evaluations through ensure -> claim -> commit -> complete, metrics); every answer is
checked against an oracle computed in Python from what the seed wrote, so both backends must
give the same results."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from awm_platform.store import NotFoundError, Store, compare_hash
from awm_platform.ui import data
from awm_platform.ui.data import Filters, LeaderboardQuery, ParamFilter

BENCHES = ("geneval", "ocr")
TAGS = ("colors", "counting", "position")
N_PROMPTS = 9
RUNS = [f"r{i}" for i in range(6)]
SWEEP = "s1"
STEPS = (10, 20, 30)
INLOOP_STEP = 40


def sha(*parts: Any) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def spec(weights: str, num_steps: int = 40, limit: int | None = None) -> dict[str, Any]:
    return {"model": "m/base", "num_steps": num_steps, "seed": 0, "weights": weights, "limit": limit}


@dataclass
class Seed:
    store: Store
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # row key -> oracle fields
    base_key: str = ""
    base_scores: dict[str, float] = field(default_factory=dict)
    partial_id: int = 0
    failed_id: int = 0
    other_view_id: int = 0
    eval_ids: dict[tuple[str, int, str, str], int] = field(default_factory=dict)


def _evaluate(s: Seed, rng: random.Random, *, key_sha: str, bench: str, sp: dict[str, Any], quality: float,
              run: str | None, step: int | None, fail: bool = False) -> int:
    version = f"{bench}-1"
    spec_hash = hashlib.sha256(repr(sorted(sp.items())).encode()).hexdigest()[:16]
    ev, created = s.store.ensure_evaluation(
        checkpoint_sha256=key_sha, benchmark=bench, benchmark_version=version, spec_hash=spec_hash, spec=sp,
        target=f"{run}@{step}" if run else "base:m/base", num_shards=1, run_name=run, step=step,
        partial=sp["limit"] is not None)
    assert created
    shard = s.store.claim_shard(ev.id, "seed", lease_s=600)
    if fail:
        assert s.store.fail_evaluation(ev.id, "boom")
        return ev.id
    n = sp["limit"] or N_PROMPTS
    rows = []
    for p in range(n):
        for k in range(2):
            if bench == "geneval":
                score = float(rng.random() < quality)
                extra = {"tag": TAGS[p % len(TAGS)], "prompt": f"prompt {p % 6}"}  # repeated texts: units
            else:
                score = min(1.0, max(0.0, quality + rng.gauss(0, 0.05)))
                extra = {"prompt": f"sign {p}"}
            rows.append({"prompt_index": p, "sample_index": k, "score": score, "seed": p * 10 + k, "extra": extra})
    assert s.store.commit_shard(shard.id, "seed", rows)
    assert s.store.complete_evaluation(ev.id, score=quality, ci_low=quality - 0.05, ci_high=quality + 0.05,
                                       sub_scores={}, num_samples=len(rows))
    return ev.id


def seed_store(store: Store) -> Seed:
    s = Seed(store)
    rng = random.Random(0)
    store.create_sweep(study_name=SWEEP, optuna_storage="sqlite:////nonexistent/dir/optuna.db",
                       resolved_config={"sweep": {"params": {"train.beta": {}, "lora.rank": {}},
                                                  "objective": [{"metric": "eval/r", "direction": "maximize"}]}})
    s.base_key = f"{sha('base')}:base"
    for b in BENCHES:
        s.base_scores[b] = 0.2
        _evaluate(s, rng, key_sha=sha("base"), bench=b, sp=spec("base"), quality=0.2, run=None, step=None)
    for i, run in enumerate(RUNS):
        conf = {"pretrained": {"model": "m/A" if i % 2 == 0 else "m/B", "family": "sd3"}, "seed": i,
                "train": {"beta": 0.1 * (i + 1), "weighting": "ghuber" if i < 3 else "huber"},
                "lora": {"rank": 4 * (i + 1)}, "tags": ["even" if i % 2 == 0 else "odd", *(["top"] if i == 5 else [])]}
        in_sweep = i < 4
        store.create_run(name=run, config_hash="h", resolved_config=conf, output_dir=f"/runs/{run}",
                         sweep_name=SWEEP if in_sweep else None, trial_number=i if in_sweep else None,
                         status="COMPLETED")
        store.add_gpu_hours(run, gpu_hours=1.0 + i)
        for step in (*STEPS, INLOOP_STEP):
            store.add_checkpoint(run, step=step, path=f"/runs/{run}/ckpt-{step}", sha256=sha(run, step),
                                 formats=["diffusers"])
            store.log_metrics(run, {"eval/r": i + step / 100, "train/reward_avg": i * 0.1 + step / 1000}, step=step)
            if step == INLOOP_STEP:
                continue
            scores: dict[str, float] = {}
            for b in BENCHES:
                if (i, step, b) == (5, 30, "geneval"):  # no geneval score: sorts last
                    continue
                if (i, step, b) == (2, 30, "geneval"):
                    s.failed_id = _evaluate(s, rng, key_sha=sha(run, step), bench=b, sp=spec("policy"), quality=0.5,
                                            run=run, step=step, fail=True)
                    continue
                q = round(0.3 + 0.1 * i + 0.01 * step / 10 + (0.001 if b == "ocr" else 0.0), 6)
                s.eval_ids[(run, step, b, "policy")] = _evaluate(s, rng, key_sha=sha(run, step), bench=b,
                                                                 sp=spec("policy"), quality=q, run=run, step=step)
                scores[b] = q
            s.rows[f"{sha(run, step)}:policy"] = {"run": run, "step": step, "scores": scores, "sweep": SWEEP if
                                                  in_sweep else None, "beta": 0.1 * (i + 1), "gpu": 1.0 + i,
                                                  "model": conf["pretrained"]["model"], "weights": "policy",
                                                  "tags": set(conf["tags"])}
    # the EMA weights of r0@20, a second ocr spec (not the default view), a partial one
    s.eval_ids[("r0", 20, "ocr", "ema")] = _evaluate(s, rng, key_sha=sha("r0", 20), bench="ocr", sp=spec("ema"),
                                                     quality=0.95, run="r0", step=20)
    s.rows[f"{sha('r0', 20)}:ema"] = dict(s.rows[f"{sha('r0', 20)}:policy"], weights="ema", scores={"ocr": 0.95})
    s.other_view_id = _evaluate(s, rng, key_sha=sha("r0", 10), bench="ocr", sp=spec("policy", num_steps=10),
                                quality=0.99, run="r0", step=10)
    s.partial_id = _evaluate(s, rng, key_sha=sha("r1", 30), bench="ocr", sp=spec("policy", limit=3), quality=0.9,
                             run="r1", step=30)
    return s


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def seeded_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    if request.param == "sqlite":
        url, drop = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'store.db'}", None
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database(prefix="awm_ui")
        drop = (server, url.rsplit("/", 1)[1])
    store = Store(url)
    try:
        yield seed_store(store)
    finally:
        store.close()
        if drop is not None:
            drop[0].drop_database(drop[1])


def oracle(s: Seed, *, sort_bench: str = "geneval", keep: Any = lambda r: True) -> list[str]:
    """Row keys sorted by score desc (missing last), ties by key: what the leaderboard must return."""
    rows = [(k, r) for k, r in s.rows.items() if keep(r) and r["scores"]]
    have = sorted((k for k, r in rows if sort_bench in r["scores"]), key=lambda k: (-s.rows[k]["scores"][sort_bench], k))
    missing = sorted(k for k, r in rows if sort_bench not in r["scores"])
    return have + missing


def keys(page: data.LeaderboardPage) -> list[str]:
    return [r.key for r in page.rows]


def by_run_rows(s: Seed) -> list[data.LeaderboardRow]:
    """Every row, read from the pivot (a sort on the run), with the seed's scores and CIs checked."""
    rows = data.leaderboard(s.store, LeaderboardQuery(sort="run", page_size=500)).rows
    for r in rows:
        assert {b: sc.score for b, sc in r.scores.items()} == pytest.approx(s.rows[r.key]["scores"]), r.key
        assert all(sc.ci_low < sc.score < sc.ci_high for sc in r.scores.values()), r.key
    return rows


# -------------------------------------------------------------------------- tests ----
def test_default_view_columns_and_base_row(seeded_store: Seed) -> None:
    s = seeded_store
    page = data.leaderboard(s.store, LeaderboardQuery(page_size=500))
    assert page.benchmarks == list(BENCHES)
    assert page.views["ocr"].compare_hash == compare_hash("ocr", "ocr-1", spec("policy"), False)
    assert page.views["ocr"].is_default and "weights" not in page.views["ocr"].spec
    assert keys(page) == oracle(s) and data.leaderboard_total(s.store, Filters()) == len(s.rows)
    assert s.other_view_id not in {sc.evaluation_id for r in page.rows for sc in r.scores.values()}
    assert [(r.key, r.is_base, {b: sc.score for b, sc in r.scores.items()}) for r in page.base_rows] == [
        (s.base_key, True, s.base_scores)]
    row = next(r for r in page.rows if r.key == f"{sha('r3', 20)}:policy")
    assert (row.run_name, row.step, row.sweep_name, row.trial_number, row.method, row.base_model) == (
        "r3", 20, SWEEP, 3, "awm", "m/B")
    assert row.scores["ocr"].evaluation_id == s.eval_ids[("r3", 20, "ocr", "policy")]
    assert row.params["train.beta"] == pytest.approx(0.4) and row.params["lora.rank"] == 16.0
    assert row.params["tags"] == "odd"
    # GPU-hours up to the checkpoint: the run's 4.0 h x step 20 / last checkpointed step 40
    assert row.gpu_hours == pytest.approx(4.0 * 20 / 40)
    assert row.reward_per_gpu_hour == pytest.approx((row.scores["geneval"].score - 0.2) / row.gpu_hours)


def test_sorts_and_pagination(seeded_store: Seed) -> None:
    s = seeded_store
    assert keys(data.leaderboard(s.store, LeaderboardQuery(sort="score:ocr", page_size=500))) == oracle(
        s, sort_bench="ocr")
    asc = keys(data.leaderboard(s.store, LeaderboardQuery(sort="score:geneval", descending=False, page_size=500)))
    have = [k for k in oracle(s) if "geneval" in s.rows[k]["scores"]]
    assert asc == sorted(have, key=lambda k: (s.rows[k]["scores"]["geneval"], k)) + [
        k for k in oracle(s) if k not in have]  # missing scores last whatever the direction
    pages = [data.leaderboard(s.store, LeaderboardQuery(page=p, page_size=7)) for p in range(4)]
    assert [k for pg in pages for k in keys(pg)] == oracle(s) and keys(pages[-1]) == []
    by_run = keys(data.leaderboard(s.store, LeaderboardQuery(sort="run", descending=False, page_size=500)))
    assert [s.rows[k]["run"] for k in by_run] == sorted(s.rows[k]["run"] for k in s.rows)
    by_beta = data.leaderboard(s.store, LeaderboardQuery(sort="param:train.beta", page_size=500)).rows
    assert [r.params["train.beta"] for r in by_beta] == sorted((r.params["train.beta"] for r in by_beta),
                                                                reverse=True)
    by_gpu = data.leaderboard(s.store, LeaderboardQuery(sort="gpu_hours", descending=False, page_size=500)).rows
    assert [r.gpu_hours for r in by_gpu] == sorted(r.gpu_hours for r in by_gpu)
    # the SQL that sorts and the Python that shows GPU-hours and reward per GPU-hour agree
    by_reward = data.leaderboard(s.store, LeaderboardQuery(sort="reward_per_gpu_hour", page_size=500)).rows
    shown = [r.reward_per_gpu_hour for r in by_reward if r.reward_per_gpu_hour is not None]
    assert len(shown) > 3 and shown == sorted(shown, reverse=True)
    assert all(r.reward_per_gpu_hour is None for r in by_reward[len(shown):])  # missing last
    # every sort, paged: full pages sorted by a score are read from its view in score order, the
    # page reaching the rows without that score by the pivot; both give the one ordering
    # and the same rows, whole: a page read in score order takes its sort view's evaluation columns
    # from the keys' own scan (the other views joined), the pivot joins every view
    pivoted = {r.key: r._replace(reward_per_gpu_hour=None) for r in by_run_rows(s)}
    for sort, desc in itertools.product(("", "score:ocr", *data.SORT_KEYS), (True, False)):
        whole = keys(data.leaderboard(s.store, LeaderboardQuery(sort=sort, descending=desc, page_size=500)))
        paged_rows = [r for p in range(-(-len(s.rows) // 3)) for r in data.leaderboard(
            s.store, LeaderboardQuery(sort=sort, descending=desc, page=p, page_size=3)).rows]
        assert [r.key for r in paged_rows] == whole and len(whole) == len(s.rows), (sort, desc)
        assert {r.key: r._replace(reward_per_gpu_hour=None) for r in paged_rows} == pivoted, (sort, desc)
    with pytest.raises(ValueError, match="unknown sort key 'bogus'; valid: score:<benchmark>"):
        data.leaderboard(s.store, LeaderboardQuery(sort="bogus"))
    with pytest.raises(ValueError, match="no benchmark 'nope'"):
        data.leaderboard(s.store, LeaderboardQuery(sort="score:nope"))
    with pytest.raises(ValueError, match="page_size must be 1..500"):
        data.leaderboard(s.store, LeaderboardQuery(page_size=501))


@pytest.mark.parametrize("filters, keep", [
    (Filters(sweeps=(SWEEP,)), lambda r: r["sweep"] == SWEEP),
    (Filters(runs=("r1", "r4*")), lambda r: r["run"] in ("r1", "r4")),
    (Filters(tags=("odd",)), lambda r: "odd" in r["tags"]),
    (Filters(base_models=("m/A",)), lambda r: r["model"] == "m/A"),
    (Filters(methods=("awm",), weights=("ema",)), lambda r: r["weights"] == "ema"),
    (Filters(params=(ParamFilter("train.beta", low=0.25, high=0.45),)), lambda r: 0.25 <= r["beta"] <= 0.45),
    (Filters(params=(ParamFilter("train.weighting", values=("huber",)),)), lambda r: r["run"] in ("r3", "r4", "r5")),
    (Filters(sweeps=(SWEEP,), tags=("even",), params=(ParamFilter("lora.rank", low=5),)),
     lambda r: r["run"] == "r2"),
    (Filters(methods=("other",)), lambda r: False),
], ids=["sweep", "run-glob", "tag", "base-model", "weights", "param-range", "param-text", "combined", "method"])
def test_filters_select_in_sql(seeded_store: Seed, filters: Filters, keep: Any) -> None:
    page = data.leaderboard(seeded_store.store, LeaderboardQuery(filters=filters, page_size=500))
    assert keys(page) == oracle(seeded_store, keep=keep)
    assert data.leaderboard_total(seeded_store.store, filters) == len(page.rows)
    assert len(page.base_rows) == 1  # base rows: never filtered
    paged = [k for p in range(-(-len(page.rows) // 2)) for k in keys(data.leaderboard(
        seeded_store.store, LeaderboardQuery(filters=filters, page=p, page_size=2)))]
    assert paged == keys(page)  # full pages by the score index, the rest by the pivot: the same rows


def test_date_filter_and_spec_choice(seeded_store: Seed) -> None:
    s = seeded_store
    today = datetime.now(UTC).date()
    assert data.leaderboard_total(s.store, Filters(since=today, until=today)) == len(s.rows)
    assert data.leaderboard_total(s.store, Filters(since=today + timedelta(days=1))) == 0
    assert data.leaderboard_total(s.store, Filters(until=today - timedelta(days=1))) == 0
    assert keys(data.leaderboard(s.store, LeaderboardQuery(filters=Filters(since=today + timedelta(days=1)),
                                                           page_size=1))) == []
    other = compare_hash("ocr", "ocr-1", spec("policy", num_steps=10), False)
    page = data.leaderboard(s.store, LeaderboardQuery(filters=Filters(specs=(("ocr", other),)), sort="score:ocr"))
    assert page.views["ocr"].compare_hash == other and not page.views["ocr"].is_default
    assert page.rows[0].scores["ocr"].evaluation_id == s.other_view_id and page.rows[0].key == f"{sha('r0', 10)}:policy"
    with pytest.raises(ValueError, match="no completed full evaluations of 'ocr' with spec 'nope'"):
        data.leaderboard(s.store, LeaderboardQuery(filters=Filters(specs=(("ocr", "nope"),))))


def test_filter_options_and_change_marker(seeded_store: Seed) -> None:
    s = seeded_store
    opts = data.filter_options(s.store)
    assert (opts.sweeps, opts.runs, opts.methods, opts.base_models, opts.tags) == (
        [SWEEP], RUNS, ["awm"], ["m/A", "m/B"], ["even", "odd", "top"])
    # lora.rank is a swept key: recorded for the sweep's runs (r0..r3) only
    assert opts.params["train.beta"] == pytest.approx((0.1, 0.6)) and opts.params["lora.rank"] == (4.0, 16.0)
    assert opts.params["train.weighting"] == ["ghuber", "huber"]
    assert [v.n_completed for v in opts.views["ocr"]] == [len(RUNS) * len(STEPS) + 2, 1]  # + base + EMA
    assert [v.is_default for v in opts.views["ocr"]] == [True, False]
    assert opts.first_date == opts.last_date == datetime.now(UTC).date()
    before = data.change_marker(s.store)
    assert data.change_marker(s.store) == before
    s.store.log_metrics("r0", {"eval/r": 9.0}, step=41)
    assert data.change_marker(s.store) != before


def test_partial_failed_and_inloop_are_apart(seeded_store: Seed) -> None:
    s = seeded_store
    partial = data.partial_evaluations(s.store, Filters())
    assert [(r.run_name, r.step, r.scores["ocr"].evaluation_id) for r in partial] == [("r1", 30, s.partial_id)]
    assert data.partial_evaluations(s.store, Filters(runs=("r2",))) == []
    ids = {sc.evaluation_id for r in data.leaderboard(s.store, LeaderboardQuery(page_size=500)).rows
           for sc in r.scores.values()}
    assert s.partial_id not in ids and s.failed_id not in ids
    inloop = data.inloop_rows(s.store, Filters())
    assert sorted((r.run_name, r.step) for r in inloop) == sorted((run, INLOOP_STEP) for run in RUNS)
    r0 = next(r for r in inloop if r.run_name == "r0")
    assert r0.metrics == {"eval/r": pytest.approx(0.4)}  # eval/r at step 40; train/* is not in-loop eval
    assert [r.run_name for r in data.inloop_rows(s.store, Filters(tags=("top",)))] == ["r5"]


def test_checkpoint_run_and_curves(seeded_store: Seed) -> None:
    s = seeded_store
    detail = data.checkpoint_detail(s.store, "r2", 30)
    assert (detail.step, detail.sha256, detail.run.sweep_name, detail.run.base_model) == (30, sha("r2", 30), SWEEP, "m/A")
    assert sorted((e.benchmark, e.status) for e in detail.evaluations) == [("geneval", "FAILED"), ("ocr", "COMPLETED")]
    assert data.evaluation_info(s.store, s.failed_id).error == "boom"
    with pytest.raises(NotFoundError):
        data.checkpoint_detail(s.store, "r2", 99)
    with pytest.raises(NotFoundError):
        data.run_info(s.store, "nope")
    curves = data.run_curves(s.store, "r1")
    assert curves.train_reward == [(st, pytest.approx(0.1 + st / 1000)) for st in (*STEPS, INLOOP_STEP)]
    assert list(curves.inloop) == ["eval/r"]
    assert [p[:2] for p in curves.benchmarks[("ocr", "policy")]] == [
        (st, pytest.approx(s.rows[f"{sha('r1', st)}:policy"]["scores"]["ocr"])) for st in STEPS]
    assert data.config_diff({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 1, "c": 3}, "e": 5}) == [
        ("a.c", 2, 3), ("d", 1, None), ("e", None, 5)]


def test_compare_reads(seeded_store: Seed) -> None:
    s = seeded_store
    view = compare_hash("ocr", "ocr-1", spec("policy"), False)
    row_keys = [f"{sha('r0', 20)}:policy", f"{sha('r0', 20)}:ema", s.base_key, f"{sha('zz')}:policy"]
    found = data.comparable_evaluations(s.store, row_keys, "ocr", view)
    assert list(found) == row_keys[:3]  # the unknown row has none
    assert found[row_keys[1]].id == s.eval_ids[("r0", 20, "ocr", "ema")]
    m = data.sample_matrix(s.store, [e.id for e in found.values()])
    assert len(m.keys) == N_PROMPTS * 2 and m.prompts[3] == "sign 3" and m.seeds[(3, 1)] == 31
    means = {p: [sum(sc[(p, k)] for k in range(2)) / 2 for sc in m.scores.values()] for p in range(N_PROMPTS)}
    spread = sorted(means, key=lambda p: (-(max(means[p]) - min(means[p])), p))
    assert data.disagreement(m, 3) == spread[:3]
    gid = s.eval_ids[("r3", 10, "geneval", "policy")]
    fig = data.geneval_figures(s.store, gid)
    rows = s.store.get_sample_scores(gid)
    assert fig["n_images"] == len(rows) and fig["correct_images"] == sum(r.score for r in rows)
    assert fig["correct_prompts"] == len({r.prompt_index for r in rows if r.score == 1.0})
    assert set(fig["per_tag"]) == set(TAGS)


def test_rank_rows_match_pairwise_tests(seeded_store: Seed) -> None:
    from awm_platform.evals.stats import compare_evaluations

    s = seeded_store
    rows = data.leaderboard(s.store, LeaderboardQuery(sort="score:geneval", page_size=6)).rows
    ranks = data.rank_rows(s.store, rows, "geneval", n_boot=400)
    assert [ranks[r.key].rank for r in rows] == list(range(1, 7))
    for a in rows:
        for b in rows:
            if a.key < b.key:
                cmp = compare_evaluations(s.store, a.scores["geneval"].evaluation_id,
                                          b.scores["geneval"].evaluation_id, n_boot=400, n_perm=10)
                if not cmp.tied:  # significantly apart: the ranks cannot overlap on that side
                    better, worse = (b, a) if cmp.diff > 0 else (a, b)
                    assert ranks[better.key].low < ranks[worse.key].low or ranks[better.key].high < ranks[worse.key].high


def test_sweeps_without_a_reachable_study(seeded_store: Seed) -> None:
    s = seeded_store
    [info] = data.sweep_list(s.store)
    assert (info.name, info.n_trials, info.n_completed, info.gpu_hours) == (SWEEP, 4, 4, 1.0 + 2.0 + 3.0 + 4.0)
    detail = data.sweep_detail(s.store, SWEEP)
    assert detail.error is not None and "cannot open the Optuna study 's1'" in detail.error
    assert [(t.number, t.run_name, t.state) for t in detail.trials] == [(i, f"r{i}", "COMPLETE") for i in range(4)]
    assert detail.objectives == [{"metric": "eval/r", "direction": "maximize"}]
    assert set(detail.search_space) == {"train.beta", "lora.rank"}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_tied_scores_page_the_same_both_ways(backend: str, tmp_path, request: pytest.FixtureRequest) -> None:
    """Ties on the sort score go by (checkpoint sha256, weights) ascending in both directions, whether a
    page is read in score order from the view's index (full pages) or from the pivot (the last one)."""
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_db")
    with Store(url) as store:
        records, want = [], {}
        for i in range(9):
            for weights in ("policy", "ema"):
                scores = {"ocr": (0.5, 0.7, 0.7)[i % 3]}  # three rows share each score
                if i % 2 == 0:
                    scores["geneval"] = 0.25 if i < 4 else 0.75
                key = f"{sha('tie', i)}:{weights}"
                want[key] = scores
                records += [{"checkpoint_sha256": sha("tie", i), "benchmark": b, "benchmark_version": f"{b}-1",
                             "spec_hash": f"{b}-{weights}", "spec": spec(weights), "target": f"t{i}",
                             "score": v, "ci_low": v, "ci_high": v, "num_samples": 1} for b, v in scores.items()]
        store.import_evaluations(records)
        for bench, desc in itertools.product(("ocr", "geneval"), (True, False)):
            have = sorted((k for k in want if bench in want[k]),
                          key=lambda k: ((-1 if desc else 1) * want[k][bench], k))
            expected = have + sorted(k for k in want if bench not in want[k])  # missing last, by key
            query = LeaderboardQuery(sort=f"score:{bench}", descending=desc)
            whole = keys(data.leaderboard(store, replace(query, page_size=500)))
            paged = [k for p in range(9) for k in keys(data.leaderboard(store, replace(query, page=p, page_size=2)))]
            assert whole == paged == expected, (bench, desc)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_default_view_follows_new_evaluations(backend: str, tmp_path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_db")
    with Store(url) as store:
        s, rng = Seed(store), random.Random(1)
        _evaluate(s, rng, key_sha=sha("a"), bench="ocr", sp=spec("policy"), quality=0.5, run=None, step=None)
        first = compare_hash("ocr", "ocr-1", spec("policy"), False)
        assert data.leaderboard(store, LeaderboardQuery()).views["ocr"].compare_hash == first
        for k in ("b", "c"):  # another spec overtakes it: the cached views are recomputed
            _evaluate(s, rng, key_sha=sha(k), bench="ocr", sp=spec("policy", num_steps=8), quality=0.5, run=None,
                      step=None)
        page = data.leaderboard(store, LeaderboardQuery())
        assert page.views["ocr"].compare_hash == compare_hash("ocr", "ocr-1", spec("policy", num_steps=8), False)
        assert data.leaderboard_total(store, Filters()) == 2 and page.views["ocr"].n_completed == 2
        # a run's evaluations make a third spec the default; deleting the run (its evaluations go with
        # its checkpoints) brings the previous default back: the cache key sees deletions too
        store.create_run(name="gone", config_hash="h", resolved_config={}, output_dir="/gone")
        sp4 = spec("policy", num_steps=4)
        records = []
        for step in (1, 2, 3, 4):
            ck = store.add_checkpoint("gone", step=step, path=f"/gone/{step}", sha256=sha(f"g{step}"), formats=[])
            records.append({"checkpoint_sha256": ck.sha256, "checkpoint_id": ck.id, "benchmark": "ocr",
                            "benchmark_version": "ocr-1", "spec_hash": "s4", "spec": sp4, "target": f"gone@{step}",
                            "run_name": "gone", "step": step, "score": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                            "num_samples": 4})
        store.import_evaluations(records)
        # written last: the largest id and updated_at survive the deletion below
        _evaluate(s, rng, key_sha=sha("d"), bench="ocr", sp=spec("policy", num_steps=8), quality=0.5, run=None,
                  step=None)
        assert data.leaderboard(store, LeaderboardQuery()).views["ocr"].compare_hash == compare_hash(
            "ocr", "ocr-1", sp4, False)
        store.delete_run("gone")
        # ... and another run created at once (on SQLite it takes the deleted one's id: the number of
        # runs and the largest id are as they were before the deletion)
        store.create_run(name="again", config_hash="h", resolved_config={}, output_dir="/again")
        assert data.leaderboard(store, LeaderboardQuery()).views["ocr"].compare_hash == compare_hash(
            "ocr", "ocr-1", spec("policy", num_steps=8), False)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_runs_parameters_are_its_own_when_cached(backend: str, tmp_path, request: pytest.FixtureRequest) -> None:
    """A page reads each run's parameters once (they never change) and caches them: a row's `params`
    is its own copy, and a run created after a deletion (on SQLite: with the deleted run's id) shows
    its own parameters, not the cached ones of the run that had that id."""
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_db")

    def run_with_an_evaluation(store: Store, name: str, beta: float) -> int:
        run = store.create_run(name=name, config_hash="h", resolved_config={"train": {"beta": beta}},
                               output_dir=f"/{name}")
        ck = store.add_checkpoint(name, step=1, path=f"/{name}/1", sha256=sha(name), formats=[])
        store.import_evaluations([{"checkpoint_sha256": ck.sha256, "checkpoint_id": ck.id, "benchmark": "ocr",
                                   "benchmark_version": "ocr-1", "spec_hash": "s", "spec": spec("policy"),
                                   "target": f"{name}@1", "run_name": name, "step": 1, "score": 0.5,
                                   "ci_low": 0.4, "ci_high": 0.6, "num_samples": 4}])
        return run.id

    def betas(store: Store) -> dict[str | None, Any]:
        return {r.run_name: r.params.get("train.beta") for r in data.leaderboard(store, LeaderboardQuery()).rows}

    with Store(url) as store:
        first_id = run_with_an_evaluation(store, "first", 0.1)
        run_with_an_evaluation(store, "kept", 0.3)
        assert betas(store) == {"first": 0.1, "kept": 0.3}
        data.leaderboard(store, LeaderboardQuery()).rows[0].params["train.beta"] = 99.0  # the caller's copy
        assert betas(store) == {"first": 0.1, "kept": 0.3}
        store.delete_run("kept")
        store.delete_run("first")
        again_id = run_with_an_evaluation(store, "again", 0.2)
        if backend == "sqlite":
            assert again_id == first_id  # SQLite reuses ids from the largest one left (none here)
        assert betas(store) == {"again": 0.2}
        assert data.run_info(store, "again").resolved_config == {"train": {"beta": 0.2}}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_repeated_page_is_one_statement_until_the_evaluations_change(backend: str, tmp_path,
                                                                        request: pytest.FixtureRequest,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A page read again at the same state of the evaluations is ONE statement (no transaction on
    PostgreSQL); the statement sees when the evaluations changed, and that page is read the full way."""
    import sqlalchemy as sa

    import awm_platform.store.store as store_module

    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_db")
    with Store(url) as store:
        s, rng = Seed(store), random.Random(2)
        for k in ("a", "b"):
            _evaluate(s, rng, key_sha=sha(k), bench="ocr", sp=spec("policy"), quality=0.5, run=None, step=None)
        selects: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                selects.append(statement)

        # every engine: on PostgreSQL `read_once` has its own pool, and runs a reused statement on the driver
        sa.event.listen(sa.Engine, "before_cursor_execute", count)
        run_on_driver = store_module.run_driver_read
        on_driver: list[str] = []

        def run_and_count(engine: Any, read: Any) -> Any:
            on_driver.append(read.sql)
            count(None, None, read.sql)
            return run_on_driver(engine, read)

        monkeypatch.setattr(store_module, "run_driver_read", run_and_count)
        query = LeaderboardQuery(page_size=1)  # sorted by the OCR score: a full page in score order
        first = data.leaderboard(store, query)
        first_selects = len(selects)
        selects.clear()
        on_driver.clear()
        assert data.leaderboard(store, query) == first and len(selects) == 1 < first_selects
        # on PostgreSQL that one statement is the memoized page statement, run on the driver
        assert on_driver == (selects if backend == "postgresql" else [])
        # another spec overtakes the default view: the one statement sees a new state, the page is read again
        for k in ("c", "d", "e"):
            _evaluate(s, rng, key_sha=sha(k), bench="ocr", sp=spec("policy", num_steps=8), quality=0.9, run=None,
                      step=None)
        selects.clear()
        page = data.leaderboard(store, query)
        assert len(selects) > 1
        assert page.views["ocr"].compare_hash == compare_hash("ocr", "ocr-1", spec("policy", num_steps=8), False)
        assert page.rows[0].key.split(":")[0] in {sha(k) for k in ("c", "d", "e")}
        sa.event.remove(sa.Engine, "before_cursor_execute", count)


@pytest.mark.postgres
def test_postgres_plans_a_repeated_page_once(fresh_postgres_db: str) -> None:
    """The page statement writes its LIMIT and OFFSET, and our own constants ('COMPLETED', 'base'), into
    its text: PostgreSQL keeps one generic plan of the prepared statement. With either bound it planned
    the page afresh on every execution (a custom plan: the generic one, blind to the LIMIT, or to the
    `weights <> 'base'` of a store with one weights value, priced a seq scan and sort), 2-3 ms of a
    ~6 ms page. Each half reverted fails this test."""
    import sqlalchemy as sa

    with Store(fresh_postgres_db) as store:
        n = 3000  # enough rows for a plan blind to the LIMIT to look dear
        sp = spec("policy")
        store.import_evaluations([
            {"checkpoint_sha256": sha("k", k), "benchmark": "ocr", "benchmark_version": "ocr-1", "spec_hash": "h",
             "spec": sp, "target": f"dir:/ckpt/{k}", "score": k / n, "ci_low": k / n - 0.01, "ci_high": k / n + 0.01,
             "num_samples": 10} for k in range(n)])
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE evaluations")
        query = LeaderboardQuery(page_size=5, page=1)
        for _ in range(25):  # psycopg prepares a statement on its 5th execution; PostgreSQL then tries 5 custom plans
            page = data.leaderboard(store, query)
        assert [r.target for r in page.rows] == [f"dir:/ckpt/{k}" for k in range(n - 6, n - 11, -1)]
        plans = store.read_once(sa.text("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                                        "WHERE statement LIKE '%AS page%'"))
        assert len(plans) == 1
        generic, custom = plans[0]
        assert generic >= 10 and custom <= 5, (generic, custom)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_change_marker_sees_a_deletion_that_leaves_every_newest_row(backend: str, tmp_path,
                                                                       request: pytest.FixtureRequest) -> None:
    """Deleting an older run (its checkpoint, evaluation and metrics go with it) leaves the newest
    row and the latest time of every table as they were: the marker sees it in the deletion log."""
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_db")
    with Store(url) as store:
        for name in ("old", "new"):
            store.create_run(name=name, config_hash="h", resolved_config={}, output_dir=f"/{name}")
            ck = store.add_checkpoint(name, step=1, path=f"/{name}/1", sha256=sha(name), formats=[])
            store.import_evaluations([{"checkpoint_sha256": ck.sha256, "checkpoint_id": ck.id, "benchmark": "ocr",
                                       "benchmark_version": "ocr-1", "spec_hash": "s", "spec": spec("policy"),
                                       "target": f"{name}@1", "run_name": name, "step": 1, "score": 0.5,
                                       "ci_low": 0.4, "ci_high": 0.6, "num_samples": 4}])
            store.log_metrics(name, {"eval/r": 1.0}, step=1)
        before = data.change_marker(store)
        assert [r.run_name for r in data.leaderboard(store, LeaderboardQuery()).rows] == ["new", "old"]
        store.delete_run("old")
        assert data.change_marker(store) != before
        assert [r.run_name for r in data.leaderboard(store, LeaderboardQuery()).rows] == ["new"]
