"""The session manager: Celery's ``SessionManager`` over rawbackend's pools.

An "engine" is a ``Pool`` for one URL; a "session" is a checked-out
connection with ``execute``/``fetch_one``/``fetch_all`` and
``commit``/``rollback``/``close``.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from .errors import ReadOnlyServer, Verdict, classify
from .loader import load_dialect
from .models import KNOWN_SLOTS, REQUIRED
from .pool import Pool, PooledConnection
from .url import parse_url, sanitize_url, strip_prefix

__all__ = ("SessionManager", "Session")

logger = logging.getLogger(__name__)
echo_logger = logging.getLogger("rawbackend.echo")

PREPARE_MODELS_MAX_RETRIES = 10
# Pauses between connection attempts while waiting for a server: short, so a
# restart stalls a store by little more than the outage itself. A connect to a
# refused port costs the server nothing, and 10 a second per process is no load.
WAIT_FIRST_PAUSE = 0.02
WAIT_MAX_PAUSE = 0.1

# SQLAlchemy's engine options that the pool understands, with their defaults.
POOL_OPTIONS = {
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 30.0,
    "pool_recycle": -1,
    "pool_use_lifo": False,
    "echo": False,
}
# Understood elsewhere: pre-ping is always on in rawbackend's own way (see
# Session._run), connect_args and prepare_threshold go to the driver.
OTHER_OPTIONS = {"pool_pre_ping", "connect_args", "prepare_threshold"}
_warned_options: set[str] = set()


class Session:
    """A connection checked out of a pool, for one unit of work."""

    __slots__ = ("engine", "_pooled")

    def __init__(self, engine: Pool):
        self.engine = engine
        self._pooled: PooledConnection | None = None

    # The few verbs: run a statement, and say how many rows you want back.
    def execute(self, sql: str, params: dict | None = None) -> int:
        """Run one statement; the number of rows it touched."""
        return self._run(sql, params, _rowcount)

    def fetch_one(self, sql: str, params: dict | None = None) -> dict | None:
        return self._run(sql, params, _one)

    def fetch_all(self, sql: str, params: dict | None = None) -> list[dict]:
        return self._run(sql, params, _all)

    def connection(self) -> Any:
        """The driver connection, checked out now if it is not yet."""
        if self._pooled is None:
            self._pooled = self.engine.getconn()
        return self._pooled.conn

    def commit(self) -> None:
        """Connections run in autocommit: each statement is committed as it runs."""

    def rollback(self) -> None:
        """Nothing to undo in autocommit; a broken connection is dropped on close."""

    def close(self) -> None:
        """Give the connection back to the pool."""
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            self.engine.putconn(pooled)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, sql: str, params: dict | None, consume: Callable):
        engine = self.engine
        if engine.echo:
            echo_logger.info("%s %r", sql, params)
        # Once more on a new connection when the first turns out to be
        # unusable, never twice: every statement we run is idempotent.
        may_rerun = True
        while True:
            if self._pooled is None:
                self._pooled = engine.getconn()
            try:
                return _execute(self._pooled, engine.dialect.keep_cursor, sql, params, consume)
            except Exception as exc:
                verdict = classify(engine.dialect.errors, exc)
                if verdict is None:
                    raise
                pooled, self._pooled = self._pooled, None
                if verdict.disconnect:
                    # The next connection goes to another host of the URL, if it
                    # names several: this one may keep refusing (a Galera node cut
                    # off from its cluster, a read-only server).
                    engine.dialect.server_failed(pooled.conn)
                if may_rerun and engine.dialect.errors.code_of(exc) in engine.dialect.unprepare_codes:
                    # Behind PgBouncer in transaction mode, the statement psycopg
                    # prepared went with another server connection. Stop preparing
                    # on this pool, and run the statement again.
                    engine.disable_prepare()
                    engine.putconn(pooled, discard=True)
                elif may_rerun and verdict.disconnect and not pooled.fresh:
                    # A pooled connection died while idle (server restart, idle
                    # kill): this is pre-ping without a ping on the healthy path.
                    # Its idle siblings are likely dead too.
                    engine.putconn(pooled, discard=True)
                    engine.dispose()
                else:
                    read_only = None
                    if verdict.read_only:  # asked where it went before the connection closes
                        read_only = _read_only_error(engine, pooled.conn, exc, verdict)
                    engine.putconn(pooled, discard=verdict.disconnect)
                    if read_only is not None:
                        raise read_only from exc
                    raise
                logger.info("rawbackend: %s; running the statement again on a new connection", exc)
                may_rerun = False


def _read_only_error(engine: Pool, conn, exc: Exception, verdict: Verdict) -> ReadOnlyServer:
    """The error of a write that reached a server taking none: which server,
    and how to reach the primary instead."""
    dialect = engine.dialect
    where = dialect.address_of(conn) or ", ".join(dialect.locations(engine.params))
    return ReadOnlyServer(
        f"rawbackend: the {dialect.name} server at {where} is read-only (a standby, or a "
        f"read-only session): {exc}; nothing was written. To write to the primary, "
        f"{dialect.read_only_hint or 'point the URL at it'}",
        verdict,
    )


def _execute(pooled: PooledConnection, keep: bool, sql, params, consume):
    conn = pooled.conn
    cursor = pooled.cursor
    if cursor is None or pooled.cursor_of is not conn:
        cursor = conn.cursor()
    try:
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        result = consume(cursor, sql)
    except BaseException:
        # After an error, the next statement gets a cursor of its own.
        pooled.cursor = None
        _close_quietly(cursor)
        raise
    if keep:
        pooled.cursor, pooled.cursor_of = cursor, conn
    else:
        cursor.close()
    return result


def _close_quietly(cursor) -> None:
    try:
        cursor.close()
    except Exception:  # the connection is broken: nothing more to release
        pass


def _rowcount(cursor, sql: str) -> int:
    return cursor.rowcount


# Column names by statement: a statement's columns never change, and reading
# cursor.description builds objects on every call (psycopg: one per column).
_COLUMNS: dict[str, tuple[str, ...]] = {}


def _names(cursor, sql: str) -> tuple[str, ...]:
    names = _COLUMNS.get(sql)
    if names is None:
        names = tuple(d[0] for d in cursor.description)
        if len(_COLUMNS) < 1024:  # ad hoc SQL must not grow it without end
            _COLUMNS[sql] = names
    return names


def _one(cursor, sql: str) -> dict | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(_names(cursor, sql), row, strict=True))


def _all(cursor, sql: str) -> list[dict]:
    names = _names(cursor, sql)
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class SessionManager:
    """Pools by URL, and sessions from them; fork-safe and thread-safe."""

    def __init__(
        self,
        engine_callback: Callable[[Pool], Any] | None = None,
        lock_timeout: float | None = None,
    ):
        self._engines: dict[str, Pool] = {}
        self._sessions: dict[str, Callable[[], Session]] = {}
        self._prepared: set = set()
        self._answered: set[str] = set()  # URLs whose server answered once
        self._answered_writable: set[str] = set()  # ... and took writes (not a standby)
        self._lock = threading.Lock()
        self.forked = False
        self.prepared = False
        self.engine_callback = engine_callback
        self.lock_timeout = lock_timeout  # seconds a lock wait may take; None: the server's
        _MANAGERS.add(self)

    def _after_fork(self) -> None:
        self.forked = True

    def get_engine(self, dburi: str, **kwargs) -> Pool:
        """The pool for ``dburi``, made on first use with SQLAlchemy-style options.

        Unlike Celery's, it pools in every process, forked or not: the pool
        itself is fork-safe.
        """
        engine = self._engines.get(dburi)
        if engine is not None:
            return engine
        with self._lock:
            engine = self._engines.get(dburi)
            if engine is None:
                engine = self._engines[dburi] = self._new_engine(dburi, kwargs)
        return engine

    def _new_engine(self, dburi: str, options: dict) -> Pool:
        dialect, params = parse_url(dburi)
        params.update(options.get("connect_args") or {})
        if "prepare_threshold" in options and dialect.param_types.get("prepare_threshold"):
            params["prepare_threshold"] = dialect.typed(
                {"prepare_threshold": options["prepare_threshold"]})["prepare_threshold"]
        for key in options.keys() - POOL_OPTIONS.keys() - OTHER_OPTIONS:
            if key not in _warned_options:
                _warned_options.add(key)
                logger.warning("rawbackend: engine option %r is not supported and is ignored", key)
        pool_options = {k: options.get(k, default) for k, default in POOL_OPTIONS.items()}
        pool_options.update(dialect.pool_overrides(params))
        engine = Pool(dialect, params, name=sanitize_url(strip_prefix(dburi)), **pool_options)
        if self.lock_timeout:
            apply_lock_timeout(engine, self.lock_timeout)
        if self.engine_callback is not None:
            self.engine_callback(engine)
        return engine

    def create_session(self, dburi: str, short_lived_sessions: bool = False, **kwargs):
        """``(engine, session_factory)`` for ``dburi``."""
        engine = self.get_engine(dburi, **kwargs)
        if short_lived_sessions or dburi not in self._sessions:
            self._sessions[dburi] = lambda: Session(engine)
        return engine, self._sessions[dburi]

    def prepare_models(self, engine: Pool, tables=None) -> None:
        """Create the tables of ``tables`` (a ``models.Tables``) once per pool.

        Many workers starting at once may race to create them: like Celery,
        try again a few times with a backoff.
        """
        if tables is None:
            return
        key = (id(engine), tables.key)
        if key in self._prepared:
            return
        retries = 0
        while True:
            try:
                with Session(engine) as session:
                    tables.create(session)
            except Exception as exc:
                if retries >= PREPARE_MODELS_MAX_RETRIES or not _is_driver_error(engine, exc):
                    raise
                retries += 1
                time.sleep(get_exponential_backoff_interval(10, retries, 1000, True) / 1000)
            else:
                break
        self._prepared.add(key)
        self.prepared = True

    def session_factory(self, dburi: str, tables=None, **kwargs) -> Session:
        """A new session on ``dburi``'s pool, its tables made first if need be."""
        engine, factory = self.create_session(dburi, **kwargs)
        self.prepare_models(engine, tables)
        return factory()

    def invalidate(self, dburi: str) -> None:
        """Drop every pooled connection for ``dburi``."""
        self._sessions.pop(dburi, None)
        engine = self._engines.pop(dburi, None)
        if engine is not None:
            if engine.answered:
                self._answered.add(dburi)
            if engine.answered_writable:
                self._answered_writable.add(dburi)
            engine.dispose()
        self._prepared = {key for key in self._prepared if engine is None or key[0] != id(engine)}

    def has_answered(self, dburi: str, writable: bool = False) -> bool:
        """Whether a server ever accepted a connection for ``dburi`` in this
        manager (in a forked child: in its parent too); with ``writable``, a
        server that takes writes (not a standby)."""
        engine = self._engines.get(dburi)
        if writable:
            return dburi in self._answered_writable or (
                engine is not None and engine.answered_writable)
        return dburi in self._answered or (engine is not None and engine.answered)

    def wait_for_server(self, dburi: str, budget: float, **kwargs) -> bool:
        """Try to connect until the server answers or ``budget`` seconds pass.

        Used between retries after a disconnect, so that a server restart costs
        a stall instead of a lost result. Where a server that takes writes
        answered before, one that doesn't (the standby of a failover not done
        yet, through a URL naming both) does not count. The connection made
        goes into the pool.
        """
        engine = self.get_engine(dburi, **kwargs)
        writable = self.has_answered(dburi, writable=True)
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            try:
                pooled = engine.getconn()
            except Exception as exc:
                if classify(engine.dialect.errors, exc) is None:
                    raise
            else:
                if not (writable and engine.dialect.read_only(pooled.conn)):
                    engine.putconn(pooled)
                    return True
                engine.putconn(pooled, discard=True)
            pause = min(WAIT_FIRST_PAUSE * 2 ** attempt, WAIT_MAX_PAUSE,
                        deadline - time.monotonic())
            attempt += 1
            if pause <= 0:
                return False
            time.sleep(pause)


def apply_lock_timeout(engine: Pool, seconds: float) -> None:
    """Bound every lock wait on ``engine``'s connections to ``seconds``, as the
    dialect says: a connect keyword (an explicit one in the URL or connect_args
    wins), or the ``set_lock_timeout`` statement once per new connection."""
    dialect = engine.dialect
    if dialect.lock_timeout_param:
        engine.params.setdefault(dialect.lock_timeout_param, seconds)
        return
    statements = load_dialect(dialect.name, dialect.paramstyle, KNOWN_SLOTS, REQUIRED)
    sql = statements["set_lock_timeout"].render({})
    params = {"ms": str(max(1, round(seconds * 1000))), "seconds": max(1, math.ceil(seconds))}

    def set_lock_timeout(conn) -> None:
        cursor = conn.cursor()  # a new connection, not pooled yet: no kept cursor
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()

    engine.on_connect.append(set_lock_timeout)


def _is_driver_error(engine: Pool, exc: Exception) -> bool:
    driver = importlib.import_module(engine.dialect.driver)
    return isinstance(exc, getattr(driver, "Error", ()))


_MANAGERS: weakref.WeakSet[SessionManager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for manager in list(_MANAGERS):
        manager._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
