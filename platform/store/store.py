"""The platform store: runs, checkpoints, evaluations, per-sample scores, sweeps, metrics.

One class, two backends: SQLite (embedded default; WAL, busy timeout, foreign keys, and
every transaction `BEGIN IMMEDIATE` so concurrent writers queue instead of failing) and
PostgreSQL (clusters). The same contract suite (tests/store) runs on both.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Executable, case, create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from awm_platform.paths import default_platform_db_url
from awm_platform.redaction import redact_url  # make_url misplaces a password holding '@'
from awm_platform.store.driver_read import DriverRead, compile_driver_read, run_driver_read
from awm_platform.store.models import (
    TERMINAL_STATUSES,
    Checkpoint,
    DeletedRun,
    EvalShard,
    EvalStatus,
    Evaluation,
    MetricPoint,
    Run,
    RunParam,
    RunStatus,
    SampleScore,
    ShardStatus,
    Sweep,
    compare_hash,
)
from trainers.awm.config import family_of_local_model

T = TypeVar("T")
SAMPLE_ROWS_PER_INSERT = 1000
#: the run parameters the leaderboard filters and sorts on (`run_params`), besides every key of the
#: run's sweep search space and its `tags`; `method` is 'awm' for configs that do not name one
LEADERBOARD_PARAMS = ("method", "pretrained.model", "pretrained.family", "seed", "train.beta", "train.ghuber_power",
                      "train.kl_ema_decay", "train.kl_ema_decay_type", "train.ema_beta", "train.ema",
                      "train.ema_decay", "train.learning_rate", "train.weighting")
DEFAULT_METHOD = "awm"
READ_ONLY_OPTION = "awm_read_only"  # execution option of `Store.reading()` connections
#: what `refresh_statistics` analyzes: the tables the leaderboard plans over (exact counts: a sampled
#: ANALYZE misjudges the few-valued columns, e.g. status); metrics and sample rows are only ever
#: read through their unique keys
ANALYZED_TABLES = ("evaluations", "runs", "checkpoints", "run_params", "sweeps")
PG_RANDOM_PAGE_COST = 1.1  # planner cost of a random page on the store's PostgreSQL connections
DRIVER_READS_KEPT = 256  # statements `read_once(..., reused=True)` keeps compiled (the leaderboard: 256 pages)
STATS_CHECK_S = 60.0  # how often a long-lived reader checks whether the statistics are stale
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class StoreError(RuntimeError):
    pass


class StoreUnavailableError(StoreError):
    """The store cannot be opened or reached (server down, bad URL, unwritable file); says which and why."""


class NotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "not found"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _safe_url(url: str) -> str:
    try:
        make_url(url)
        return redact_url(url)
    except ArgumentError:
        return "<not a database URL>"  # never echo an unparsed URL: it may hold a password


def _make_engine(url: str, *, read_only: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and read_only:
        # `awm status` on a home it cannot write: open the file read-only, create nothing (no -wal/-shm
        # when the folder is not writable: immutable)
        path = Path(parsed.database or "")
        immutable = "&immutable=1" if not os.access(path.parent, os.W_OK) or \
            os.statvfs(path.parent).f_flag & os.ST_RDONLY else ""
        return create_engine(f"sqlite:///file:{path}?mode=ro{immutable}&uri=true",
                             connect_args={"check_same_thread": False})
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so that we can BEGIN IMMEDIATE:
            # a deferred transaction that later writes fails with SQLITE_BUSY at once
            # (no busy-timeout wait) when another writer holds the lock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # `Store.reading()`: a plain (deferred) transaction, a WAL snapshot that neither takes
            # the write lock nor waits for a writer
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE")

        return engine
    connect_args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
    # LIFO: one reader's sequential reads reuse the same connection, where psycopg has prepared them
    engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4, pool_use_lifo=True,
                           connect_args=connect_args)
    if parsed.get_backend_name() == "postgresql":
        event.listen(engine, "connect", _pg_planner_costs)
    return engine


def _pg_planner_costs(dbapi_conn: Any, _record: Any) -> None:
    # PostgreSQL's default random_page_cost (4.0) prices index lookups for spinning disks: with
    # the store in RAM/SSD it picks a 30,000-row seq scan over 100 index searches for a filtered
    # leaderboard page (27 ms instead of 7 ms); 1.1 is the usual SSD value. A SET once per new
    # connection (no round trip per read), not a startup option: that would replace the URL's
    # own `options` and PGOPTIONS, and poolers such as pgbouncer refuse unknown startup options.
    # It only prices plans: a pooler that hands the session on passes on a planner cost.
    with dbapi_conn.cursor() as cur:
        cur.execute(f"SET random_page_cost = {PG_RANDOM_PAGE_COST}")
    dbapi_conn.commit()


def _make_statement_engine(url: str) -> Engine:
    """PostgreSQL: the pool of `Store.read_once`, apart from the store's: autocommit connections that
    cannot write (`default_transaction_read_only`), checked out WITHOUT the pre-ping round trip (a
    third of a leaderboard page's time besides its statement). A connection the server dropped fails
    its statement instead; `read_once` then reads again, once, on a new one (safe: it is a read)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=False, pool_size=1, max_overflow=4,
                           pool_use_lifo=True, connect_args={"connect_timeout": 10})

    @event.listens_for(engine, "connect")
    def _statement_session(dbapi_conn: Any, record: Any) -> None:
        _pg_planner_costs(dbapi_conn, record)
        with dbapi_conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = on")
        dbapi_conn.commit()
        if engine.dialect.driver == "psycopg":
            dbapi_conn.cursor_factory = _binary_cursor(dbapi_conn.cursor_factory)

    return engine


