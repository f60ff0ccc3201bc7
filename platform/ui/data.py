"""Every read the leaderboard does, as SQL on the platform store (docs/leaderboard.md, "Data and
ranking"). No Streamlit here: the pages (awm_platform.ui.views) call these functions and cache
their results on `change_marker`.

* Filtering, sorting and pagination happen in the database (SQLAlchemy Core `select()`):
  `leaderboard` is ONE statement for the page's rows plus one small statement for the page's run
  parameters; `leaderboard_total` counts the filtered rows (its own call: the pages cache it per
  filter, so sorting and paging never recount). Sorted by a benchmark's score (the default), the
  page is read in score order from that benchmark's view by index; other sorts pivot the
  benchmarks into columns (`max(CASE ...)`) and sort the pivot. Nothing loads every row into
  Python, and MLflow is never searched.
* Benchmark scores are only put side by side when they are comparable: each benchmark column
  shows ONE view, a `compare_hash` (same benchmark version, spec but the weights, full). By
  default the view with the most completed evaluations (`Filters.specs` picks another).
* Same results on SQLite and PostgreSQL (tests/ui/test_data.py runs on both).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from awm_platform.config import flatten
from awm_platform.redaction import redact_url
from awm_platform.store import (
    Checkpoint,
    DeletedRun,
    EvalStatus,
    Evaluation,
    MetricPoint,
    Run,
    RunParam,
    SampleScore,
    Store,
    Sweep,
    as_utc,
)
from awm_platform.ui.ranking import RankInterval, UnitScores, rank_intervals

MAX_PAGE_SIZE = 500
BASE_WEIGHTS = "base"  # evaluations of `base:MODEL`: the base model's row
TRAIN_REWARD_KEYS = ("train/reward_avg", "train/reward_mean")
INLOOP_PREFIXES = ("eval/", "eval_ema/")
#: sort keys besides "score:<benchmark>" and "param:<key>"
SORT_KEYS = ("run", "step", "created_at", "gpu_hours", "reward_per_gpu_hour", "method", "base_model", "sweep")


# ------------------------------------------------------------------------ types ----
@dataclass(frozen=True)
class ParamFilter:
    """A run parameter (`run_params` key): a numeric range (`low`/`high`, inclusive, either
    open) or a set of text values."""

    key: str
    low: float | None = None
    high: float | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Filters:
    sweeps: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()  # run names (exact); '*' globs allowed
    methods: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # any of them
    weights: tuple[str, ...] = ()  # policy / ema; () = both
    params: tuple[ParamFilter, ...] = ()
    specs: tuple[tuple[str, str], ...] = ()  # (benchmark, compare_hash); a benchmark not named: its default view
    since: date | None = None  # checkpoint created_at, UTC dates, inclusive
    until: date | None = None


@dataclass(frozen=True)
class LeaderboardQuery:
    filters: Filters = field(default_factory=Filters)
    sort: str = ""  # "" = "score:<first benchmark>"
    descending: bool = True
    page: int = 0
    page_size: int = 50  # <= MAX_PAGE_SIZE


# Score and LeaderboardRow: immutable records as NamedTuples, not frozen dataclasses: a page makes
# ~200 of them, and a frozen dataclass's __init__ (one object.__setattr__ per field) took a fifth of
# the page's Python time on PostgreSQL
class Score(NamedTuple):
    evaluation_id: int
    score: float
    ci_low: float
    ci_high: float
    n: int
    status: str


class LeaderboardRow(NamedTuple):
    key: str  # f"{checkpoint_sha256}:{weights}": the stable row id (compare URLs)
    target: str
    weights: str
    is_base: bool
    run_name: str | None
    sweep_name: str | None
    trial_number: int | None
    step: int | None
    checkpoint_path: str | None
    run_dir: str | None
    mlflow_run_id: str | None
    method: str | None
    base_model: str | None
    params: dict[str, float | str]
    gpu_hours: float | None  # run.gpu_hours * step / the run's last checkpointed step
    created_at: datetime | None
    scores: dict[str, Score]
    reward_per_gpu_hour: float | None  # (sort benchmark score - base model's score, same view) / gpu_hours


@dataclass(frozen=True)
class BenchmarkView:
    """One comparable group of evaluations of a benchmark (equal `compare_hash`)."""

    benchmark: str
    compare_hash: str
    benchmark_version: str
    spec: dict[str, Any]  # without the weights
    partial: bool
    n_completed: int
    is_default: bool


#: (benchmark, compare_hash) of each column's view, in column order: what a page's statement depends on
ViewHashes = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LeaderboardPage:
    rows: list[LeaderboardRow]
    base_rows: list[LeaderboardRow]  # always returned, never filtered or paginated
    benchmarks: list[str]
    views: dict[str, BenchmarkView]


@dataclass(frozen=True)
class FilterOptions:
    sweeps: list[str]
    runs: list[str]
    methods: list[str]
    base_models: list[str]
    tags: list[str]
    params: dict[str, tuple[float, float] | list[str]]
    views: dict[str, list[BenchmarkView]]
    first_date: date | None
    last_date: date | None


@dataclass(frozen=True)
class InLoopRow:
    run_name: str
    step: int
    sweep_name: str | None
    metrics: dict[str, float]  # eval/* and eval_ema/* at that step (the nearest logged step <= it)


@dataclass(frozen=True)
class RunInfo:
    name: str
    status: str
    sweep_name: str | None
    trial_number: int | None
    method: str
    base_model: str | None
    resolved_config: dict[str, Any]
    output_dir: str
    mlflow_run_id: str | None
    gpu_hours: float
    created_at: datetime


@dataclass(frozen=True)
class EvalInfo:
    id: int
    benchmark: str
    benchmark_version: str
    compare_hash: str
    weights: str
    partial: bool
    status: str
    score: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    sub_scores: dict[str, Any]
    images_dir: str | None
    error: str | None
    spec: dict[str, Any]
    target: str
    step: int | None
    run_name: str | None


@dataclass(frozen=True)
class CheckpointDetail:
    run: RunInfo
    step: int
    checkpoint_path: str
    sha256: str
    evaluations: list[EvalInfo]  # every evaluation of this checkpoint, any status, benchmark, weights


@dataclass(frozen=True)
class RunCurves:
    train_reward: list[tuple[int, float]]
    inloop: dict[str, list[tuple[int, float]]]
    benchmarks: dict[tuple[str, str], list[tuple[int, float, float, float]]]  # (benchmark, weights) -> points


@dataclass(frozen=True)
class SampleMatrix:
    keys: list[tuple[int, int]]  # (prompt, sample) present in every evaluation
    prompts: dict[int, str]
    tags: dict[int, str]
    seeds: dict[tuple[int, int], int]
    scores: dict[int, dict[tuple[int, int], float]]  # evaluation id -> key -> score


@dataclass(frozen=True)
class SweepInfo:
    name: str
    status: str
    n_trials: int
    n_completed: int
    n_pruned: int
    n_failed: int
    gpu_hours: float
    created_at: datetime


@dataclass(frozen=True)
class TrialInfo:
    number: int
    run_name: str | None
    state: str  # Optuna's: COMPLETE / PRUNED / FAIL / RUNNING / WAITING
    run_status: str | None
    params: dict[str, Any]
    values: list[float] | None
    gpu_hours: float


@dataclass(frozen=True)
class SweepDetail:
    info: SweepInfo
    objectives: list[dict[str, Any]]  # [{"metric", "direction"}]
    trials: list[TrialInfo]
    best: list[int]  # best trial number(s); the Pareto front with 2+ objectives
    search_space: dict[str, Any]
    optuna_storage: str  # redacted
    mlflow_parent_run_id: str | None
    error: str | None = None  # the Optuna study could not be opened (trials then come from the store's runs)


# ------------------------------------------------------------------ change marker ----
def change_marker(store: Store) -> str:
    """Cheap fingerprint of what the pages read: changes whenever a run, checkpoint, evaluation,
    sweep or metric is written. Each part is one index lookup (a lone max() of an indexed column):
    runs, evaluations and sweeps by max(updated_at) (every write sets it), checkpoints and metrics by
    max(id) (rows are added, not changed), and deletions (a run, with its checkpoints, evaluations and
    metrics: `Store.delete_run`) by the deletion log's last id. Counting rows instead is a pass over
    an index on every page view."""
    parts = (sa.select(sa.func.max(Run.updated_at)), sa.select(sa.func.max(Evaluation.updated_at)),
             sa.select(sa.func.max(Checkpoint.id)), sa.select(sa.func.max(Sweep.updated_at)),
             sa.select(sa.func.max(MetricPoint.id)),
             sa.select(sa.func.max(DeletedRun.id)))
    with store.reading() as conn:  # one statement: each scalar subquery is its own index lookup
        row = conn.execute(sa.select(*(p.scalar_subquery() for p in parts))).one()
    return "|".join("" if p is None else str(p) for p in row)


# ------------------------------------------------------------------------- views ----
def _views(conn: sa.Connection, *, partial: bool = False) -> dict[str, list[BenchmarkView]]:
    """The comparable groups of COMPLETED evaluations per benchmark, most evaluations first; the
    first one is the benchmark's default view."""
    e = Evaluation.__table__
    # by compare_hash alone (it names its benchmark): one pass over the covering index, in its order
    rows = conn.execute(
        sa.select(sa.func.max(e.c.benchmark).label("benchmark"), e.c.compare_hash, sa.func.count().label("n"),
                  sa.func.max(e.c.id).label("last"))
        .where(e.c.status == EvalStatus.COMPLETED.value, e.c.partial == sa.true() if partial
               else e.c.partial == sa.false())
        .group_by(e.c.compare_hash)).all()
    if not rows:
        return {}
    reps = {r.last: r for r in rows}
    specs = {i: (v, s) for i, v, s in conn.execute(
        sa.select(e.c.id, e.c.benchmark_version, e.c.spec).where(e.c.id.in_(list(reps))))}
    out: dict[str, list[BenchmarkView]] = {}
    for r in sorted(rows, key=lambda r: (r.benchmark, -r.n, -r.last)):
        version, spec = specs[r.last]
        views = out.setdefault(r.benchmark, [])
        views.append(BenchmarkView(benchmark=r.benchmark, compare_hash=r.compare_hash, benchmark_version=version,
                                   spec={k: v for k, v in (spec or {}).items() if k != "weights"}, partial=partial,
                                   n_completed=int(r.n), is_default=not views))
    return out


