"""Waiting for results: the native join (``get_many``) and the adaptive poll.

Every body runs on sqlite, postgresql and mysql (the ``db`` fixture).
Statements are counted at the driver (every ``execute`` on the connections
the backend checks out) and, for the group join, on the server too: the
server's statement log on PostgreSQL (as in test_statements.py), the
session's ``Com_select`` on MariaDB, SQLite's trace callback.
"""
from __future__ import annotations

import itertools
import multiprocessing
import time
import uuid

import pytest
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, GroupResult

import rawbackend.backend
from conftest import raw_connect, wait_until
from test_faults import PID_SQL, kill
from test_statements import PostgresLog

INTERVAL = 0.5  # Celery's default between polls


def new_id() -> str:
    return str(uuid.uuid4())


class Counted:
    """Every statement the backend's pool runs, with the time it was sent
    (``time.monotonic``), while installed on the backend's engine."""

    def __init__(self, backend):
        self.backend = backend
        self.engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
        self.log: list[tuple[float, str]] = []

    def __enter__(self) -> Counted:
        engine, log = self.engine, self.log
        real_getconn = engine.getconn

        class Cursor:
            def __init__(self, cursor):
                self._cursor = cursor

            def execute(self, sql, *args, **kwargs):
                log.append((time.monotonic(), sql))
                return self._cursor.execute(sql, *args, **kwargs)

            def __getattr__(self, name):
                return getattr(self._cursor, name)

        class Connection:
            def __init__(self, conn):
                self._conn = conn

            def cursor(self, *args, **kwargs):
                return Cursor(self._conn.cursor(*args, **kwargs))

            def __getattr__(self, name):
                return getattr(self._conn, name)

        real_putconn = engine.putconn

        def getconn():
            pooled = real_getconn()
            pooled.conn = Connection(pooled.conn)
            return pooled

        def putconn(pooled, *args, **kwargs):
            if isinstance(pooled.conn, Connection):
                pooled.conn = pooled.conn._conn
            return real_putconn(pooled, *args, **kwargs)

        engine.getconn, engine.putconn = getconn, putconn
        return self

    def __exit__(self, *exc_info) -> None:
        del self.engine.getconn, self.engine.putconn

    @property
    def statements(self) -> list[str]:
        return [sql for _, sql in self.log]


def store(backend, task_ids, state=states.SUCCESS) -> None:
    for task_id in task_ids:
        backend.store_result(task_id, {"id": task_id}, state)


# -- get_many ---------------------------------------------------------------------


def test_native_join_is_advertised(db):
    backend = db.backend()
    assert backend.supports_native_join is True
    ids = [new_id() for _ in range(5)]
    store(backend, ids)
    group = GroupResult(new_id(), [AsyncResult(i, backend=backend, app=backend.app) for i in ids],
                        app=backend.app)
    assert group.supports_native_join
    assert group.get(timeout=5) == [{"id": i} for i in ids]


def test_get_many_yields_ready_metas_as_they_come(db):
    """Missing and not-ready ids are not yielded; ready ones are, decoded as
    get_task_meta decodes them (failures as exception instances)."""
    backend = db.backend()
    done, failed, started, missing = new_id(), new_id(), new_id(), new_id()
    backend.store_result(done, {"n": 1}, states.SUCCESS)
    backend.store_result(failed, ValueError("boom"), states.FAILURE, traceback="Traceback: boom")
    backend.store_result(started, {"pid": 1}, states.STARTED)
    got = dict(backend.get_many([done, failed, started, missing], timeout=0.2, interval=0.05,
                                max_iterations=2))
    assert set(got) == {done, failed}
    assert got[done] == backend.get_task_meta(done, cache=False)
    assert got[done]["result"] == {"n": 1} and got[done]["status"] == states.SUCCESS
    assert type(got[failed]["result"]) is ValueError and str(got[failed]["result"]) == "boom"
    assert got[failed] == {**backend.get_task_meta(failed, cache=False), "result": got[failed]["result"]}