@functools.cache
def _binary_cursor(base: type) -> type:
    """psycopg 3's cursor `base`, asking for results in PostgreSQL's binary format (`cursor(binary=True)`,
    which SQLAlchemy never passes). The same Python values as text results; the server skips formatting
    each value as text and the client skips parsing it: a leaderboard page's 50 rows x 34 columns (floats,
    timestamps) came ~10-17% faster. psycopg is imported here only: a SQLite store runs without it."""
    from psycopg.pq import Format  # deferred: psycopg is only installed with the postgres extra

    class BinaryResultsCursor(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.format = Format.BINARY

    return BinaryResultsCursor


class Store:
    def __init__(self, url: str, *, upgrade: bool = True, read_only: bool = False) -> None:
        """`read_only`: no migrations, no writes (SQLite opened `mode=ro`), for reading a home this
        process cannot write. Failing to open or reach the database raises StoreUnavailableError."""
        self.url = url
        try:
            self.engine = _make_engine(url, read_only=read_only)
            self.dialect = self.engine.dialect.name
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            self.read_only = read_only
            self._stats_checked = 0.0
            self._statement_engine: Engine | None = None  # PostgreSQL: `read_once`'s pool, made on first use
            self._statement_lock = threading.Lock()
            # `read_once(..., reused=True)`: id(statement) -> (statement, its driver form or None)
            self._driver_reads: OrderedDict[int, tuple[Executable, DriverRead | None]] = OrderedDict()
            if upgrade and not read_only:
                self.upgrade()
                self.refresh_statistics()
        except (OperationalError, ArgumentError, NoSuchModuleError, ImportError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise StoreUnavailableError(
                f"cannot open the platform store {_safe_url(url)}: {reason[0] if reason else type(exc).__name__} "
                "(check storage.url, or AWM_HOME for the default SQLite store)") from None

    # ------------------------------------------------------------------ lifecycle ----
    @classmethod
    def default(cls, url: str | None = None) -> Store:
        return cls(url or default_platform_db_url())

    @classmethod
    def for_config(cls, cfg: Any) -> Store:
        return cls.default(cfg.storage.url)

    def close(self) -> None:
        self.engine.dispose()
        if self._statement_engine is not None:
            self._statement_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Many processes may open a fresh store at once (16 workers, a sweep): only one
        may run the migrations. SQLite: a file lock; PostgreSQL: an advisory lock."""
        if self.dialect == "sqlite":
            db = make_url(self.url).database
            if not db or db == ":memory:":
                yield
                return
            with open(f"{db}.migrate.lock", "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            key = int(hashlib.sha256(b"awm-platform-migrations").hexdigest()[:15], 16)
            with self.engine.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                    conn.commit()

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str:
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        assert head is not None
        return head

    def _alembic_config(self) -> Any:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["engine"] = self.engine
        return cfg

    def upgrade(self, revision: str = "head") -> str:
        """Bring the schema to `revision` (Alembic). Idempotent and safe to race."""
        with self._migration_lock():
            if revision == "head" and self.current_revision() == self.head_revision():
                return revision
            command.upgrade(self._alembic_config(), revision)
        return self.current_revision() or ""

    # ------------------------------------------------------------------- sessions ----
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    def refresh_statistics(self, *, force: bool = False) -> bool:
        """SQLite: give the query planner statistics (ANALYZE of `ANALYZED_TABLES`: ~0.2 s at 10k
        checkpoints) when it has none or the evaluations table grew or shrank 2x since. Without them SQLite
        guesses from the index shapes alone and picks the one-column status index over the
        evaluation key for the leaderboard's joins (seconds instead of milliseconds at 10k
        checkpoints). PostgreSQL keeps its own (autovacuum). Returns whether it analyzed; a
        read-only store never does."""
        if self.dialect != "sqlite" or self.read_only:
            return False
        self._stats_checked = time.monotonic()
        with self.engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as conn:
            rows = int(conn.exec_driver_sql("SELECT max(id) FROM evaluations").scalar() or 0)
            has_table = conn.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'").scalar()
            stat = conn.exec_driver_sql("SELECT stat FROM sqlite_stat1 WHERE tbl = 'evaluations' LIMIT 1").scalar() \
                if has_table else None
            conn.rollback()
        seen = int(str(stat).split()[0]) if stat else -1
        if not force and (rows == 0 or (seen >= 0 and seen // 2 <= rows <= max(1, seen) * 2)):
            return False  # empty (nothing to learn) or still about the size it was analyzed at

        def op() -> None:
            with self.engine.begin() as conn:  # BEGIN IMMEDIATE: one writer at a time
                for table in ANALYZED_TABLES:
                    conn.exec_driver_sql(f"ANALYZE {table}")

        self._retry(op)
        return True

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads only, in one transaction (one consistent snapshot of every
        query made through it). On SQLite it is a deferred transaction, not `session()`'s BEGIN
        IMMEDIATE: readers (the leaderboard) never take the write lock, so they neither block the
        workers' commits nor wait behind them. On PostgreSQL it is a REPEATABLE READ, READ ONLY
        transaction (a write through it fails), ended with COMMIT: psycopg forgets every prepared statement of a
        connection on ROLLBACK (and deallocates them on the server), so reads that rolled back were
        parsed and planned afresh each time, and never prepared (the leaderboard page: ~2x)."""
        if self.dialect == "sqlite" and time.monotonic() - self._stats_checked > STATS_CHECK_S:
            self.refresh_statistics()  # a long-lived reader (the UI) sees the store grow
        options: dict[str, Any] = {READ_ONLY_OPTION: True}
        if self.dialect == "postgresql":
            # BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY (one command): one snapshot for every
            # statement (READ COMMITTED takes one per statement); read-only, it never fails to serialize
            options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            yield conn  # leaving `begin()` commits (nothing was written: READ ONLY / a deferred read)

    def read_once(self, statement: Executable, *, reused: bool = False) -> list[Any]:
        """The rows of ONE read statement, which sees one snapshot by itself. On PostgreSQL it runs
        outside a transaction block (autocommit): no BEGIN and COMMIT round trips, which are most of a
        small read's time there (the leaderboard's page). On SQLite: in a `reading()` transaction
        (in-process, nothing to save). Rows are named tuples (by position, by name, `_fields`).

        `reused`: the caller runs this very statement object again and again (the leaderboard's memoized
        page statements). On PostgreSQL with psycopg it is then compiled once (the last
        DRIVER_READS_KEPT, by identity) and run on the driver directly (store/driver_read.py): the same
        rows without SQLAlchemy's per-execution work, ~20% of a page. A statement made afresh for each
        call gains nothing from it (it would be compiled each time)."""
        if self.dialect != "postgresql":
            with self.reading() as conn:
                return list(conn.execute(statement).all())
        with self._statement_lock:
            if self._statement_engine is None:
                self._statement_engine = _make_statement_engine(self.url)
        engine = self._statement_engine
        driver_read = self._driver_read(statement, engine) if reused else None
        if driver_read is not None:
            return run_driver_read(engine, driver_read)
        for attempt in (1, 2):
            try:
                with engine.connect() as conn:
                    return list(conn.execute(statement).all())
            except DBAPIError as exc:
                # the server closed a pooled connection (restart, idle timeout): SQLAlchemy has dropped
                # the pool's connections of before; read again on a new one. Other errors propagate.
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def _driver_read(self, statement: Executable, engine: Engine) -> DriverRead | None:
        """`statement` compiled for the driver once (None: it cannot be; read through SQLAlchemy)."""
        key = id(statement)
        with self._statement_lock:
            hit = self._driver_reads.get(key)
            if hit is not None and hit[0] is statement:  # an id is reused only after its object is gone
                self._driver_reads.move_to_end(key)
                return hit[1]
        compiled = compile_driver_read(statement, engine)
        with self._statement_lock:
            self._driver_reads[key] = (statement, compiled)
            while len(self._driver_reads) > DRIVER_READS_KEPT:
                self._driver_reads.popitem(last=False)
        return compiled

    def _retry(self, fn: Any, attempts: int = 8) -> Any:
        """SQLite under heavy contention can still report 'database is locked' past the
        busy timeout on some paths; PostgreSQL can raise serialization failures. Retry
        those with backoff; everything else propagates."""
        for i in range(attempts):
            try:
                return fn()
            except OperationalError as exc:
                msg = str(exc).lower()
                if i == attempts - 1 or not ("locked" in msg or "busy" in msg or "deadlock" in msg
                                             or "could not serialize" in msg):
                    raise
                time.sleep(min(2.0, 0.05 * 2**i))
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------- runs ----
    def create_run(self, *, name: str, config_hash: str, resolved_config: Mapping[str, Any], output_dir: str | Path,
                   cluster: str | None = None, git_commit: str | None = None, num_gpus: int = 1,
                   sweep_name: str | None = None, trial_number: int | None = None,
                   status: str = "PENDING") -> Run:
        _check_status(status)
        # run_params record `pretrained.family: auto` as the family a readable local model folder
        # resolves to (as evaluation specs do); read here, not inside the write transaction
        params_config = _with_resolved_family(resolved_config)

        def op() -> Run:
            now = utcnow()
            run = Run(name=name, config_hash=config_hash, resolved_config=dict(resolved_config), status=status,
                      cluster=cluster, git_commit=git_commit, output_dir=str(output_dir), num_gpus=num_gpus,
                      job_ids=[], hosts=[], gpu_hours=0.0, sweep_name=sweep_name, trial_number=trial_number,
                      created_at=now, updated_at=now)
            try:
                with self.session() as s:
                    s.add(run)
                    search_space: Any = None
                    if sweep_name is not None:
                        sweep_conf = s.scalar(select(Sweep.resolved_config).where(Sweep.study_name == sweep_name))
                        search_space = ((sweep_conf or {}).get("sweep") or {}).get("params")
                    s.flush()  # the run's id, for its parameter rows (same transaction)
                    params = leaderboard_params(params_config, search_space)
                    if params:
                        s.execute(self._insert(RunParam).values([{"run_id": run.id, **p} for p in params]))
            except IntegrityError:
                raise StoreError(f"a run named {name!r} already exists (use another name, or `awm rerun {name}`)") from None
            return run

        return self._retry(op)

    def get_run(self, name: str) -> Run:
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.name == name))
        if run is None:
            raise NotFoundError(f"no run named {name!r} in {self.redacted_url}")
        return run

    def find_run(self, name: str) -> Run | None:
        try:
            return self.get_run(name)
        except NotFoundError:
            return None

    def list_runs(self, *, status: str | Sequence[str] | None = None, sweep_name: str | None = None,
                  active_only: bool = False) -> list[Run]:
        q = select(Run).order_by(Run.created_at, Run.id)
        if status is not None:
            q = q.where(Run.status.in_([status] if isinstance(status, str) else list(status)))
        if active_only:
            q = q.where(Run.status.not_in(list(TERMINAL_STATUSES)))
        if sweep_name is not None:
            q = q.where(Run.sweep_name == sweep_name)
        with self.session() as s:
            return list(s.scalars(q))

    # what a run's life changes; its definition (name, config, sweep and trial) is fixed at creation:
    # `run_params` and `evaluations.sweep_name` are derived from it then
    _RUN_MUTABLE = frozenset({"status", "cluster", "job_ids", "hosts", "num_gpus", "gpu_hours", "mlflow_run_id",
                              "git_commit", "log_dir", "error", "started_at", "ended_at"})

    def update_run(self, name: str, /, **fields: Any) -> Run:
        bad = set(fields) - self._RUN_MUTABLE
        if bad:
            raise StoreError(f"cannot update run fields {sorted(bad)}; mutable: {sorted(self._RUN_MUTABLE)}")
        if "status" in fields:
            _check_status(fields["status"])

        def op() -> Run:
            with self.session() as s:
                run = s.scalar(select(Run).where(Run.name == name))
                if run is None:
                    raise NotFoundError(f"no run named {name!r}")
                for k, v in fields.items():
                    setattr(run, k, list(v) if k in ("job_ids", "hosts") else v)
                run.updated_at = utcnow()
            return run

        return self._retry(op)

    def compare_and_set_run(self, name: str, /, expected_status: str, *, gpu_hours: float | None = None,
                            add_gpu_hours: float = 0.0, **fields: Any) -> bool:
        """Write `fields` (with `status`, a status change) only if the run's status is still
        `expected_status`: ONE `UPDATE ... WHERE name = :name AND status = :expected`, atomic on
        SQLite and PostgreSQL. Returns whether it won (False: another process changed the status
        first, or there is no such run). GPU-hours never decrease: `gpu_hours` (a total, e.g.
        the scheduler's) is taken only if larger than the stored value, `add_gpu_hours` (time
        used since the last report) is added, both inside the same UPDATE. Only the run
        lifecycle (awm_platform.runner.lifecycle) calls this with `status`."""
        bad = set(fields) - self._RUN_MUTABLE
        if bad:
            raise StoreError(f"cannot update run fields {sorted(bad)}; mutable: {sorted(self._RUN_MUTABLE)}")
        _check_status(expected_status)
        if "status" in fields:
            _check_status(fields["status"])
        values: dict[str, Any] = {k: list(v) if k in ("job_ids", "hosts") else v for k, v in fields.items()}
        values["updated_at"] = utcnow()
        values["gpu_hours"] = _raised_gpu_hours(gpu_hours, add_gpu_hours)

        def op() -> bool:
            with self.session() as s:
                result = s.execute(update(Run).where(Run.name == name, Run.status == expected_status)
                                   .values(values).execution_options(synchronize_session=False))
            return bool(getattr(result, "rowcount", 0) == 1)

        return bool(self._retry(op))

    def add_gpu_hours(self, name: str, /, *, gpu_hours: float | None = None, add_gpu_hours: float = 0.0) -> None:
        """Account GPU time whatever the run's status (a late report after the run ended still
        used the GPUs): same never-decreasing rule as `compare_and_set_run`, one UPDATE."""

        def op() -> None:
            with self.session() as s:
                s.execute(update(Run).where(Run.name == name)
                          .values(gpu_hours=_raised_gpu_hours(gpu_hours, add_gpu_hours), updated_at=utcnow())
                          .execution_options(synchronize_session=False))

        self._retry(op)

    def append_job_id(self, name: str, job_id: str, host: str | None = None) -> Run:
        """Record a (re)submission's cluster job id; requeues keep the id, new jobs append."""

        def op() -> Run:
            with self.session() as s:
                run = s.scalar(select(Run).where(Run.name == name).with_for_update())
                if run is None:
                    raise NotFoundError(f"no run named {name!r}")
                if str(job_id) not in run.job_ids:
                    run.job_ids = [*run.job_ids, str(job_id)]
                if host and host not in run.hosts:
                    run.hosts = [*run.hosts, host]
                run.updated_at = utcnow()
            return run

        return self._retry(op)

    def delete_run(self, name: str) -> None:
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.name == name))
            if run is None:
                raise NotFoundError(f"no run named {name!r}")
            s.delete(run)
            s.add(DeletedRun(name=name, deleted_at=utcnow()))  # in the same transaction

    # ---------------------------------------------------------------- checkpoints ----
    def add_checkpoint(self, run_name: str, *, step: int, path: str | Path, sha256: str,
                       formats: Sequence[str]) -> Checkpoint:
        """Idempotent on (run, step): a checkpoint re-registered after a resume updates the row."""

        def op() -> Checkpoint:
            with self.session() as s:
                run_id = self._run_id(s, run_name)
                ckpt = s.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
                if ckpt is None:
                    ckpt = Checkpoint(run_id=run_id, step=step, path=str(path), sha256=sha256,
                                      formats=list(formats), created_at=utcnow())
                    s.add(ckpt)
                else:
                    ckpt.path, ckpt.sha256, ckpt.formats = str(path), sha256, list(formats)
            return ckpt

        return self._retry(op)

    def list_checkpoints(self, run_name: str) -> list[Checkpoint]:
        with self.session() as s:
            run_id = self._run_id(s, run_name)
            return list(s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.step)))

    def get_checkpoint(self, run_name: str, step: int) -> Checkpoint:
        with self.session() as s:
            run_id = self._run_id(s, run_name)
            ckpt = s.scalar(select(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
        if ckpt is None:
            raise NotFoundError(f"run {run_name!r} has no checkpoint at step {step}")
        return ckpt

    # ---------------------------------------------------------------- evaluations ----
    # The evaluation service's state (docs/evals.md). Every write is a compare-and-set, so any
    # number of schedulers and workers may race: the key is unique, a shard has one lease holder,
    # a shard's sample rows commit with its DONE status, and the aggregate commits once.
    def ensure_evaluation(self, *, checkpoint_sha256: str, benchmark: str, benchmark_version: str, spec_hash: str,
                          spec: Mapping[str, Any], target: str, num_shards: int, run_name: str | None = None,
                          step: int | None = None, checkpoint_id: int | None = None,
                          checkpoint_path: str | None = None, partial: bool = False,
                          images_dir: str | None = None) -> tuple[Evaluation, bool]:
        """The evaluation of this key, created PENDING with its `num_shards` shards (one transaction)
        if it does not exist yet. Returns (row, created): a lost race returns the winner's row."""
        if num_shards < 1:
            raise StoreError(f"num_shards must be >= 1, got {num_shards}")
        key = (Evaluation.checkpoint_sha256 == checkpoint_sha256, Evaluation.benchmark == benchmark,
               Evaluation.benchmark_version == benchmark_version, Evaluation.spec_hash == spec_hash)

        def op() -> tuple[Evaluation, bool]:
            now = utcnow()
            with self.session() as s:
                sweep_name = self._sweeps_of(s, [run_name]).get(run_name) if run_name is not None else None
                stmt = self._insert(Evaluation).values(_evaluation_values(
                    checkpoint_sha256=checkpoint_sha256, benchmark=benchmark, benchmark_version=benchmark_version,
                    spec_hash=spec_hash, spec=spec, target=target, run_name=run_name, sweep_name=sweep_name, step=step,
                    checkpoint_id=checkpoint_id, checkpoint_path=checkpoint_path, partial=partial,
                    num_shards=num_shards, images_dir=images_dir, now=now,
                )).on_conflict_do_nothing(index_elements=["checkpoint_sha256", "benchmark", "benchmark_version",
                                                         "spec_hash"]).returning(Evaluation.id)
                # RETURNING, not rowcount: the ORM's insert path reports no rowcount on PostgreSQL
                created = s.execute(stmt).first() is not None
                ev = s.scalars(select(Evaluation).where(*key)).one()
                if created:
                    s.execute(self._insert(EvalShard).values([
                        {"evaluation_id": ev.id, "shard_index": k, "status": ShardStatus.PENDING.value,
                         "attempts": 0, "num_images": 0} for k in range(int(num_shards))]))
            return ev, created

        return self._retry(op)

    def import_evaluations(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Record evaluations that were computed elsewhere as COMPLETED, with their aggregate, in
        ONE transaction (bulk: results brought over from another store, the leaderboard's
        performance seed in perf/leaderboard.py). Each record holds `ensure_evaluation`'s keyword
        arguments (num_shards defaults to 1) plus `score`, `ci_low`, `ci_high`, `sub_scores`,
        `num_samples`; the row is derived exactly as `ensure_evaluation` derives it (weights,
        compare_hash) and its shards are DONE. A key already in the store is an error (nothing is
        written). No per-sample rows: those come only from a worker's `commit_shard`. Returns the
        number of evaluations written."""
        now = utcnow()
        rows = []
        for r in records:
            values = _evaluation_values(
                checkpoint_sha256=r["checkpoint_sha256"], benchmark=r["benchmark"],
                benchmark_version=r["benchmark_version"], spec_hash=r["spec_hash"], spec=r["spec"],
                target=r["target"], run_name=r.get("run_name"), sweep_name=None, step=r.get("step"),
                checkpoint_id=r.get("checkpoint_id"), checkpoint_path=r.get("checkpoint_path"),
                partial=bool(r.get("partial", False)), num_shards=int(r.get("num_shards", 1)),
                images_dir=r.get("images_dir"), now=now)
            values.update(status=EvalStatus.COMPLETED.value, score=float(r["score"]), ci_low=float(r["ci_low"]),
                          ci_high=float(r["ci_high"]), sub_scores=dict(r.get("sub_scores") or {}),
                          num_samples=int(r["num_samples"]), started_at=now, ended_at=now)
            rows.append(values)

        def op() -> int:
            try:
                with self.session() as s:
                    sweeps = self._sweeps_of(s, {r["run_name"] for r in rows if r["run_name"] is not None})
                    for r in rows:
                        r["sweep_name"] = sweeps.get(r["run_name"])
                    for start in range(0, len(rows), SAMPLE_ROWS_PER_INSERT // 4):
                        chunk = rows[start:start + SAMPLE_ROWS_PER_INSERT // 4]
                        created = s.execute(self._insert(Evaluation).values(chunk)
                                            .returning(Evaluation.id, Evaluation.num_shards)).all()
                        shards = [{"evaluation_id": ev_id, "shard_index": k, "status": ShardStatus.DONE.value,
                                   "attempts": 0, "num_images": 0, "finished_at": now}
                                  for ev_id, n in created for k in range(n)]
                        s.execute(self._insert(EvalShard).values(shards))
            except IntegrityError as exc:
                raise StoreError(f"cannot import the evaluations: an evaluation key is already in the store "
                                 f"({str(exc.orig).splitlines()[0]})") from None
            return len(rows)

        return self._retry(op) if rows else 0

    @staticmethod
    def _sweeps_of(s: Session, run_names: Iterable[str]) -> dict[str, str | None]:
        """The sweep of each named run that exists (copied onto its evaluations: `evaluations.sweep_name`)."""
        names = sorted(set(run_names))
        if not names:
            return {}
        return {n: sw for n, sw in s.execute(select(Run.name, Run.sweep_name).where(Run.name.in_(names)))}

    def get_evaluation(self, evaluation_id: int) -> Evaluation:
        with self.session() as s:
            ev = s.get(Evaluation, int(evaluation_id))
        if ev is None:
            raise NotFoundError(f"no evaluation with id {evaluation_id}")
        return ev

    def find_evaluation(self, checkpoint_sha256: str, benchmark: str, benchmark_version: str,
                        spec_hash: str) -> Evaluation | None:
        with self.session() as s:
            return s.scalar(select(Evaluation).where(
                Evaluation.checkpoint_sha256 == checkpoint_sha256, Evaluation.benchmark == benchmark,
                Evaluation.benchmark_version == benchmark_version, Evaluation.spec_hash == spec_hash))

    def list_evaluations(self, *, run_name: str | None = None, benchmark: str | None = None,
                         status: str | Sequence[str] | None = None) -> list[Evaluation]:
        q = select(Evaluation).order_by(Evaluation.run_name, Evaluation.step, Evaluation.benchmark, Evaluation.id)
        if benchmark is not None:
            q = q.where(Evaluation.benchmark == benchmark)
        if status is not None:
            q = q.where(Evaluation.status.in_([status] if isinstance(status, str) else list(status)))
        with self.session() as s:
            if run_name is not None:
                self._run_id(s, run_name)  # an unknown run is an error, not an empty list
                q = q.where(Evaluation.run_name == run_name)
            return list(s.scalars(q))

    def list_shards(self, evaluation_id: int) -> list[EvalShard]:
        with self.session() as s:
            return list(s.scalars(select(EvalShard).where(EvalShard.evaluation_id == evaluation_id)
                                  .order_by(EvalShard.shard_index)))

    def claim_submission(self, evaluation_id: int, token: str, *, stale_after_s: float) -> bool:
        """Become the one scheduler that submits a job for this evaluation: succeeds when no
        submission is recorded, or the last one is older than `stale_after_s` (its job is
        presumed gone: the caller checked). Exactly one of racing callers wins."""
        now = utcnow()
        stale = now - timedelta(seconds=float(stale_after_s))

        def op() -> bool:
            with self.session() as s:
                res = s.execute(update(Evaluation).where(
                    Evaluation.id == evaluation_id,
                    Evaluation.status.in_([EvalStatus.PENDING.value, EvalStatus.RUNNING.value]),
                    (Evaluation.submitted_at.is_(None)) | (Evaluation.submitted_at < stale),
                ).values(submit_token=token, submitted_at=now, updated_at=now))
                return res.rowcount == 1

        return self._retry(op)

    def release_submission(self, evaluation_id: int, token: str) -> bool:
        """Undo `claim_submission` of `token` (its submission failed: nothing runs for it)."""

        def op() -> bool:
            with self.session() as s:
                res = s.execute(update(Evaluation).where(Evaluation.id == evaluation_id,
                                                         Evaluation.submit_token == token)
                                .values(submit_token=None, submitted_at=None, updated_at=utcnow()))
                return res.rowcount == 1

        return self._retry(op)

    def record_eval_job(self, evaluation_ids: Sequence[int], *, cluster: str, job_dir: str | Path,
                        job_id: str) -> None:
        """Remember the job serving these evaluations (appended: a resubmission keeps the history)."""

        def op() -> None:
            with self.session() as s:
                for ev in s.scalars(select(Evaluation).where(Evaluation.id.in_(list(evaluation_ids)))
                                    .with_for_update()):
                    ev.job_ids = [*ev.job_ids, str(job_id)]
                    ev.cluster, ev.job_dir, ev.updated_at = cluster, str(job_dir), utcnow()

        self._retry(op)

    def claim_shard(self, evaluation_id: int, holder: str, *, lease_s: float,
                    prefer_index: int | None = None) -> EvalShard | None:
        """Claim a PENDING shard, or a RUNNING one whose lease expired (its worker died), for
        `lease_s` seconds; the evaluation becomes RUNNING. None: nothing claimable, or the
        evaluation is over (cancelled, failed, completed)."""

        def op() -> EvalShard | None:
            now = utcnow()
            with self.session() as s:
                status = s.scalar(select(Evaluation.status).where(Evaluation.id == evaluation_id))
                if status not in (EvalStatus.PENDING, EvalStatus.RUNNING):
                    return None
                claimable = (EvalShard.status == ShardStatus.PENDING.value) | (
                    (EvalShard.status == ShardStatus.RUNNING.value) & (EvalShard.lease_expires_at < now))
                order = [EvalShard.shard_index]
                if prefer_index is not None:
                    order.insert(0, case((EvalShard.shard_index == int(prefer_index), 0), else_=1))
                candidates = list(s.scalars(select(EvalShard.id).where(EvalShard.evaluation_id == evaluation_id,
                                                                       claimable).order_by(*order)))
                for shard_id in candidates:
                    res = s.execute(update(EvalShard).where(EvalShard.id == shard_id, claimable).values(
                        status=ShardStatus.RUNNING.value, lease_holder=holder,
                        lease_expires_at=now + timedelta(seconds=float(lease_s)),
                        attempts=EvalShard.attempts + 1))
                    if res.rowcount == 1:
                        s.execute(update(Evaluation).where(Evaluation.id == evaluation_id,
                                                           Evaluation.status == EvalStatus.PENDING.value)
                                  .values(status=EvalStatus.RUNNING.value, started_at=now, updated_at=now))
                        return s.get(EvalShard, shard_id)
                return None

        return self._retry(op)

    def renew_lease(self, shard_id: int, holder: str, *, lease_s: float) -> bool:
        """Extend `holder`'s lease; False when the shard is no longer ours (re-claimed, done, or
        its evaluation was cancelled): the worker must drop it and never commit it."""

        def op() -> bool:
            now = utcnow()
            with self.session() as s:
                res = s.execute(update(EvalShard).where(
                    EvalShard.id == shard_id, EvalShard.lease_holder == holder,
                    EvalShard.status == ShardStatus.RUNNING.value,
                    EvalShard.evaluation_id.in_(select(Evaluation.id).where(
                        Evaluation.status.in_([EvalStatus.PENDING.value, EvalStatus.RUNNING.value]))),
                ).values(lease_expires_at=now + timedelta(seconds=float(lease_s))))
                return res.rowcount == 1

        return self._retry(op)

    def commit_shard(self, shard_id: int, holder: str, rows: Sequence[Mapping[str, Any]], *,
                     gen_s: float | None = None, score_s: float | None = None) -> bool:
        """ONE transaction: the shard RUNNING -> DONE (only while `holder` holds it and the
        evaluation is running) and its sample rows. False: nothing was written (lost lease)."""
        values = _sample_values(rows)

        def op() -> bool:
            now = utcnow()
            with self.session() as s:
                shard = s.get(EvalShard, shard_id)
                if shard is None:
                    return False
                res = s.execute(update(EvalShard).where(
                    EvalShard.id == shard_id, EvalShard.lease_holder == holder,
                    EvalShard.status == ShardStatus.RUNNING.value,
                    EvalShard.evaluation_id.in_(select(Evaluation.id).where(
                        Evaluation.status.in_([EvalStatus.PENDING.value, EvalStatus.RUNNING.value]))),
                ).values(status=ShardStatus.DONE.value, finished_at=now, num_images=len(values),
                         gen_s=gen_s, score_s=score_s, error=None))
                if res.rowcount != 1:
                    return False
                for v in values:
                    v["evaluation_id"] = shard.evaluation_id
                # in chunks: one multi-row INSERT binds 6 values a row, and SQLite (32766 in many
                # builds) and PostgreSQL (65535) cap the parameters of a statement; same transaction
                for start in range(0, len(values), SAMPLE_ROWS_PER_INSERT):
                    stmt = self._insert(SampleScore).values(values[start:start + SAMPLE_ROWS_PER_INSERT])
                    s.execute(stmt.on_conflict_do_update(
                        index_elements=["evaluation_id", "prompt_index", "sample_index"],
                        set_={"score": stmt.excluded.score, "seed": stmt.excluded.seed, "extra": stmt.excluded.extra}))
                return True

        return self._retry(op)

    def release_shard(self, shard_id: int, holder: str, error: str) -> bool:
        """Give a shard back after a worker error (PENDING again; its attempts keep counting)."""

        def op() -> bool:
            with self.session() as s:
                res = s.execute(update(EvalShard).where(
                    EvalShard.id == shard_id, EvalShard.lease_holder == holder,
                    EvalShard.status == ShardStatus.RUNNING.value,
                ).values(status=ShardStatus.PENDING.value, lease_holder=None, lease_expires_at=None,
                         error=error[:4000]))
                return res.rowcount == 1

        return self._retry(op)

    def complete_evaluation(self, evaluation_id: int, *, score: float, ci_low: float, ci_high: float,
                            sub_scores: Mapping[str, Any], num_samples: int, wall_s: float | None = None,
                            gpu_hours: float = 0.0) -> bool:
        """ONE transaction: the aggregate and COMPLETED, only when every shard is DONE and the
        evaluation is still running. True for the one caller that completed it."""

        def op() -> bool:
            now = utcnow()
            with self.session() as s:
                open_shards = s.scalar(select(func.count()).select_from(EvalShard).where(
                    EvalShard.evaluation_id == evaluation_id, EvalShard.status != ShardStatus.DONE.value))
                if open_shards:
                    return False
                res = s.execute(update(Evaluation).where(
                    Evaluation.id == evaluation_id,
                    Evaluation.status.in_([EvalStatus.PENDING.value, EvalStatus.RUNNING.value]),
                ).values(status=EvalStatus.COMPLETED.value, score=float(score), ci_low=float(ci_low),
                         ci_high=float(ci_high), sub_scores=dict(sub_scores), num_samples=int(num_samples),
                         wall_s=wall_s, gpu_hours=Evaluation.gpu_hours + max(0.0, float(gpu_hours)),
                         error=None, ended_at=now, updated_at=now))
                return res.rowcount == 1

        return self._retry(op)

    def add_eval_gpu_hours(self, evaluation_id: int, gpu_hours: float) -> None:
        """Account a worker's time on an evaluation (GPU-hours only grow)."""

        def op() -> None:
            with self.session() as s:
                s.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(
                    gpu_hours=Evaluation.gpu_hours + max(0.0, float(gpu_hours))))

        self._retry(op)

    def _end_evaluation(self, evaluation_id: int, status: EvalStatus, error: str | None,
                        from_statuses: Sequence[str]) -> bool:
        def op() -> bool:
            now = utcnow()
            with self.session() as s:
                res = s.execute(update(Evaluation).where(
                    Evaluation.id == evaluation_id, Evaluation.status.in_(list(from_statuses)),
                ).values(status=status.value, error=error, ended_at=now, updated_at=now))
                if res.rowcount == 1:  # leases end with the evaluation: a worker still on it stops committing
                    s.execute(update(EvalShard).where(EvalShard.evaluation_id == evaluation_id,
                                                      EvalShard.status == ShardStatus.RUNNING.value)
                              .values(status=ShardStatus.PENDING.value, lease_holder=None, lease_expires_at=None))
                return res.rowcount == 1

        return self._retry(op)

    def fail_evaluation(self, evaluation_id: int, error: str) -> bool:
        return self._end_evaluation(evaluation_id, EvalStatus.FAILED, error[:4000],
                                    [EvalStatus.PENDING.value, EvalStatus.RUNNING.value])

    def cancel_evaluation(self, evaluation_id: int) -> bool:
        return self._end_evaluation(evaluation_id, EvalStatus.CANCELLED, "cancelled by the user",
                                    [EvalStatus.PENDING.value, EvalStatus.RUNNING.value])

    def retry_evaluation(self, evaluation_id: int) -> bool:
        """FAILED/CANCELLED -> PENDING: shards not DONE start over (attempts 0); DONE shards and
        their rows are kept (a finished shard is never redone); the submission is forgotten."""

        def op() -> bool:
            now = utcnow()
            with self.session() as s:
                res = s.execute(update(Evaluation).where(
                    Evaluation.id == evaluation_id,
                    Evaluation.status.in_([EvalStatus.FAILED.value, EvalStatus.CANCELLED.value]),
                ).values(status=EvalStatus.PENDING.value, error=None, ended_at=None, submit_token=None,
                         submitted_at=None, updated_at=now))
                if res.rowcount != 1:
                    return False
                s.execute(update(EvalShard).where(EvalShard.evaluation_id == evaluation_id,
                                                  EvalShard.status != ShardStatus.DONE.value)
                          .values(status=ShardStatus.PENDING.value, lease_holder=None, lease_expires_at=None,
                                  attempts=0, error=None))
                return True

        return self._retry(op)

    def mark_mirrored(self, evaluation_id: int, mlflow_run_id: str) -> None:
        def op() -> None:
            with self.session() as s:
                s.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(
                    mirrored=True, mlflow_run_id=mlflow_run_id, updated_at=utcnow()))

        self._retry(op)

    def get_sample_scores(self, evaluation_id: int) -> list[SampleScore]:
        with self.session() as s:
            return list(s.scalars(select(SampleScore).where(SampleScore.evaluation_id == evaluation_id)
                                  .order_by(SampleScore.prompt_index, SampleScore.sample_index)))

    # -------------------------------------------------------------------- metrics ----
    def log_metrics(self, run_name: str, metrics: Mapping[str, float], step: int) -> None:
        if not metrics:
            return
        now = utcnow()

        def op() -> None:
            with self.session() as s:
                run_id = self._run_id(s, run_name)
                values = [{"run_id": run_id, "key": k, "step": int(step), "value": float(v), "logged_at": now}
                          for k, v in metrics.items()]
                stmt = self._insert(MetricPoint).values(values)
                stmt = stmt.on_conflict_do_update(index_elements=["run_id", "key", "step"],
                                                  set_={"value": stmt.excluded.value,
                                                        "logged_at": stmt.excluded.logged_at})
                s.execute(stmt)

        self._retry(op)

    def get_metric_history(self, run_name: str, key: str) -> list[tuple[int, float]]:
        with self.session() as s:
            run_id = self._run_id(s, run_name)
            rows = s.execute(select(MetricPoint.step, MetricPoint.value)
                             .where(MetricPoint.run_id == run_id, MetricPoint.key == key)
                             .order_by(MetricPoint.step))
            return [(int(a), float(b)) for a, b in rows]

    def metric_keys(self, run_name: str) -> list[str]:
        with self.session() as s:
            run_id = self._run_id(s, run_name)
            return list(s.scalars(select(MetricPoint.key).where(MetricPoint.run_id == run_id).distinct()
                                  .order_by(MetricPoint.key)))

    # --------------------------------------------------------------------- sweeps ----
    def create_sweep(self, *, study_name: str, optuna_storage: str, mlflow_parent_run_id: str | None = None,
                     config_hash: str | None = None, resolved_config: Mapping[str, Any] | None = None) -> Sweep:
        def op() -> Sweep:
            now = utcnow()
            sw = Sweep(study_name=study_name, optuna_storage=optuna_storage,
                       mlflow_parent_run_id=mlflow_parent_run_id, config_hash=config_hash,
                       resolved_config=dict(resolved_config or {}), status="RUNNING", created_at=now, updated_at=now)
            try:
                with self.session() as s:
                    s.add(sw)
            except IntegrityError:
                raise StoreError(f"a sweep named {study_name!r} already exists (resume it with "
                                 f"`awm sweep resume {study_name}`)") from None
            return sw

        return self._retry(op)

    def get_sweep(self, study_name: str) -> Sweep:
        with self.session() as s:
            sw = s.scalar(select(Sweep).where(Sweep.study_name == study_name))
        if sw is None:
            raise NotFoundError(f"no sweep named {study_name!r} in {self.redacted_url}")
        return sw

    def list_sweeps(self) -> list[Sweep]:
        with self.session() as s:
            return list(s.scalars(select(Sweep).order_by(Sweep.created_at)))

    def update_sweep(self, study_name: str, /, **fields: Any) -> Sweep:
        allowed = {"status", "mlflow_parent_run_id", "optuna_storage"}
        if set(fields) - allowed:
            raise StoreError(f"cannot update sweep fields {sorted(set(fields) - allowed)}")

        def op() -> Sweep:
            with self.session() as s:
                sw = s.scalar(select(Sweep).where(Sweep.study_name == study_name))
                if sw is None:
                    raise NotFoundError(f"no sweep named {study_name!r}")
                for k, v in fields.items():
                    setattr(sw, k, v)
                sw.updated_at = utcnow()
            return sw

        return self._retry(op)

    # -------------------------------------------------------------------- helpers ----
    def count(self, table: type[Any]) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def _insert(self, table: type[Any]) -> Any:
        if self.dialect == "sqlite":
            return sqlite_insert(table)
        if self.dialect == "postgresql":
            return postgresql_insert(table)
        raise StoreError(f"unsupported database backend {self.dialect!r} (use SQLite or PostgreSQL)")  # pragma: no cover

    @staticmethod
    def _run_id(s: Session, run_name: str) -> int:
        run_id = s.scalar(select(Run.id).where(Run.name == run_name))
        if run_id is None:
            raise NotFoundError(f"no run named {run_name!r}")
        return int(run_id)


