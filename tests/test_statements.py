"""One store on a warm pool is ONE statement, with ``pool_pre_ping`` on.

Counted where it happens: in the server's own statement log (PostgreSQL's
``log_statement=all`` for the backend's connections only, read back through
``pg_read_file``; MariaDB's general log in ``mysql.general_log``), in SQLite's
trace callback, and at the driver (every ``execute`` on the connection the
store checks out), on all three dialects.

Why the PostgreSQL server log and not ``pg_stat_statements``: the extension
needs ``shared_preload_libraries`` and a server restart, which a test must not
do; and global counters (``pg_stat_database``) count every other client too.
``log_statement`` can be set per connection by a superuser at connect time
(``options=-c log_statement=all``), so only the backend's statements are
logged, and each log line carries the backend's pid or application name.
"""
from __future__ import annotations

import re
import uuid

import pytest
from celery import states

from conftest import raw_connect, wait_until

WARM_UP_STORES = 8  # past psycopg's prepare_threshold (5): the steady state
# The upsert, or on PostgreSQL with notifications on, the upsert that notifies
# in the same statement (sql/postgresql/notify.sql); on MariaDB, the upsert in
# strict mode (SET STATEMENT ... FOR INSERT: sql/mariadb/results.sql).
STORE = ("INSERT INTO", "WITH stored AS (", "SET STATEMENT sql_mode")




def bare_all(conn, sql: str, params=None) -> list[tuple]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        return list(cur.fetchall()) if cur.description else []
    finally:
        cur.close()


def warm(backend) -> None:
    for n in range(WARM_UP_STORES):
        backend.store_result(f"warm-{n}", n, states.SUCCESS)


def mark(backend, text: str) -> None:
    """Run a statement that names ``text`` on the backend's (only) connection."""
    with backend.ResultSession() as session:
        assert session.fetch_one(f"SELECT '{text}' AS mark") == {"mark": text}


# -- the server's count -------------------------------------------------------------


class PostgresLog:
    """The server's log file, read through SQL (``pg_read_file``, superuser)."""

    STATEMENT = re.compile(r"LOG:\s+(?:statement|execute [^:]*):\s?(.*)")

    def __init__(self, conn):
        self.conn = conn
        current, data_directory, cluster = bare_all(
            conn, "SELECT pg_current_logfile(), current_setting('data_directory'), "
            "current_setting('cluster_name')"
        )[0]
        if current:
            self.path = current if current.startswith("/") else f"{data_directory}/{current}"
        else:
            # No logging collector: Debian's pg_ctlcluster sends stderr here.
            self.path = f"/var/log/postgresql/postgresql-{cluster.replace('/', '-')}.log"
        self.offset = self.size()
        self.text = ""

    def size(self) -> int:
        return bare_all(self.conn, "SELECT size FROM pg_stat_file(%s)", (self.path,))[0][0]

    def read_new(self) -> str:
        size = self.size()
        if size > self.offset:
            self.text += bare_all(
                self.conn, "SELECT pg_read_file(%s, %s, %s)", (self.path, self.offset, size - self.offset)
            )[0][0]
            self.offset = size
        return self.text


def test_postgresql_server_logs_one_statement_per_store(pg_db):
    """PostgreSQL's own statement log shows exactly one statement, the upsert,
    for a store on a warm pool with pool_pre_ping on."""
    name = f"rawtest_{uuid.uuid4().hex[:12]}"
    backend = pg_db.backend(database_engine_options={
        "pool_pre_ping": True,
        "pool_recycle": 3600,
        "connect_args": {"options": "-c log_statement=all", "application_name": name},
    })
    warm(backend)
    with backend.ResultSession() as session:
        pid = session.fetch_one("SELECT pg_backend_pid() AS pid")["pid"]
    admin = raw_connect("postgresql", pg_db.url)
    try:
        prefix = bare_all(admin, "SHOW log_line_prefix")[0][0]
        if "%a" in prefix:
            ours = name
        elif "[%p]" in prefix:
            ours = f"[{pid}]"
        else:
            pytest.fail(f"log_line_prefix {prefix!r} names neither the pid ([%p]) nor the application (%a)")
        log = PostgresLog(admin)
        begin, end = f"rawtest-begin-{uuid.uuid4().hex}", f"rawtest-end-{uuid.uuid4().hex}"
        mark(backend, begin)
        backend.store_result("measured", {"n": 1}, states.SUCCESS)
        mark(backend, end)
        text = wait_until(lambda: end in log.read_new() and log.text, "the end mark in the server log")
    finally:
        admin.close()

    statements = [
        match[1] for line in text.splitlines()
        if ours in line.partition("LOG:")[0] and (match := PostgresLog.STATEMENT.search(line))
    ]
    marks = [n for n, sql in enumerate(statements) if begin in sql or end in sql]
    assert len(marks) == 2, statements
    between = statements[marks[0] + 1 : marks[1]]
    assert len(between) == 1, between
    assert between[0].lstrip().startswith(STORE), between