def test_get_many_extended_rows(db):
    backend = db.backend(result_extended=True)
    task_id = new_id()

    class Request:
        id = task_id
        task = "tasks.add"
        args = (1, 2)
        kwargs = {"z": 3}
        hostname = "w@host"
        retries = 2
        delivery_info = {"routing_key": "q1"}
        stamps = {}

    backend.store_result(task_id, 3, states.SUCCESS, request=Request())
    ((got_id, meta),) = backend.get_many([task_id])
    assert got_id == task_id
    assert meta == backend.get_task_meta(task_id, cache=False)
    assert (meta["name"], meta["args"], meta["kwargs"], meta["worker"], meta["retries"],
            meta["queue"]) == ("tasks.add", [1, 2], {"z": 3}, "w@host", 2, "q1")


def test_get_many_timeout_on_message_on_interval(db):
    backend = db.backend()
    ready, pending = new_id(), new_id()
    store(backend, [ready])
    messages, rounds = [], []
    got = []
    t0 = time.monotonic()
    with pytest.raises(CeleryTimeoutError, match=r"timed out \(0\.3\)"):
        for item in backend.get_many([ready, pending], timeout=0.3, interval=0.05,
                                     on_message=messages.append,
                                     on_interval=lambda: rounds.append(1)):
            got.append(item)
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 3.0  # the bound asked for, generously
    assert [task_id for task_id, _ in got] == [ready]
    assert messages == [got[0][1]]
    assert len(rounds) >= 3  # one per poll that waited


def test_get_many_timeout_zero_polls_once(db):
    backend = db.backend()
    ready, pending = new_id(), new_id()
    store(backend, [ready])
    with Counted(backend) as counted:
        with pytest.raises(CeleryTimeoutError):
            assert [i for i, _ in backend.get_many([ready, pending], timeout=0)] == [ready]
    assert len(counted.statements) == 1


def test_get_many_max_iterations(db):
    backend = db.backend()
    rounds = []
    with Counted(backend) as counted:
        assert list(backend.get_many([new_id()], interval=0.01, max_iterations=3,
                                     on_interval=lambda: rounds.append(1))) == []
    assert len(rounds) == 3
    assert len(counted.statements) == 3


def test_get_many_cached_results_need_no_query(db):
    backend = db.backend(result_cache_max=100)  # Celery's default, -1, caches nothing
    ids = [new_id() for _ in range(3)]
    store(backend, ids)
    for task_id in ids:
        backend.get_task_meta(task_id)  # a SUCCESS is cached
    messages = []
    with Counted(backend) as counted:
        got = dict(backend.get_many(ids, on_message=messages.append))
    assert set(got) == set(ids)
    assert counted.statements == []
    assert messages == []  # as Celery's key-value backends: cached results are not messages


def test_get_many_caches_what_it_found(db):
    backend = db.backend(result_cache_max=100)
    ids = [new_id() for _ in range(3)]
    store(backend, ids)
    assert len(dict(backend.get_many(ids))) == 3
    with Counted(backend) as counted:
        assert len(dict(backend.get_many(ids))) == 3
    assert counted.statements == []


def test_get_many_duplicates_and_empty(db):
    backend = db.backend()
    a, b = new_id(), new_id()
    store(backend, [a, b])
    with Counted(backend) as counted:
        assert list(backend.get_many([])) == []
        assert list(backend.get_many(set())) == []
    assert counted.statements == []
    got = list(backend.get_many([a, b, a, a, b]))
    assert sorted(task_id for task_id, _ in got) == sorted([a, b])
    caller_ids = {a, b}
    list(backend.get_many(caller_ids))
    assert caller_ids == {a, b}  # the caller's set is left alone


def test_get_many_rejects_ids_that_are_not_strings(db):
    backend = db.backend()
    with pytest.raises(TypeError, match=r"task id 42 .* not a string"):
        list(backend.get_many([new_id(), 42]))