def shard_claimable(shard: EvalShard, now: datetime) -> bool:
    """Would `Store.claim_shard` take this shard at `now`: PENDING, or RUNNING with an expired (or
    no) lease. (The claim itself re-checks this in its UPDATE; callers use it to decide whether a
    job would have work.)"""
    if shard.status == ShardStatus.PENDING:
        return True
    lease = as_utc(shard.lease_expires_at)
    return shard.status == ShardStatus.RUNNING and (lease is None or lease <= now)


def _evaluation_values(*, checkpoint_sha256: str, benchmark: str, benchmark_version: str, spec_hash: str,
                       spec: Mapping[str, Any], target: str, run_name: str | None, sweep_name: str | None,
                       step: int | None,
                       checkpoint_id: int | None, checkpoint_path: str | None, partial: bool, num_shards: int,
                       images_dir: str | None, now: datetime) -> dict[str, Any]:
    """A new evaluation row (PENDING), its derived columns included: the one place they are derived."""
    return {"checkpoint_sha256": checkpoint_sha256, "benchmark": benchmark, "benchmark_version": benchmark_version,
            "spec_hash": spec_hash, "spec": dict(spec), "target": target, "run_name": run_name,
            "sweep_name": sweep_name, "step": step,
            "weights": str(spec.get("weights", "policy")),
            "compare_hash": compare_hash(benchmark, benchmark_version, spec, partial),
            "checkpoint_id": checkpoint_id, "checkpoint_path": checkpoint_path, "partial": bool(partial),
            "num_shards": int(num_shards), "images_dir": images_dir, "status": EvalStatus.PENDING.value,
            "sub_scores": {}, "num_samples": 0, "job_ids": [], "gpu_hours": 0.0, "mirrored": False,
            "created_at": now, "updated_at": now}