class _BoundedCache:
    """A process-wide dict of at most `size` entries (the oldest goes first), shared by the UI's
    session threads: the memoized views and base rows, each specs' last page context, run parameters."""

    def __init__(self, size: int) -> None:
        self._entries: dict[Any, Any] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value, or None when absent (no value stored here is None)."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            while len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = value


_EVALUATIONS_CACHE = _BoundedCache(64)  # what depends on the evaluations only, per `_evaluations_key`


def _evaluations_key(conn: sa.Connection) -> tuple[Any, ...]:
    """Changes whenever the evaluations do, from three index lookups (one statement): the largest
    evaluation id (new evaluations), the latest updated_at (status changes), and for deletions (an
    evaluation goes only with its run) the last entry of the deletion log (`Store.delete_run`; an
    evaluation id, which SQLite reuses when the newest row is deleted, would miss one). Counting the
    evaluations, or the runs, costs a pass over their index on every page (~1-2 ms at 30,000 on
    PostgreSQL)."""
    return (_database(conn.engine), *conn.execute(_EVALUATIONS_KEY_STATEMENT).one())


@functools.lru_cache(maxsize=64)
def _database(engine: sa.Engine) -> str:
    """Which database a cache entry belongs to: the engine's URL, password masked (rendering it costs
    ~15 us, twice a page)."""
    return str(engine.url)


_STATE = (sa.select(sa.func.max(Evaluation.id)).scalar_subquery(),
          sa.select(sa.func.max(Evaluation.updated_at)).scalar_subquery(),
          sa.select(sa.func.max(DeletedRun.id)).scalar_subquery())
_EVALUATIONS_KEY_STATEMENT = sa.select(*_STATE)


def _memo(key: tuple[Any, ...], compute: Any) -> Any:
    """`compute()` once per key (two threads may both compute a new key, and store the same)."""
    value = _EVALUATIONS_CACHE.get(key)
    if value is None:
        value = compute()
        _EVALUATIONS_CACHE.put(key, value)
    return value


def _full_views(conn: sa.Connection, key: tuple[Any, ...] | None = None) -> dict[str, list[BenchmarkView]]:
    """`_views` of full evaluations, recomputed only when the evaluations changed (`_evaluations_key`)
    instead of grouping every evaluation on each leaderboard page."""
    key = key or _evaluations_key(conn)
    return _memo((*key, "views"), lambda: _views(conn))


def _chosen_views(conn: sa.Connection, filters: Filters, key: tuple[Any, ...] | None = None,
                  ) -> dict[str, BenchmarkView]:
    available = _full_views(conn, key)
    chosen = {b: vs[0] for b, vs in available.items()}
    for benchmark, chash in filters.specs:
        match = [v for v in available.get(benchmark, []) if v.compare_hash == chash]
        if not match:
            known = ", ".join(v.compare_hash for v in available.get(benchmark, [])) or "none"
            raise ValueError(f"no completed full evaluations of {benchmark!r} with spec {chash!r} "
                             f"(its specs: {known})")
        chosen[benchmark] = match[0]
    return dict(sorted(chosen.items()))


# ------------------------------------------------------------------- leaderboard ----
def _param_value(key: str) -> Any:
    """Scalar subquery: the run's text value of parameter `key` (for columns and sorting)."""
    p = RunParam.__table__
    return (sa.select(p.c.text_value).where(p.c.run_id == Run.id, p.c.key == key)
            .order_by(p.c.text_value).limit(1).scalar_subquery())