def test_get_many_chunks(db, monkeypatch):
    """Pending ids are fetched in chunks of GET_MANY_CHUNK, one statement each."""
    monkeypatch.setattr(rawbackend.backend, "GET_MANY_CHUNK", 7)
    backend = db.backend()
    ids = [new_id() for _ in range(20)]
    store(backend, ids)
    with Counted(backend) as counted:
        got = dict(backend.get_many(ids))
    assert got.keys() == set(ids)
    assert all(got[i]["result"] == {"id": i} for i in ids)
    assert len(counted.statements) == 3  # 7 + 7 + 6


def test_get_many_huge_group_in_one_chunk(db):
    """1,000 ids (one default chunk) in one statement: within every driver's
    and server's limits."""
    backend = db.backend()
    ids = [new_id() for _ in range(rawbackend.backend.GET_MANY_CHUNK)]
    stored = ids[::100]
    store(backend, stored)
    with Counted(backend) as counted:
        got = dict(backend.get_many(ids, max_iterations=1, interval=0.01))
    assert got.keys() == set(stored)
    assert len(counted.statements) == 1


# -- statements per poll, counted on the server ----------------------------------


class ServerCount:
    """Statements the backend's (one) connection ran, counted by the server."""

    def __init__(self, db, backend):
        self.db, self.backend = db, backend
        self.traced: list[str] = []

    def __enter__(self):
        if self.db.dialect == "sqlite":
            engine = self.backend.session_manager.get_engine(self.backend.url, **self.backend.engine_options)
            pooled = engine.getconn()
            self.conn = pooled.conn
            engine.putconn(pooled)
            self.conn.set_trace_callback(self.traced.append)
        elif self.db.dialect == "mysql":
            self.before = self._com_select()
        else:
            self.admin = raw_connect("postgresql", self.db.url)
            self.log = PostgresLog(self.admin)
            self.begin, self.end = (f"rawtest-{kind}-{uuid.uuid4().hex}" for kind in ("begin", "end"))
            self._mark(self.begin)
        return self

    def _mark(self, text):
        with self.backend.ResultSession() as session:
            session.fetch_one(f"SELECT '{text}' AS mark")

    def _com_select(self) -> tuple[int, int]:
        with self.backend.ResultSession() as session:
            thread = session.fetch_one("SELECT CONNECTION_ID() AS id")["id"]
            row = session.fetch_one("SHOW SESSION STATUS LIKE 'Com_select'")
        return thread, int(row["Value"])

    def count(self) -> int:
        if self.db.dialect == "sqlite":
            self.conn.set_trace_callback(None)
            return len(self.traced)
        if self.db.dialect == "mysql":
            (thread0, before), (thread1, after) = self.before, self._com_select()
            assert thread0 == thread1, "the backend changed connections: the count is not its own"
            return after - before - 1  # less the CONNECTION_ID() of the second look
        self._mark(self.end)
        try:
            text = wait_until(lambda: self.end in self.log.read_new() and self.log.text,
                              "the end mark in the server log")
        finally:
            self.admin.close()
        statements = [m[1] for line in text.splitlines() if (m := PostgresLog.STATEMENT.search(line))]
        marks = [n for n, sql in enumerate(statements) if self.begin in sql or self.end in sql]
        assert len(marks) == 2, statements
        return marks[1] - marks[0] - 1

    def __exit__(self, *exc_info):
        pass