def leaderboard_params(resolved_config: Mapping[str, Any], search_space: Mapping[str, Any] | None = None,
                       ) -> list[dict[str, Any]]:
    """The `run_params` rows of a run: `LEADERBOARD_PARAMS`, every key of its sweep's search space
    (`search_space`: the sweep's `sweep.params`, dotted keys) and one `tag` row per `tags` entry.
    Numbers (bools excluded) go to `num_value`, anything else to `text_value` (JSON for lists and
    mappings); keys absent from the config are skipped (`method` defaults to 'awm')."""
    rows: list[dict[str, Any]] = []
    keys = list(LEADERBOARD_PARAMS) + sorted(k for k in (search_space or {}) if k not in LEADERBOARD_PARAMS)
    for key in keys:
        found, value = _dotted_get(resolved_config, key)
        if not found and key == "method":
            found, value = True, DEFAULT_METHOD
        if not found or value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"key": key, "num_value": float(value), "text_value": None})
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            rows.append({"key": key, "num_value": None, "text_value": text})
    tags = resolved_config.get("tags") or []
    for tag in sorted({str(t) for t in tags} if isinstance(tags, (list, tuple)) else set()):
        rows.append({"key": "tag", "num_value": None, "text_value": tag})
    return rows


def _with_resolved_family(resolved_config: Mapping[str, Any]) -> Mapping[str, Any]:
    """`resolved_config` with `pretrained.family: auto` replaced by what `family_of_local_model` detects
    (unchanged when there is nothing to resolve or the model folder cannot be read from here)."""
    pretrained = resolved_config.get("pretrained")
    if not isinstance(pretrained, Mapping) or "family" not in pretrained:
        return resolved_config
    family = family_of_local_model(str(pretrained["family"]), str(pretrained.get("model", "")))
    if family == pretrained["family"]:
        return resolved_config
    return {**resolved_config, "pretrained": {**pretrained, "family": family}}


def _dotted_get(data: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _sample_values(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """rows: {prompt_index, sample_index, score, seed?, extra?} -> column values."""
    return [{"prompt_index": int(r["prompt_index"]), "sample_index": int(r["sample_index"]),
             "score": float(r["score"]), "seed": None if r.get("seed") is None else int(r["seed"]),
             "extra": dict(r.get("extra") or {})} for r in rows]


def _raised_gpu_hours(total: float | None, added: float) -> Any:
    """SQL for the new gpu_hours: max(stored, `total`) + `added` (never lower than stored)."""
    raised: Any = Run.gpu_hours if total is None else case((Run.gpu_hours < float(total), float(total)),
                                                           else_=Run.gpu_hours)
    return raised + max(0.0, float(added)) if added else raised


def _check_status(status: str) -> None:
    if status not in RunStatus.__members__:
        raise StoreError(f"unknown run status {status!r}; expected one of {', '.join(RunStatus)}")