def _like_glob(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _run_conditions(filters: Filters) -> list[ColumnElement[bool]]:
    """Conditions on `runs` (as `Run`) for the run-level filters."""
    p = RunParam.__table__
    conds: list[ColumnElement[bool]] = []

    def has_param(key: str, cond: ColumnElement[bool]) -> ColumnElement[bool]:
        return sa.exists().where(p.c.run_id == Run.id, p.c.key == key, cond)

    if filters.sweeps:
        conds.append(Run.sweep_name.in_(list(filters.sweeps)))
    if filters.runs:
        exact = [r for r in filters.runs if "*" not in r]
        globs = [Run.name.like(_like_glob(r), escape="\\") for r in filters.runs if "*" in r]
        conds.append(sa.or_(*([Run.name.in_(exact)] if exact else []), *globs))
    if filters.methods:
        conds.append(has_param("method", p.c.text_value.in_(list(filters.methods))))
    if filters.base_models:
        conds.append(has_param("pretrained.model", p.c.text_value.in_(list(filters.base_models))))
    if filters.tags:
        conds.append(has_param("tag", p.c.text_value.in_(list(filters.tags))))
    for pf in filters.params:
        if pf.values:
            conds.append(has_param(pf.key, p.c.text_value.in_(list(pf.values))))
        if pf.low is not None or pf.high is not None:
            rng = [p.c.num_value.is_not(None)]
            if pf.low is not None:
                rng.append(p.c.num_value >= float(pf.low))
            if pf.high is not None:
                rng.append(p.c.num_value <= float(pf.high))
            conds.append(has_param(pf.key, sa.and_(*rng)))
    return conds


def _date_bounds(filters: Filters) -> tuple[datetime | None, datetime | None]:
    lo = datetime.combine(filters.since, time.min, tzinfo=UTC) if filters.since else None
    hi = datetime.combine(filters.until + timedelta(days=1), time.min, tzinfo=UTC) if filters.until else None
    return lo, hi


def _sort_benchmark(query: LeaderboardQuery, benchmarks: Sequence[str]) -> str | None:
    if query.sort.startswith("score:"):
        name = query.sort.split(":", 1)[1]
        if name not in benchmarks:
            raise ValueError(f"sort {query.sort!r}: no benchmark {name!r} on the leaderboard "
                             f"(benchmarks: {', '.join(benchmarks) or 'none'})")
        return name
    return benchmarks[0] if benchmarks else None


def _by_score(sort: str) -> bool:
    """Whether `sort` orders by a benchmark's score (the default, "", sorts by the first benchmark's)."""
    return sort == "" or sort.startswith("score:")


def _check_sort(sort: str) -> None:
    if sort == "" or sort in SORT_KEYS or (sort.startswith(("score:", "param:")) and len(sort.split(":", 1)[1]) > 0):
        return
    raise ValueError(f"unknown sort key {sort!r}; valid: score:<benchmark>, param:<key>, {', '.join(SORT_KEYS)}")


def _pivot(views: ViewHashes) -> tuple[list[Any], ColumnElement[bool]]:
    """Per benchmark: max(CASE WHEN <its view> THEN score END), the only pivoted column (the rest
    of a score is joined for the page's rows only). A compare_hash names its benchmark too (it
    hashes it), so the view test is on it alone."""
    e = Evaluation.__table__
    cols = [sa.func.max(sa.case((e.c.compare_hash == h, e.c.score))).label(f"b{i}_score")
            for i, (_, h) in enumerate(views)]
    return cols, e.c.compare_hash.in_([h for _, h in views])


def _scores(row: Any, benchmarks: Sequence[str]) -> dict[str, Score]:
    """A page row's scores: the first columns after (sha, weights), five per benchmark (id, score, CI
    low and high, n: ints and floats as the columns' types give them on both databases)."""
    out: dict[str, Score] = {}
    for i, b in enumerate(benchmarks):
        j = 2 + 5 * i
        if row[j] is not None:
            out[b] = Score(row[j], row[j + 1], row[j + 2], row[j + 3], row[j + 4], _COMPLETED)
    return out


_COMPLETED = EvalStatus.COMPLETED.value
# The page statement writes our own constants into its text (never a user's value): PostgreSQL prices
# the generic plan of a prepared statement with each bound value unknown, from the column's number of
# distinct values alone (`weights <> $1` with one weights value in the store: no row at all, so a seq
# scan and sort), finds it dearer than a custom plan, and plans the page afresh on every execution
# (2-3 ms of a ~6 ms page). See also `_page_window`.
_COMPLETED_SQL = sa.literal_column(f"'{_COMPLETED}'")
_BASE_WEIGHTS_SQL = sa.literal_column(f"'{BASE_WEIGHTS}'")


def _base_rows(conn: sa.Connection, views: Mapping[str, BenchmarkView]) -> list[LeaderboardRow]:
    """The base model's rows (weights `base`), one per base checkpoint: a handful of evaluations,
    fetched by an index search and put side by side here."""
    if not views:
        return []
    e = Evaluation.__table__
    by_hash = {v.compare_hash: b for b, v in views.items()}
    found: dict[str, tuple[str, dict[str, Score]]] = {}
    for r in conn.execute(sa.select(e.c.id, e.c.checkpoint_sha256, e.c.target, e.c.compare_hash, e.c.score,
                                    e.c.ci_low, e.c.ci_high, e.c.num_samples)
                          .where(e.c.compare_hash.in_(list(by_hash)), e.c.status == EvalStatus.COMPLETED.value,
                                 e.c.partial == sa.false(), e.c.weights == BASE_WEIGHTS)):
        target, scores = found.setdefault(r.checkpoint_sha256, (r.target, {}))
        scores[by_hash[r.compare_hash]] = Score(evaluation_id=int(r.id), score=float(r.score),
                                                ci_low=float(r.ci_low), ci_high=float(r.ci_high),
                                                n=int(r.num_samples), status=_COMPLETED)
    out = []
    for sha, (target, scores) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0])):
        model = next((views[b].spec.get("model") for b in scores), None)
        out.append(LeaderboardRow(
            key=f"{sha}:{BASE_WEIGHTS}", target=target, weights=BASE_WEIGHTS, is_base=True, run_name=None,
            sweep_name=None, trial_number=None, step=None, checkpoint_path=None, run_dir=None, mlflow_run_id=None,
            method=None, base_model=model, params={}, gpu_hours=0.0, created_at=None,
            scores={b: scores[b] for b in views if b in scores}, reward_per_gpu_hour=None))
    return out


def leaderboard(store: Store, query: LeaderboardQuery) -> LeaderboardPage:
    """One page of the leaderboard: rows (checkpoint x weights) with their score in each
    benchmark's view, filtered, sorted and paginated by the database (their number:
    `leaderboard_total`). Raises ValueError for a bad sort key, page size or spec (the message
    names the valid values).

    Two ways to the page's (checkpoint, weights) keys, with one ordering (sort columns, then
    checkpoint sha256 and weights; missing values last):
    * sorted by a benchmark's score (the default): the filtered evaluations of that benchmark's
      view, read in score order by index (`ix_evaluations_view_score`; `ix_evaluations_sweep_view_score`
      under a sweep filter), LIMIT/OFFSET. Rows without that score sort after every scored
      one, so a page that is not full reaches past them and is read the second way;
    * otherwise `g` pivots the filtered evaluations into one row per (checkpoint, weights)
      (`max(CASE ...)` per benchmark) and sorts those, joining the run when sorting on its columns.
    Only the page's rows are then joined to their evaluations (one per view), run, checkpoint and
    parameters."""
    _check_sort(query.sort)
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE} (got {query.page_size})")
    if query.page < 0:
        raise ValueError(f"page must be >= 0 (got {query.page})")
    f = query.filters
    # The page in ONE statement, without a transaction: at the evaluations' state (`_evaluations_key`)
    # of the last page read with these specs, whose views and base rows are memoized; the statement
    # returns the state it saw, and a page read at another state is read again the full way: in one
    # transaction, the state, views, base rows and page together. (On PostgreSQL the round trips of
    # BEGIN, the state's own statement and COMMIT were half of a page's time.)
    context = _last_context(store, f)
    # the page statements are memoized (`_page_statement`): the store runs them on its driver directly
    read = functools.partial(store.read_once, reused=True)
    rows = _read_page(read, context, query, at_state=True) if context is not None else None
    if rows is None:
        with store.reading() as conn:
            context = _page_context(conn, f)
            rows = _read_page(lambda statement: conn.execute(statement).all(), context, query, at_state=False)
    views, base_rows = context.views, context.base_rows
    if not views:
        return LeaderboardPage(rows=[], base_rows=base_rows, benchmarks=[], views={})
    benchmarks = list(views)
    sort_bench = _sort_benchmark(query, benchmarks)
    base_score = _base_score(base_rows, sort_bench)
    # the columns by position, looked up once (a Row's attribute access costs ~0.5 us: 10 us a row)
    names = rows[0]._fields if rows else ()
    fields = operator.itemgetter(*(names.index(name) for name in _PageFields._fields)) if rows else None
    page = [_PageFields._make(fields(r)) for r in rows] if fields else []
    params = _run_params(store, {p.run_id: p.run_created_at for p in page if p.run_id is not None})
    out = []
    for r, p in zip(rows, page, strict=True):
        run_params = params.get(p.run_id, {})
        scores = _scores(r, benchmarks)
        # GPU-hours up to this checkpoint: the run's total x step / its last checkpointed step; the
        # reward per GPU-hour: (the sort benchmark's score - the base model's, same view) / those hours
        gpu = (float(p.run_gpu_hours) * p.ck_step / p.last_step if p.last_step and p.ck_step is not None
               and p.run_gpu_hours is not None else None)
        sort_score = scores[sort_bench].score if sort_bench in scores else None
        reward = ((sort_score - base_score) / gpu if gpu and gpu > 0 and sort_score is not None
                  and base_score is not None else None)
        out.append(LeaderboardRow(
            key=f"{p.sha}:{p.weights}", target=p.target, weights=p.weights, is_base=False, run_name=p.run_name,
            sweep_name=p.sweep_name, trial_number=p.trial_number, step=p.ev_step_of, checkpoint_path=p.path,
            run_dir=p.output_dir, mlflow_run_id=p.mlflow_run_id, method=_text(run_params.get("method")),
            base_model=_text(run_params.get("pretrained.model")), params=run_params, gpu_hours=gpu,
            created_at=as_utc(p.ckpt_created_at), scores=scores, reward_per_gpu_hour=reward))
    return LeaderboardPage(rows=out, base_rows=base_rows, benchmarks=benchmarks, views=views)