def test_join_of_200_is_one_statement_per_poll(db):
    """A group of 200, half of it done, then the rest: every poll is one
    statement for all pending ids, counted at the driver and on the server."""
    options = {}
    if db.dialect == "postgresql":
        # Only this backend's statements are logged (superuser, per connection).
        options = {"connect_args": {"options": "-c log_statement=all"}}
    # The poll itself (with notifications, test_notify.py, fewer polls).
    backend = db.backend(database_engine_options=options, database_notify=False)
    ids = [new_id() for _ in range(200)]
    store(backend, ids[:100])
    rounds = []
    with ServerCount(db, backend) as server, Counted(backend) as counted:
        first = dict(backend.get_many(ids, interval=0.01, max_iterations=3,
                                      on_interval=lambda: rounds.append(1)))
        store(backend, ids[100:])
        group = GroupResult(new_id(), [AsyncResult(i, backend=backend, app=backend.app) for i in ids],
                            app=backend.app)
        values = group.join_native(timeout=10)
    assert first.keys() == set(ids[:100])
    assert values == [{"id": i} for i in ids]
    polls = len(rounds) + 1
    assert polls == 4  # 3 that waited, then the join: the rest done, the first 100 cached
    selects = [sql for sql in counted.statements if sql.lstrip().upper().startswith("SELECT")]
    # MariaDB's stores run in strict mode: SET STATEMENT sql_mode = ... FOR INSERT.
    stores = [sql for sql in counted.statements
              if sql.lstrip().upper().startswith(("INSERT", "SET STATEMENT SQL_MODE"))]
    assert len(selects) == polls, selects
    assert len(stores) == 100
    server_count = server.count()
    if db.dialect == "mysql":
        assert server_count == polls  # Com_select counts only SELECTs
    else:
        assert server_count == polls + 100, server_count


# -- waiting: adaptive polls -------------------------------------------------------


def _store_later(url_conf, task_id, go, stored, delay):
    """In a forked child: wait for the parent to start waiting, then store."""
    db, conf = url_conf
    backend = db.backend(**conf)
    backend.get_task_meta(new_id())  # connected before the clock starts
    go.wait(30)
    time.sleep(delay)
    backend.store_result(task_id, {"ok": task_id}, states.SUCCESS)
    stored.put(time.monotonic())  # CLOCK_MONOTONIC: the same clock in every process


@pytest.mark.parametrize("delay", [0.02, 0.08, 0.14])
def test_get_returns_promptly_after_another_process_stores(db, delay):
    """AsyncResult.get() returns within a few polls' time of a store made by
    another process, not at the waiter's next 0.5 s poll (Celery's wait_for
    sleeps ``interval`` between polls: 0.35-0.5 s late here)."""
    backend = db.backend()
    backend.get_task_meta(new_id())  # a warm pool, as a waiting client has
    task_id = new_id()
    ctx = multiprocessing.get_context("fork")
    go, stored = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_store_later, args=((db, {}), task_id, go, stored, delay))
    child.start()
    try:
        result = AsyncResult(task_id, backend=backend, app=backend.app)
        go.set()
        assert result.get(timeout=10, interval=INTERVAL) == {"ok": task_id}
        returned = time.monotonic()
        stored_at = stored.get(timeout=10)
    finally:
        child.join(10)
        if child.is_alive():
            child.terminate()
    assert child.exitcode == 0
    assert returned - stored_at < 0.3, f"returned {returned - stored_at:.3f} s after the store"


LONG_WAIT = 2.2  # seconds


def _poll_times(db, waiter: str) -> list[float]:
    backend = db.backend(database_notify=False)  # the poll itself (test_notify.py: woken)
    backend.get_task_meta(new_id())  # warm
    task_id = new_id()
    with Counted(backend) as counted:
        t0 = time.monotonic()
        with pytest.raises(CeleryTimeoutError):
            if waiter == "get":
                result = AsyncResult(task_id, backend=backend, app=backend.app)
                result.get(timeout=LONG_WAIT, interval=INTERVAL)
            else:
                list(backend.get_many([task_id], timeout=LONG_WAIT, interval=INTERVAL))
    return [t - t0 for t, _ in counted.log]


@pytest.mark.parametrize("waiter", ["get", "get_many"])
def test_long_wait_polls_at_most_once_per_interval(db, waiter):
    """A waiter on a PENDING id for ~2 s: quick re-checks at first, then never
    more often than ``interval`` past the first second (100 such waiters cost
    at most 2 queries/s each at the default 0.5 s)."""
    times = _poll_times(db, waiter)
    assert times[-1] >= LONG_WAIT  # the last poll is the timeout's own, at the deadline
    early = [t for t in times if t < 0.1]
    late = [t for t in times[:-1] if t >= 1.0]
    assert len(early) >= 3, times  # re-checked within milliseconds
    assert len(times) <= 25, times  # the back-off is geometric: few polls in all
    gaps = [b - a for a, b in itertools.pairwise(late)]
    assert late and all(gap >= INTERVAL * 0.98 for gap in gaps), times
    assert len([t for t in times if 1.0 <= t < 2.0]) <= 1.0 / INTERVAL, times