def test_mysql_general_log_shows_one_statement_per_store(mysql_db):
    """MariaDB's general log holds exactly one command, the upsert, for a store
    on a warm pool with pool_pre_ping on (no ping, no COMMIT, no SET)."""
    backend = mysql_db.backend(database_engine_options={"pool_pre_ping": True, "pool_recycle": 3600})
    warm(backend)
    with backend.ResultSession() as session:
        thread_id = session.fetch_one("SELECT CONNECTION_ID() AS id")["id"]
    admin = raw_connect("mysql", mysql_db.url)
    log_output, general_log = bare_all(admin, "SELECT @@global.log_output, @@global.general_log")[0]
    begin, end = f"rawtest-begin-{uuid.uuid4().hex}", f"rawtest-end-{uuid.uuid4().hex}"
    try:
        bare_all(admin, "SET GLOBAL log_output = 'TABLE'")
        bare_all(admin, "SET GLOBAL general_log = ON")
        mark(backend, begin)
        backend.store_result("measured", {"n": 1}, states.SUCCESS)
        mark(backend, end)

        def logged() -> list[tuple[str, str]] | None:
            rows = [
                (kind, argument.decode("utf-8", "replace") if isinstance(argument, bytes) else argument)
                for kind, argument in bare_all(
                    admin, "SELECT command_type, argument FROM mysql.general_log WHERE thread_id = %s",
                    (thread_id,))
            ]
            return rows if any(end in argument for _, argument in rows) else None

        rows = wait_until(logged, "the end mark in the general log")
    finally:
        bare_all(admin, "SET GLOBAL general_log = %s", (general_log,))
        bare_all(admin, "SET GLOBAL log_output = %s", (log_output,))
        admin.close()

    marks = [n for n, (_, argument) in enumerate(rows) if begin in argument or end in argument]
    assert len(marks) == 2, rows
    between = rows[marks[0] + 1 : marks[1]]
    assert len(between) == 1, between
    kind, argument = between[0]
    assert kind == "Query"
    assert argument.lstrip().startswith(STORE), argument


# -- the client's count -----------------------------------------------------------------


class CountingCursor:
    def __init__(self, cursor, log: list):
        self._cursor = cursor
        self._log = log

    def execute(self, sql, *args, **kwargs):
        self._log.append(sql)
        return self._cursor.execute(sql, *args, **kwargs)

    def executemany(self, sql, *args, **kwargs):
        self._log.append(sql)
        return self._cursor.executemany(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


class CountingConnection:
    """A driver connection whose every ``execute`` (its own or a cursor's) is logged."""

    def __init__(self, conn, log: list):
        self._conn = conn
        self._log = log

    def cursor(self, *args, **kwargs):
        return CountingCursor(self._conn.cursor(*args, **kwargs), self._log)

    def execute(self, sql, *args, **kwargs):
        self._log.append(sql)
        return self._conn.execute(sql, *args, **kwargs)

    def executemany(self, sql, *args, **kwargs):
        self._log.append(sql)
        return self._conn.executemany(sql, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_one_execute_per_warm_store(db):
    """At the driver: a store on a warm pool (Celery's default engine options,
    pool_pre_ping on) checks out a pooled connection, opens none, and calls
    ``execute`` exactly once. On SQLite, the engine's trace sees one statement."""
    backend = db.backend()
    assert backend.engine_options.get("pool_pre_ping") is True  # Celery's default
    warm(backend)
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    executed: list = []
    traced: list = []
    checkouts: list = []
    connects: list = []
    real_getconn, real_putconn, real_connect = engine.getconn, engine.putconn, engine.connect

    def getconn():
        pooled = real_getconn()
        checkouts.append(pooled.fresh)
        raw = pooled.conn
        if hasattr(raw, "set_trace_callback"):  # sqlite3: what the engine runs
            raw.set_trace_callback(traced.append)
        pooled.conn = CountingConnection(raw, executed)
        return pooled

    def putconn(pooled, *args, **kwargs):
        if isinstance(pooled.conn, CountingConnection):
            pooled.conn = pooled.conn._conn
            if hasattr(pooled.conn, "set_trace_callback"):
                pooled.conn.set_trace_callback(None)
        return real_putconn(pooled, *args, **kwargs)

    def connect():
        connects.append(1)
        return real_connect()

    engine.getconn, engine.putconn, engine.connect = getconn, putconn, connect
    try:
        backend.store_result("measured", {"n": 1}, states.SUCCESS)
    finally:
        del engine.getconn, engine.putconn, engine.connect

    assert checkouts == [False]  # one checkout, of a connection already in the pool
    assert connects == []
    assert len(executed) == 1, executed
    assert executed[0].lstrip().startswith(STORE)
    if db.dialect == "sqlite":
        assert len(traced) == 1, traced  # no BEGIN, no COMMIT: autocommit
    meta = backend.get_task_meta("measured", cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, {"n": 1})