@dataclass(frozen=True)
class _PageContext:
    """What a page is read with, at one state of the evaluations (`_evaluations_key`)."""
    state: tuple[Any, ...]
    views: dict[str, BenchmarkView]
    base_rows: list[LeaderboardRow]


_CONTEXTS = _BoundedCache(64)  # (store URL, specs) -> the last page context


def _page_context(conn: sa.Connection, f: Filters) -> _PageContext:
    """The evaluations' state, the chosen views and the base rows, read in `conn`'s transaction (the views
    and base rows memoized per state); remembered as the last context of these specs."""
    state = _evaluations_key(conn)
    views = _chosen_views(conn, f, state)
    base_rows = _memo((*state, "base", *(v.compare_hash for v in views.values())), lambda: _base_rows(conn, views))
    context = _PageContext(state=state, views=views, base_rows=base_rows)
    _CONTEXTS.put((state[0], f.specs), context)
    return context


def _last_context(store: Store, f: Filters) -> _PageContext | None:
    context: _PageContext | None = _CONTEXTS.get((_database(store.engine), f.specs))
    return context


def _read_page(read: Any, context: _PageContext, query: LeaderboardQuery, *, at_state: bool) -> list[Any] | None:
    """The page's rows (`read(statement)` runs a statement); `at_state`: None unless every statement
    saw the evaluations at `context.state` (its views may be out of date otherwise)."""
    if not context.views:
        return None if at_state else []  # no statement to tell the state: read it the full way
    hashes = tuple((b, v.compare_hash) for b, v in context.views.items())
    sort_bench = _sort_benchmark(query, list(context.views))
    base_score = _base_score(context.base_rows, sort_bench)

    def run(scored: bool) -> list[Any] | None:
        rows = read(_page_statement(hashes, sort_bench, base_score, query, scored=scored))
        # an empty page cannot tell the state it saw: read it the full way
        return None if at_state and (not rows or tuple(rows[0][-len(_STATE):]) != context.state[1:]) else rows

    if sort_bench is not None and _by_score(query.sort):
        rows = run(True)
        if rows is None or len(rows) == query.page_size:
            return rows
        # a short page reaches the rows without this score (or past the end): read the second way
    return run(False)


class _PageFields(NamedTuple):
    """The page statement's columns `leaderboard` reads by name (its scores are read by position)."""
    sha: str
    weights: str
    ev_step_of: int | None
    target: str
    path: str | None
    ckpt_created_at: datetime | None
    ck_step: int | None
    run_id: int | None
    run_created_at: datetime | None
    run_name: str | None
    sweep_name: str | None
    trial_number: int | None
    output_dir: str | None
    mlflow_run_id: str | None
    run_gpu_hours: float | None
    last_step: int | None


def _text(value: float | str | None) -> str | None:
    return None if value is None else str(value)


def leaderboard_total(store: Store, filters: Filters) -> int:
    """How many rows (checkpoint x weights, base rows aside) `leaderboard` pages through under
    `filters`: the distinct keys of the filtered evaluations in the chosen views. Its own call (a
    pass over every filtered evaluation, which a page read in score order never makes): the pages
    cache it per filter and change marker, so sorting and paging do not count again."""
    with store.reading() as conn:
        views = _chosen_views(conn, filters)
        if not views:
            return 0
        keys = _grouped(tuple((b, v.compare_hash) for b, v in views.items()), filters, scores=False)
        return int(conn.execute(sa.select(sa.func.count()).select_from(keys)).scalar() or 0)


@functools.lru_cache(maxsize=256)
def _page_statement(views: ViewHashes, sort_bench: str | None, base_score: float | None, query: LeaderboardQuery,
                    *, scored: bool) -> Any:
    """The page's statement (`_scored_page` or `_pivoted_page`, joined by `_page_rows`), built once
    per query: building one costs more Python than the database spends running it (SQLAlchemy then
    reuses its compiled form); every call still runs it."""
    if scored:
        assert sort_bench is not None
        page, n_order = _scored_page(dict(views)[sort_bench], query.filters, query), 1
        return _page_rows(page, n_order, views, query, carried=[b for b, _ in views].index(sort_bench))
    page, n_order = _pivoted_page(views, sort_bench, base_score, query.filters, query)
    return _page_rows(page, n_order, views, query)


def _ordered(column: Any, descending: bool) -> Any:
    return (column.desc() if descending else column.asc()).nulls_last()


def _page_window(select: Any, query: LeaderboardQuery) -> Any:
    """LIMIT and OFFSET written into the statement's text, not bound: PostgreSQL plans a prepared
    statement afresh on every execution (a custom plan) while its generic plan looks dearer, and a
    generic plan that cannot see the LIMIT costs the whole sort; with the numbers in the text it
    keeps the generic plan, and the page pays no planning (2-3 ms of a ~6 ms page here). The
    statement is built per query anyway (`_page_statement`); the values are validated ints."""
    return (select.limit(sa.literal_column(str(int(query.page_size))))
            .offset(sa.literal_column(str(int(query.page) * int(query.page_size)))))


#: the evaluation columns of a page row's view that `_page_rows` reads
_CARRIED = ("id", "score", "ci_low", "ci_high", "num_samples", "run_name", "step", "target")


def _scored_page(view_hash: str, f: Filters, query: LeaderboardQuery) -> Any:
    """The page's keys among the rows that have a score in `view`, in score order: one index range
    scan of the view (stopping after the page) instead of a pivot of every filtered evaluation."""
    e = Evaluation.__table__
    o0 = e.c.score.label("o0")
    # the sort view's evaluation columns come with the keys (`_page_rows` joins the other views only)
    keys = (sa.select(e.c.checkpoint_sha256.label("sha"), e.c.weights.label("weights"), o0,
                      *(e.c[c].label(f"ev_{c}") for c in _CARRIED))
            .where(e.c.compare_hash == view_hash, e.c.score.is_not(None), *_evaluation_conditions(f))
            # no NULLS LAST here (the scores are not null): PostgreSQL walks the index only for an ORDER
            # BY that matches its null ordering too
            .order_by(e.c.score.desc() if query.descending else e.c.score.asc(), e.c.checkpoint_sha256, e.c.weights))
    return _page_window(keys, query).subquery("page")


def _pivoted_page(views: ViewHashes, sort_bench: str | None, base_score: float | None, f: Filters,
                  query: LeaderboardQuery) -> tuple[Any, int]:
    """The page's keys (and its `o<i>` sort columns) from the pivot of the filtered evaluations."""
    benchmarks = [b for b, _ in views]
    by_run = not _by_score(query.sort)
    grouped = _grouped(views, f, with_run=by_run)
    score = grouped.c[f"b{benchmarks.index(sort_bench)}_score"] if sort_bench else None
    inner = sa.select(grouped.c.sha, grouped.c.weights)
    if by_run:
        ck, gpu, reward, joins = _run_columns(grouped.c.ev_run, grouped.c.ev_step, score, base_score)
        order_cols = _order_columns(query.sort, grouped, score, _param_value("method"),
                                    _param_value("pretrained.model"), gpu, reward, ck)
        src: Any = grouped
        for table, on in joins:
            src = src.outerjoin(table, on)
        inner = inner.select_from(src)
    else:
        order_cols = _order_columns(query.sort, grouped, score, None, None, None, None, None)
    inner = inner.add_columns(*(c.label(f"o{i}") for i, c in enumerate(order_cols)))
    ordered = inner.order_by(*[_ordered(c, query.descending) for c in order_cols], grouped.c.sha, grouped.c.weights)
    page = _page_window(ordered, query).subquery("page")
    return page, len(order_cols)