def test_wait_for_change_is_the_one_place_that_waits(db):
    """The seam a notification (PostgreSQL LISTEN) plugs into: every wait, of
    get() and of get_many(), goes through ``_wait_for_change(task_ids, pause)``
    (here polling: with notifications, see test_notify.py, fewer waits)."""
    backend = db.backend(database_notify=False)
    calls = []
    real = backend._wait_for_change

    def spy(task_ids, pause, *watch):
        calls.append((set(task_ids), pause))
        return real(task_ids, pause, *watch)

    backend._wait_for_change = spy
    a, b = new_id(), new_id()
    with pytest.raises(CeleryTimeoutError):
        AsyncResult(a, backend=backend, app=backend.app).get(timeout=0.1, interval=INTERVAL)
    get_calls, calls[:] = list(calls), []
    with pytest.raises(CeleryTimeoutError):
        list(backend.get_many([a, b], timeout=0.1, interval=INTERVAL))
    for made in (get_calls, calls):
        pauses = [pause for _, pause in made]
        assert len(pauses) >= 3
        assert pauses[0] <= 0.005  # the first re-check comes after a few ms
        # Growing (the last one may be cut short by the deadline).
        assert pauses[:-1] == sorted(pauses[:-1]) and pauses[1] > pauses[0], pauses
    assert get_calls[0][0] == {a}
    assert calls[0][0] == {a, b}


# -- faults during a join ------------------------------------------------------------


def test_join_rides_out_a_killed_connection(server_db):
    """The server kills the backend's connection between two polls of a join:
    the next poll runs on a new connection and the join completes."""
    backend = server_db.backend()
    ids = [new_id() for _ in range(10)]
    store(backend, ids[:5])
    killed = []

    def between_polls():
        if not killed:
            with backend.ResultSession() as session:
                pid = session.fetch_one(PID_SQL[server_db.dialect])["pid"]
            kill(server_db, pid)
            killed.append(pid)
            store(raw_backend, ids[5:])

    raw_backend = server_db.backend()
    got = dict(backend.get_many(ids, timeout=10, interval=0.01, on_interval=between_polls))
    assert killed and got.keys() == set(ids)
    with backend.ResultSession() as session:
        assert session.fetch_one(PID_SQL[server_db.dialect])["pid"] != killed[0]


def test_join_retries_a_transient_error(db):
    """A poll's query that fails with an error the driver's code calls
    transient (here a lock timeout) is retried, as get_task_meta's is."""
    backend = db.backend(result_backend_base_sleep_between_retries_ms=1)
    ids = [new_id() for _ in range(3)]
    store(backend, ids)
    error = {
        "sqlite": lambda: __import__("sqlite3").OperationalError("database is locked"),
        "postgresql": lambda: __import__("psycopg").errors.LockNotAvailable("lock timeout"),
        "mysql": lambda: __import__("pymysql").err.OperationalError(1205, "Lock wait timeout exceeded"),
    }[db.dialect]()
    assert backend.exception_safe_to_retry(error)
    real, failures = backend._get_many_rows, []

    def flaky(task_ids):
        if not failures:
            failures.append(error)
            raise error
        return real(task_ids)

    backend._get_many_rows = flaky
    assert dict(backend.get_many(ids, timeout=5)).keys() == set(ids)
    assert failures == [error]


def test_a_negative_interval_is_a_clear_error(db):
    backend = db.backend()
    with pytest.raises(ValueError, match=r"interval between polls must be >= 0 seconds, got -1"):
        list(backend.get_many([new_id()], interval=-1))
    with pytest.raises(ValueError, match=r"interval between polls must be >= 0 seconds, got -1"):
        AsyncResult(new_id(), backend=backend, app=backend.app).get(interval=-1)