def _run_columns(run_name: Any, step: Any, score: Any, base_score: float | None) -> tuple[Any, Any, Any, list[Any]]:
    """Run and checkpoint joined by (run name, step), with GPU-hours and reward per GPU-hour as SQL, for
    sorting on them; the page's rows get the same two from `leaderboard`'s Python (without a per-row
    subquery each). tests/ui/test_data.py checks a sort on each against the values shown."""
    ck = _checkpoint_alias()
    last = (sa.select(sa.func.max(Checkpoint.step)).where(Checkpoint.run_id == Run.id)
            .scalar_subquery())  # the run's last checkpointed step (index search per row)
    gpu = sa.case((last > 0, Run.gpu_hours * ck.c.step / sa.cast(last, sa.Float)), else_=None)
    reward = (sa.case((gpu > 0, (score - base_score) / gpu), else_=None)
              if score is not None and base_score is not None else sa.null())
    joins = [(Run, Run.name == run_name), (ck, sa.and_(ck.c.run_id == Run.id, ck.c.step == step))]
    return ck, gpu, reward, joins


def _page_rows(page: Any, n_order: int, views: ViewHashes, query: LeaderboardQuery, *,
               carried: int | None = None) -> Any:
    """The page's keys joined to their evaluation in each view (the evaluation key's index:
    sha256 first), run, checkpoint and run columns, in the page's order. `carried`: the view whose
    evaluation columns the page's keys carry (`ev_<column>`: the page read in that view's score
    order), not joined again (50 index lookups fewer, ~12% of the statement on PostgreSQL)."""
    src = page
    sources: list[Any] = []  # per view, its evaluation's columns by name
    for i, (_, view_hash) in enumerate(views):
        if i == carried:
            sources.append({c: page.c[f"ev_{c}"] for c in _CARRIED})
            continue
        ev = _evaluation_alias(i)
        src = src.outerjoin(ev, sa.and_(ev.c.checkpoint_sha256 == page.c.sha, ev.c.weights == page.c.weights,
                                        ev.c.compare_hash == view_hash,
                                        ev.c.status == _COMPLETED_SQL, ev.c.partial == sa.false()))
        sources.append(ev.c)

    def first(column: str) -> Any:
        if carried is not None:  # every page row has its evaluation in the carried view
            return sources[carried][column]
        cols = [source[column] for source in sources]
        return sa.func.coalesce(*cols, None) if len(cols) > 1 else cols[0]

    run_name, step = first("run_name"), first("step")
    ck, _, _, joins = _run_columns(run_name, step, None, None)
    for table, on in joins:
        src = src.outerjoin(table, on)
    # the scores first (`_scores` reads them by position); GPU-hours, reward, method and base model
    # are worked out in Python from these columns and the run's parameters (no per-row subqueries)
    ev_cols = [c for i, ev in enumerate(sources) for c in (
        ev["id"].label(f"b{i}_id"), ev["score"].label(f"b{i}_score"), ev["ci_low"].label(f"b{i}_lo"),
        ev["ci_high"].label(f"b{i}_hi"), ev["num_samples"].label(f"b{i}_n"))]
    last = sa.select(sa.func.max(Checkpoint.step)).where(Checkpoint.run_id == Run.id).scalar_subquery()
    return (sa.select(page.c.sha, page.c.weights, *ev_cols, step.label("ev_step_of"), first("target").label("target"),
                      ck.c.path, ck.c.created_at.label("ckpt_created_at"), ck.c.step.label("ck_step"),
                      Run.id.label("run_id"), Run.created_at.label("run_created_at"), Run.name.label("run_name"),
                      Run.sweep_name, Run.trial_number,
                      Run.output_dir, Run.mlflow_run_id, Run.gpu_hours.label("run_gpu_hours"),
                      last.label("last_step"))
            .add_columns(*(c.label(f"state{i}") for i, c in enumerate(_STATE)))  # the state it saw, last
            .select_from(src)
            .order_by(*[_ordered(page.c[f"o{i}"], query.descending) for i in range(n_order)], page.c.sha,
                      page.c.weights))


@functools.cache
def _evaluation_alias(i: int) -> Any:
    # an alias of a mapped table builds a proxy per column (~5 ms each time): made once, reused
    return Evaluation.__table__.alias(f"e{i}")


@functools.cache
def _checkpoint_alias() -> Any:
    return Checkpoint.__table__.alias("ck")


def _evaluation_conditions(f: Filters) -> list[ColumnElement[bool]]:
    """The leaderboard's rows among `evaluations`: completed, full, not the base model's, and the
    filters (weights; sweeps on the evaluation's copy of its run's sweep, an index range; the other
    run-level filters as `run_name IN (...)`; checkpoint dates)."""
    e = Evaluation.__table__
    where: list[ColumnElement[bool]] = [e.c.status == _COMPLETED_SQL, e.c.partial == sa.false(),
                                        e.c.weights != _BASE_WEIGHTS_SQL]
    if f.weights:
        where.append(e.c.weights.in_(list(f.weights)))
    if f.sweeps:
        where.append(e.c.sweep_name.in_(list(f.sweeps)))
    run_conds = _run_conditions(replace(f, sweeps=()))
    if run_conds:
        where.append(e.c.run_name.in_(sa.select(Run.name).where(*run_conds)))
    lo, hi = _date_bounds(f)
    if lo is not None or hi is not None:
        c = Checkpoint.__table__
        date_conds = [c.c.created_at >= lo] if lo is not None else []
        date_conds += [c.c.created_at < hi] if hi is not None else []
        where.append(e.c.checkpoint_sha256.in_(sa.select(c.c.sha256).where(*date_conds)))
    return where


def _grouped(views: ViewHashes, f: Filters, *, with_run: bool = False, scores: bool = True) -> Any:
    """The filtered evaluations of the views, one row per (checkpoint sha256, weights), each
    benchmark's score pivoted by `max(CASE ...)` (`scores`); `with_run`: also the run name and
    step (to join the run when sorting on its columns)."""
    e = Evaluation.__table__
    cols, in_view = _pivot(views)
    run_cols = [sa.func.max(e.c.run_name).label("ev_run"), sa.func.max(e.c.step).label("ev_step")] if with_run else []
    return (sa.select(e.c.checkpoint_sha256.label("sha"), e.c.weights.label("weights"), *run_cols,
                      *(cols if scores else []))
            .where(in_view, *_evaluation_conditions(f)).group_by(e.c.checkpoint_sha256, e.c.weights).subquery("g"))


def _base_score(base_rows: Sequence[LeaderboardRow], benchmark: str | None) -> float | None:
    scores = [r.scores[benchmark].score for r in base_rows if benchmark in r.scores] if benchmark else []
    return max(scores) if scores else None


def _order_columns(sort: str, grouped: Any, score: Any, method: Any, base_model: Any, gpu_hours: Any, reward: Any,
                   ck: Any) -> list[Any]:
    if _by_score(sort):
        return [score] if score is not None else []
    if sort.startswith("param:"):
        p = RunParam.__table__
        key = sort.split(":", 1)[1]
        # numbers sort as numbers, text parameters by their text (a key holds one kind in practice)
        num = sa.select(sa.func.max(p.c.num_value)).where(p.c.run_id == Run.id, p.c.key == key).scalar_subquery()
        text = sa.select(sa.func.min(p.c.text_value)).where(p.c.run_id == Run.id, p.c.key == key).scalar_subquery()
        return [num, text]
    return [{"run": Run.name, "step": grouped.c.ev_step, "created_at": ck.c.created_at, "gpu_hours": gpu_hours,
             "reward_per_gpu_hour": reward, "method": method, "base_model": base_model,
             "sweep": Run.sweep_name}[sort]]


_RUN_PARAMS = _BoundedCache(4096)  # (store URL, run id, run created_at) -> its parameters


def _run_params(store: Store, runs: Mapping[int, Any]) -> dict[int, dict[str, float | str]]:
    """The parameters of the runs `{run id: its created_at}` (a copy per call). A run's parameters
    are written with the run and never change (`Store.update_run` refuses them), so they are read
    once per run and cached (bounded), keyed by database, id and creation time: a run id that SQLite
    reuses after a deletion names another run. A page of the leaderboard then reads only its rows."""
    url = _database(store.engine)
    out: dict[int, dict[str, float | str]] = {}
    for run_id, created_at in runs.items():
        hit = _RUN_PARAMS.get((url, run_id, created_at))
        if hit is not None:
            out[run_id] = dict(hit)
    missing = sorted(set(runs) - set(out))
    if not missing:
        return out
    p = RunParam.__table__
    fetched: dict[int, dict[str, float | str]] = {run_id: {} for run_id in missing}
    for run_id, key, num, text in store.read_once(
            sa.select(p.c.run_id, p.c.key, p.c.num_value, p.c.text_value).where(p.c.run_id.in_(missing))
            .order_by(p.c.run_id, p.c.key, p.c.text_value)):
        params = fetched[run_id]
        if key == "tag":
            params["tags"] = ",".join(filter(None, (str(params.get("tags", "")), text)))
        else:
            params[key] = float(num) if text is None else str(text)
    for run_id, params in fetched.items():
        _RUN_PARAMS.put((url, run_id, runs[run_id]), params)
        out[run_id] = dict(params)
    return out


# ------------------------------------------------------------------------ ranking ----
def rank_rows(store: Store, rows: Sequence[LeaderboardRow], benchmark: str, limit: int = 200, *,
              n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, RankInterval]:
    """Rank intervals and tie groups (awm_platform.ui.ranking) of the first `limit` rows (in the
    order given: the current sort) that have a score in `benchmark`; their sample rows are loaded
    in ONE query. Rows of one page share one view per benchmark, so their samples are paired."""
    chosen = [r for r in rows if benchmark in r.scores][:limit]
    ids = {r.scores[benchmark].evaluation_id: r.key for r in chosen}
    if not ids:
        return {}
    s = SampleScore.__table__
    maps: dict[int, dict[tuple[int, int], float]] = {i: {} for i in ids}
    strata: dict[int, str] = {}
    units: dict[int, str] = {}
    with store.reading() as conn:
        for ev_id, p, k, score, extra in conn.execute(
                sa.select(s.c.evaluation_id, s.c.prompt_index, s.c.sample_index, s.c.score, s.c.extra)
                .where(s.c.evaluation_id.in_(list(ids)))):
            maps[ev_id][(p, k)] = score
            extra = extra or {}
            if isinstance(extra.get("tag"), str):
                strata.setdefault(p, extra["tag"])
            if isinstance(extra.get("prompt"), str):
                units.setdefault(p, extra["prompt"])
    shown = {r.key: r.scores[benchmark].score for r in chosen}
    scored = {ids[i]: UnitScores(m, strata or None, units or None, shown[ids[i]]) for i, m in maps.items() if m}
    return rank_intervals(scored, n_boot=n_boot, seed=seed, alpha=alpha)


# ------------------------------------------------------------------ other listings ----
def _eval_info(e: Any) -> EvalInfo:
    return EvalInfo(id=int(e.id), benchmark=e.benchmark, benchmark_version=e.benchmark_version,
                    compare_hash=e.compare_hash, weights=e.weights, partial=bool(e.partial), status=e.status,
                    score=e.score, ci_low=e.ci_low, ci_high=e.ci_high, n=int(e.num_samples or 0),
                    sub_scores=dict(e.sub_scores or {}), images_dir=e.images_dir, error=e.error,
                    spec=dict(e.spec or {}), target=e.target, step=e.step, run_name=e.run_name)


def partial_evaluations(store: Store, filters: Filters, limit: int = 200) -> list[LeaderboardRow]:
    """COMPLETED partial (`--limit`) evaluations, newest first, one row each (never ranked with
    full ones: the page shows them apart). The run-level and weights filters apply."""
    e = Evaluation.__table__
    ck = Checkpoint.__table__
    with store.reading() as conn:
        hashes = [v.compare_hash for vs in _views(conn, partial=True).values() for v in vs]
        if not hashes:
            return []
        # by compare_hash: an index search, not a pass over every completed evaluation
        where: list[ColumnElement[bool]] = [e.c.compare_hash.in_(hashes), e.c.status == EvalStatus.COMPLETED.value,
                                            e.c.partial == sa.true()]
        if filters.weights:
            where.append(e.c.weights.in_([*filters.weights, BASE_WEIGHTS]))
        run_conds = _run_conditions(filters)
        if run_conds:
            where.append(sa.or_(e.c.run_name.in_(sa.select(Run.name).where(*run_conds)),
                                e.c.weights == BASE_WEIGHTS))
        rows = conn.execute(
            sa.select(e, ck.c.created_at.label("ckpt_created_at"), Run.id.label("run_id"),
                      Run.created_at.label("run_created_at"), Run.sweep_name,
                      Run.trial_number, Run.output_dir, Run.mlflow_run_id.label("run_mlflow_id"))
            .select_from(e).outerjoin(Run, Run.name == e.c.run_name)
            .outerjoin(ck, sa.and_(ck.c.run_id == Run.id, ck.c.step == e.c.step))
            .where(*where).order_by(e.c.created_at.desc(), e.c.id.desc()).limit(int(limit))).all()
    params = _run_params(store, {r.run_id: r.run_created_at for r in rows if r.run_id is not None})
    return [LeaderboardRow(
        key=f"{r.checkpoint_sha256}:{r.weights}", target=r.target, weights=r.weights,
        is_base=r.weights == BASE_WEIGHTS, run_name=r.run_name, sweep_name=r.sweep_name,
        trial_number=r.trial_number, step=r.step, checkpoint_path=r.checkpoint_path, run_dir=r.output_dir,
        mlflow_run_id=r.run_mlflow_id, method=_text(params.get(r.run_id, {}).get("method")),
        base_model=(_text(params.get(r.run_id, {}).get("pretrained.model"))
                    or ((r.spec or {}).get("model") if r.weights == BASE_WEIGHTS else None)),
        params=params.get(r.run_id, {}), gpu_hours=None, created_at=as_utc(r.ckpt_created_at),
        scores={r.benchmark: Score(evaluation_id=int(r.id), score=float(r.score), ci_low=float(r.ci_low),
                                   ci_high=float(r.ci_high), n=int(r.num_samples), status=r.status)},
        reward_per_gpu_hour=None) for r in rows]


def inloop_rows(store: Store, filters: Filters, limit: int = 200) -> list[InLoopRow]:
    """Checkpoints with NO completed benchmark evaluation (any weights), newest first, with the
    run's in-loop `eval/*` / `eval_ema/*` metrics at that step (the nearest logged step <= it)."""
    ck = Checkpoint.__table__
    e = Evaluation.__table__
    m = MetricPoint.__table__
    # NOT IN: the completed keys are collected once (an index-only pass), then probed per checkpoint
    where: list[ColumnElement[bool]] = [ck.c.sha256.not_in(
        sa.select(e.c.checkpoint_sha256).where(e.c.status == EvalStatus.COMPLETED.value))]
    where += _run_conditions(filters)
    lo, hi = _date_bounds(filters)
    if lo is not None:
        where.append(ck.c.created_at >= lo)
    if hi is not None:
        where.append(ck.c.created_at < hi)
    with store.reading() as conn:
        rows = conn.execute(sa.select(ck.c.run_id, ck.c.step, Run.name, Run.sweep_name)
                            .select_from(ck).join(Run, Run.id == ck.c.run_id).where(*where)
                            .order_by(ck.c.created_at.desc(), ck.c.id.desc()).limit(int(limit))).all()
        by_run: dict[int, list[tuple[str, int, float]]] = {}
        if rows:
            prefix = sa.or_(*(m.c.key.like(f"{p}%") for p in INLOOP_PREFIXES))
            for run_id, key, step, value in conn.execute(
                    sa.select(m.c.run_id, m.c.key, m.c.step, m.c.value)
                    .where(m.c.run_id.in_({r.run_id for r in rows}), prefix).order_by(m.c.step)):
                by_run.setdefault(run_id, []).append((key, step, value))
    out = []
    for r in rows:
        metrics: dict[str, float] = {}
        for key, step, value in by_run.get(r.run_id, []):  # ascending steps: the last one <= step wins
            if step <= r.step:
                metrics[key] = float(value)
        out.append(InLoopRow(run_name=r.name, step=int(r.step), sweep_name=r.sweep_name, metrics=metrics))
    return out


def _run_info(run: Run, method: str | None, base_model: str | None) -> RunInfo:
    return RunInfo(name=run.name, status=run.status, sweep_name=run.sweep_name, trial_number=run.trial_number,
                   method=method or "awm", base_model=base_model, resolved_config=dict(run.resolved_config or {}),
                   output_dir=run.output_dir, mlflow_run_id=run.mlflow_run_id, gpu_hours=float(run.gpu_hours),
                   created_at=as_utc(run.created_at) or run.created_at)


def run_info(store: Store, run_name: str) -> RunInfo:
    """The run (NotFoundError if absent), with its method and base model from `run_params`."""
    run = store.get_run(run_name)
    params = _run_params(store, {run.id: run.created_at}).get(run.id, {})
    return _run_info(run, _text(params.get("method")), _text(params.get("pretrained.model")))


def checkpoint_detail(store: Store, run_name: str, step: int) -> CheckpointDetail:
    """A checkpoint and every evaluation of it (NotFoundError if the run or checkpoint is absent)."""
    info = run_info(store, run_name)
    ckpt = store.get_checkpoint(run_name, int(step))
    e = Evaluation.__table__
    with store.reading() as conn:
        evs = conn.execute(sa.select(e).where(e.c.checkpoint_sha256 == ckpt.sha256)
                           .order_by(e.c.benchmark, e.c.weights, e.c.partial, e.c.id)).all()
    return CheckpointDetail(run=info, step=int(ckpt.step), checkpoint_path=ckpt.path, sha256=ckpt.sha256,
                            evaluations=[_eval_info(ev) for ev in evs])


def evaluation_info(store: Store, evaluation_id: int) -> EvalInfo:
    return _eval_info(store.get_evaluation(int(evaluation_id)))


def geneval_figures(store: Store, evaluation_id: int) -> dict[str, Any]:
    """GenEval's official summary figures of an evaluation, from its sample rows (SQL aggregates):
    per-tag image accuracy, correct images, correct prompts (any of a prompt's samples correct)."""
    s = SampleScore.__table__
    tag = s.c.extra["tag"].as_string()
    correct = sa.case((s.c.score >= 0.5, 1), else_=0)
    with store.reading() as conn:
        per_tag = {t: (int(n), int(c)) for t, n, c in conn.execute(
            sa.select(tag, sa.func.count(), sa.func.sum(correct)).where(s.c.evaluation_id == int(evaluation_id))
            .group_by(tag).order_by(tag)) if t is not None}
        per_prompt = (sa.select(s.c.prompt_index, sa.func.max(correct).label("any_ok"))
                      .where(s.c.evaluation_id == int(evaluation_id)).group_by(s.c.prompt_index).subquery())
        n_prompts, ok_prompts = conn.execute(sa.select(sa.func.count(), sa.func.sum(per_prompt.c.any_ok))).one()
    n_images = sum(n for n, _c in per_tag.values())
    return {"per_tag": {t: c / n for t, (n, c) in per_tag.items() if n},
            "per_tag_n": {t: n for t, (n, _c) in per_tag.items()},
            "correct_images": sum(c for _n, c in per_tag.values()), "n_images": n_images,
            "correct_prompts": int(ok_prompts or 0), "n_prompts": int(n_prompts or 0)}


def run_curves(store: Store, run_name: str) -> RunCurves:
    """Training reward, in-loop eval metrics, and benchmark scores (each benchmark's default view,
    with CIs) over the run's steps."""
    run = store.get_run(run_name)
    m = MetricPoint.__table__
    e = Evaluation.__table__
    with store.reading() as conn:
        metrics: dict[str, list[tuple[int, float]]] = {}
        prefix = sa.or_(m.c.key.in_(TRAIN_REWARD_KEYS), *(m.c.key.like(f"{p}%") for p in INLOOP_PREFIXES))
        for key, step, value in conn.execute(sa.select(m.c.key, m.c.step, m.c.value)
                                             .where(m.c.run_id == run.id, prefix).order_by(m.c.key, m.c.step)):
            metrics.setdefault(key, []).append((int(step), float(value)))
        defaults = [(b, vs[0].compare_hash) for b, vs in _full_views(conn).items()]
        bench: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
        if defaults:
            in_view = sa.or_(*(sa.and_(e.c.benchmark == b, e.c.compare_hash == h) for b, h in defaults))
            for b, w, step, score, lo, hi in conn.execute(
                    sa.select(e.c.benchmark, e.c.weights, e.c.step, e.c.score, e.c.ci_low, e.c.ci_high)
                    .where(e.c.run_name == run_name, e.c.status == EvalStatus.COMPLETED.value, in_view,
                           e.c.step.is_not(None)).order_by(e.c.benchmark, e.c.weights, e.c.step)):
                bench.setdefault((b, w), []).append((int(step), float(score), float(lo), float(hi)))
    train = next((metrics[k] for k in TRAIN_REWARD_KEYS if k in metrics), [])
    inloop = {k: v for k, v in metrics.items() if k.startswith(INLOOP_PREFIXES)}
    return RunCurves(train_reward=train, inloop=inloop, benchmarks=bench)


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ between two resolved configs (derived.* included), sorted;
    a key missing on one side has None there."""
    fa, fb = flatten(dict(a)), flatten(dict(b))
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def comparable_evaluations(store: Store, row_keys: Sequence[str], benchmark: str,
                           compare_hash: str) -> dict[str, EvalInfo]:
    """Row key (`sha256:weights`) -> its COMPLETED evaluation of `benchmark` in the view
    `compare_hash` (rows without one are left out)."""
    pairs = []
    for key in row_keys:
        sha, sep, weights = key.rpartition(":")
        if not sep or not sha:
            raise ValueError(f"row key {key!r} is not <checkpoint sha256>:<weights>")
        pairs.append((sha, weights))
    if not pairs:
        return {}
    e = Evaluation.__table__
    with store.reading() as conn:
        evs = conn.execute(sa.select(e).where(
            e.c.benchmark == benchmark, e.c.compare_hash == compare_hash, e.c.status == EvalStatus.COMPLETED.value,
            sa.or_(*(sa.and_(e.c.checkpoint_sha256 == sha, e.c.weights == w) for sha, w in pairs)))).all()
    found = {f"{ev.checkpoint_sha256}:{ev.weights}": _eval_info(ev) for ev in evs}
    return {k: found[k] for k in row_keys if k in found}


def sample_matrix(store: Store, evaluation_ids: Sequence[int]) -> SampleMatrix:
    """The evaluations' per-sample scores on the (prompt, sample) keys they all share, with each
    prompt's text and tag and each image's seed."""
    ids = [int(i) for i in evaluation_ids]
    s = SampleScore.__table__
    scores: dict[int, dict[tuple[int, int], float]] = {i: {} for i in ids}
    prompts: dict[int, str] = {}
    tags: dict[int, str] = {}
    seeds: dict[tuple[int, int], int] = {}
    if ids:
        with store.reading() as conn:
            for ev_id, p, k, score, seed, extra in conn.execute(
                    sa.select(s.c.evaluation_id, s.c.prompt_index, s.c.sample_index, s.c.score, s.c.seed, s.c.extra)
                    .where(s.c.evaluation_id.in_(ids))):
                scores[ev_id][(p, k)] = float(score)
                extra = extra or {}
                if isinstance(extra.get("prompt"), str):
                    prompts.setdefault(p, extra["prompt"])
                if isinstance(extra.get("tag"), str):
                    tags.setdefault(p, extra["tag"])
                if seed is not None:
                    seeds.setdefault((p, k), int(seed))
    keys = sorted(set.intersection(*(set(v) for v in scores.values()))) if scores else []
    used = {p for p, _k in keys}
    return SampleMatrix(keys=keys, prompts={p: t for p, t in prompts.items() if p in used},
                        tags={p: t for p, t in tags.items() if p in used},
                        seeds={k: v for k, v in seeds.items() if k in set(keys)},
                        scores={i: {k: scores[i][k] for k in keys} for i in ids})


def disagreement(matrix: SampleMatrix, k: int) -> list[int]:
    """The `k` prompt indices where the evaluations' per-prompt mean scores spread most
    (max - min), ties by prompt index."""
    per_prompt: dict[int, list[list[float]]] = {}
    for ev_scores in matrix.scores.values():
        sums: dict[int, list[float]] = {}
        for (p, _s), v in ev_scores.items():
            sums.setdefault(p, []).append(v)
        for p, vs in sums.items():
            per_prompt.setdefault(p, []).append([sum(vs) / len(vs)])
    spread = {p: max(v[0] for v in vs) - min(v[0] for v in vs) for p, vs in per_prompt.items()}
    return sorted(spread, key=lambda p: (-spread[p], p))[:max(0, int(k))]


# ------------------------------------------------------------------ filter options ----
def filter_options(store: Store) -> FilterOptions:
    """What the sidebar offers: distinct values and numeric ranges, in a handful of GROUP BY queries."""
    p = RunParam.__table__
    ck = Checkpoint.__table__
    with store.reading() as conn:
        sweeps = list(conn.execute(sa.select(Sweep.study_name).order_by(Sweep.study_name)).scalars())
        runs = list(conn.execute(sa.select(Run.name).order_by(Run.name)).scalars())
        texts: dict[str, list[str]] = {}
        for key, text in conn.execute(sa.select(p.c.key, p.c.text_value).where(p.c.text_value.is_not(None))
                                      .distinct().order_by(p.c.key, p.c.text_value)):
            texts.setdefault(key, []).append(text)
        ranges = {key: (float(lo), float(hi)) for key, lo, hi in conn.execute(
            sa.select(p.c.key, sa.func.min(p.c.num_value), sa.func.max(p.c.num_value))
            .where(p.c.num_value.is_not(None)).group_by(p.c.key).order_by(p.c.key))}
        first, last = conn.execute(sa.select(sa.func.min(ck.c.created_at), sa.func.max(ck.c.created_at))).one()
        views = _full_views(conn)
    special = {"method", "pretrained.model", "tag"}
    params: dict[str, tuple[float, float] | list[str]] = {}
    for key in sorted((set(texts) | set(ranges)) - special):
        params[key] = ranges[key] if key in ranges else texts[key]
    return FilterOptions(sweeps=sweeps, runs=runs, methods=texts.get("method", []),
                         base_models=texts.get("pretrained.model", []), tags=texts.get("tag", []), params=params,
                         views=views, first_date=_day(first), last_date=_day(last))


def _day(value: datetime | None) -> date | None:
    v = as_utc(value)
    return None if v is None else v.astimezone(UTC).date()


# ------------------------------------------------------------------------ sweeps ----
def sweep_list(store: Store) -> list[SweepInfo]:
    """Every sweep with its trial counts (from the store's runs: no Optuna storage opened) and GPU-hours."""
    counts = sa.select(
        Run.sweep_name, sa.func.count().label("n"),
        sa.func.sum(sa.case((Run.status == "COMPLETED", 1), else_=0)).label("done"),
        sa.func.sum(sa.case((Run.status == "PRUNED", 1), else_=0)).label("pruned"),
        sa.func.sum(sa.case((Run.status == "FAILED", 1), else_=0)).label("failed"),
        sa.func.sum(Run.gpu_hours).label("gpu"),
    ).where(Run.sweep_name.is_not(None)).group_by(Run.sweep_name).subquery()
    with store.reading() as conn:
        rows = conn.execute(sa.select(Sweep.study_name, Sweep.status, Sweep.created_at, counts)
                            .select_from(Sweep).outerjoin(counts, counts.c.sweep_name == Sweep.study_name)
                            .order_by(Sweep.created_at.desc(), Sweep.study_name)).all()
    return [SweepInfo(name=r.study_name, status=r.status, n_trials=int(r.n or 0), n_completed=int(r.done or 0),
                      n_pruned=int(r.pruned or 0), n_failed=int(r.failed or 0), gpu_hours=float(r.gpu or 0.0),
                      created_at=as_utc(r.created_at) or r.created_at) for r in rows]


def sweep_detail(store: Store, name: str) -> SweepDetail:
    """A sweep's trials from its Optuna study (states, params, objective values), joined with the
    store's runs; when the study cannot be opened, trials come from the runs alone and `error`
    says why (the storage URL is shown redacted)."""
    sw = store.get_sweep(name)  # NotFoundError
    info = next((s for s in sweep_list(store) if s.name == name), None)
    assert info is not None
    conf = dict(sw.resolved_config or {})
    spec = dict(conf.get("sweep") or {})
    objectives = [{"metric": o.get("metric"), "direction": o.get("direction", "maximize")}
                  for o in spec.get("objective") or []]
    runs = {r.trial_number: r for r in store.list_runs(sweep_name=name) if r.trial_number is not None}
    trials: list[TrialInfo] = []
    error: str | None = None
    try:
        study = _load_study(store, name)
        for t in study.get_trials(deepcopy=False):
            run = runs.get(t.number)
            trials.append(TrialInfo(
                number=t.number, run_name=run.name if run else t.user_attrs.get("run_name"), state=t.state.name,
                run_status=run.status if run else None, params=dict(t.params),
                values=None if t.values is None else [float(v) for v in t.values],
                gpu_hours=float(run.gpu_hours) if run else 0.0))
    except Exception as exc:  # noqa: BLE001 - any storage failure: show the store's view and say why
        error = f"cannot open the Optuna study {name!r} at {redact_url(sw.optuna_storage)}: " \
                f"{redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
        trials = [TrialInfo(number=n, run_name=r.name, state=_state_of(r.status), run_status=r.status,
                            params={}, values=None, gpu_hours=float(r.gpu_hours)) for n, r in sorted(runs.items())]
    return SweepDetail(info=info, objectives=objectives, trials=trials, best=_best(trials, objectives),
                       search_space=dict(spec.get("params") or {}), optuna_storage=redact_url(sw.optuna_storage),
                       mlflow_parent_run_id=sw.mlflow_parent_run_id, error=error)


def _load_study(store: Store, name: str) -> Any:
    # deferred: optuna (and the sweep orchestrator's imports) load only for the sweeps page
    from awm_platform.sweeps.optuna_bridge import load_study
    from awm_platform.sweeps.orchestrator import SweepContext  # deferred: as above

    ctx = SweepContext.load(name, store=store)
    return load_study(ctx.storage_url, name).study


def _state_of(run_status: str) -> str:
    return {"COMPLETED": "COMPLETE", "PRUNED": "PRUNED", "FAILED": "FAIL", "CANCELLED": "FAIL",
            "PENDING": "WAITING"}.get(run_status, "RUNNING")


def _best(trials: Sequence[TrialInfo], objectives: Sequence[Mapping[str, Any]]) -> list[int]:
    """The best COMPLETE trial, or the Pareto front (non-dominated trials) with 2+ objectives."""
    done = [t for t in trials if t.state == "COMPLETE" and t.values and all(math.isfinite(v) for v in t.values)]
    if not done or not objectives:
        return []
    sign = [1.0 if o.get("direction", "maximize") == "maximize" else -1.0 for o in objectives]

    def oriented(t: TrialInfo) -> list[float]:
        return [s * v for s, v in zip(sign, t.values or [])]

    if len(objectives) == 1:
        top = max(oriented(t)[0] for t in done)
        return sorted(t.number for t in done if oriented(t)[0] == top)

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return sorted(t.number for t in done if not any(dominates(oriented(o), oriented(t)) for o in done if o is not t))
