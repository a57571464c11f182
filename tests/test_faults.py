"""Real faults on real servers: killed connections, lock waits, deadlocks,
serialization failures, errors that must not be retried, SQLite's busy lock,
and a result too large for Celery's column.

Every fault here is produced by the server (or SQLite) itself; nothing is
mocked. Helper connections are bare driver connections, never the backend's.
"""
from __future__ import annotations

import dataclasses
import sqlite3
import threading
import uuid

import pytest
from celery import states

from conftest import raw_connect, wait_until
from rawbackend.errors import ValueTooLarge

# How to find, kill and watch a backend's connection, per server.
PID_SQL = {
    "postgresql": "SELECT pg_backend_pid() AS pid",
    "mysql": "SELECT CONNECTION_ID() AS pid",
}
KILL_SQL = {
    "postgresql": "SELECT pg_terminate_backend(%s)",
    "mysql": "KILL %s",
}
ALIVE_SQL = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE id = %s",
}
# Connections whose statement on a table (LIKE pattern) waits for a row lock.
LOCK_WAITERS_SQL = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
    "mysql": (
        "SELECT trx_mysql_thread_id FROM information_schema.innodb_trx "
        "WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE %s"
    ),
}
# Codes of the real errors the servers raise.
DEADLOCK = {"postgresql": "40P01", "mysql": 1213}
LOCK_TIMEOUT = {"postgresql": "55P03", "mysql": 1205}


def code_of(exc: BaseException):
    """The driver's code of ``exc``: SQLSTATE, MySQL error number, or SQLite code."""
    if getattr(exc, "sqlite_errorcode", None):
        return exc.sqlite_errorcode & 0xFF
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]  # PyMySQL: the error number (it has a sqlstate too)
    return getattr(exc, "sqlstate", None)




class Worker(threading.Thread):
    """Runs ``fn`` in a thread and keeps its result or exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test by finish()
            self.error = exc

    def finish(self, timeout: float = 60.0):
        self.join(timeout)
        assert not self.is_alive(), f"worker still running after {timeout:g}s"
        if self.error is not None:
            raise self.error
        return self.result


class Attempts:
    """Counts the calls Celery's retry loop makes to ``backend._store_result``,
    and the exceptions they raised."""

    def __init__(self, backend):
        self.calls = 0
        self.errors: list[BaseException] = []
        inner = backend._store_result

        def counted(*args, **kwargs):
            self.calls += 1
            try:
                return inner(*args, **kwargs)
            except Exception as exc:
                self.errors.append(exc)
                raise

        backend._store_result = counted


def placeholder(db) -> str:
    return "?" if db.dialect == "sqlite" else "%s"


def rows_of(db, task_id: str) -> list[tuple]:
    """The (status, result) rows stored for ``task_id``, read with a bare connection."""
    return db.query(
        f"SELECT status, result FROM {db.qualified(db.task_table)} WHERE task_id = {placeholder(db)}",
        (task_id,),
    )


def assert_stored_once(db, backend, task_id: str, result) -> None:
    rows = rows_of(db, task_id)
    assert len(rows) == 1, rows
    assert rows[0][0] == states.SUCCESS
    meta = backend.get_task_meta(task_id, cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, result)


def backend_pid(backend) -> int:
    """The server's id of the connection the backend's pool hands out next."""
    dialect = backend.dialect.name
    with backend.ResultSession() as session:
        return session.fetch_one(PID_SQL[dialect])["pid"]


def pooled_pids(backend, count: int) -> list[int]:
    """Check ``count`` sessions out at once and back in: that many connections
    sit idle in the pool afterwards. Their server ids."""
    sessions = [backend.ResultSession() for _ in range(count)]
    try:
        return [s.fetch_one(PID_SQL[backend.dialect.name])["pid"] for s in sessions]
    finally:
        for session in sessions:
            session.close()


def bare_one(conn, sql: str, params=None):
    cur = conn.cursor()
    try:
        cur.execute(sql, params) if params is not None else cur.execute(sql)
        return cur.fetchone() if cur.description else None
    finally:
        cur.close()


def kill(db, pid: int) -> None:
    """Kill a connection from the server side, and wait until it is gone."""
    conn = raw_connect(db.dialect, db.url)
    try:
        bare_one(conn, KILL_SQL[db.dialect], (pid,))
        wait_until(lambda: bare_one(conn, ALIVE_SQL[db.dialect], (pid,))[0] == 0,
                   f"connection {pid} to end")
    finally:
        conn.close()


def lock_waiters(db, table: str) -> list[int]:
    conn = raw_connect(db.dialect, db.url)
    try:
        cur = conn.cursor()
        cur.execute(LOCK_WAITERS_SQL[db.dialect], (f"%{table}%",))
        return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


class RowLock:
    """A bare connection holding ``SELECT ... FOR UPDATE`` on one task row."""

    def __init__(self, db, task_id: str):
        self.conn = raw_connect(db.dialect, db.url)
        self.pid = bare_one(self.conn, PID_SQL[db.dialect])[0]
        bare_one(self.conn, "BEGIN")
        row = bare_one(
            self.conn,
            f"SELECT task_id FROM {db.qualified(db.task_table)} WHERE task_id = %s FOR UPDATE",
            (task_id,),
        )
        assert row is not None, "the row to lock must exist"

    def release(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        try:
            bare_one(conn, "ROLLBACK")
        finally:
            conn.close()


def short_lock_timeout_backend(db):
    # A lock timeout short enough for a test (MariaDB: whole seconds, so 1 s).
    return db.backend(
        database_lock_timeout=0.5,
        database_engine_options={"pool_pre_ping": True},
    )


# -- killed connections --------------------------------------------------------


def test_connection_killed_between_two_stores(server_db):
    """The server kills the pooled connection while idle: the next store runs
    again on a new connection and succeeds, the row is there once."""
    db = server_db
    backend = db.backend()
    backend.store_result("before-kill", 1, states.SUCCESS)
    pid = backend_pid(backend)
    kill(db, pid)

    backend.store_result("after-kill", 2, states.SUCCESS)

    assert_stored_once(db, backend, "before-kill", 1)
    assert_stored_once(db, backend, "after-kill", 2)
    assert backend_pid(backend) != pid
    backend.store_result("later", 3, states.SUCCESS)
    assert_stored_once(db, backend, "later", 3)


def test_connection_killed_before_a_read(server_db):
    """A read on a killed pooled connection is run again and returns the row."""
    db = server_db
    backend = db.backend()
    backend.store_result("read-me", {"v": 1}, states.SUCCESS)
    kill(db, backend_pid(backend))

    meta = backend.get_task_meta("read-me", cache=False)

    assert (meta["status"], meta["result"]) == (states.SUCCESS, {"v": 1})
    assert backend.task_result_exists("read-me")


def test_every_pooled_connection_killed(server_db):
    """All idle connections are killed: one failed statement drops them all,
    and the pool refills with working connections."""
    db = server_db
    backend = db.backend()
    killed = pooled_pids(backend, 4)
    assert len(set(killed)) == 4
    for pid in killed:
        kill(db, pid)

    backend.store_result("all-killed", "ok", states.SUCCESS)
    assert_stored_once(db, backend, "all-killed", "ok")

    # The pool is sound again: four connections at once, none of the dead ones.
    again = pooled_pids(backend, 4)
    assert not set(again) & set(killed)
    for n in range(10):
        backend.store_result(f"then-{n}", n, states.SUCCESS)
        assert_stored_once(db, backend, f"then-{n}", n)


def test_connection_killed_while_its_store_waits_on_a_lock(server_db):
    """A store blocked on a row lock has its connection killed mid-statement:
    it runs again on a new connection and the row ends stored exactly once."""
    db = server_db
    backend = db.backend()
    backend.store_result("locked", "pending", states.STARTED)
    pid = backend_pid(backend)  # the one idle connection: the store takes it
    lock = RowLock(db, "locked")
    try:
        worker = Worker(lambda: backend.store_result("locked", {"done": True}, states.SUCCESS))
        worker.start()
        waiting = wait_until(lambda: lock_waiters(db, db.task_table), "the store to wait on the lock")
        assert waiting == [pid]
        kill(db, pid)
    finally:
        lock.release()
    worker.finish()

    assert_stored_once(db, backend, "locked", {"done": True})
    assert backend_pid(backend) != pid


# -- lock waits, deadlocks, serialization failures ------------------------------


def test_lock_wait_timeout_is_retried(server_db):
    """A real lock wait timeout (1205 / 55P03) while another connection holds
    the row: Celery's loop retries, and the result is stored once."""
    db = server_db
    backend = short_lock_timeout_backend(db)
    backend.store_result("slow-lock", "pending", states.STARTED)
    attempts = Attempts(backend)
    lock = RowLock(db, "slow-lock")
    try:
        worker = Worker(lambda: backend.store_result("slow-lock", "done", states.SUCCESS))
        worker.start()
        # Held until the first attempt has timed out, then released.
        wait_until(lambda: attempts.errors, "the first attempt to time out")
    finally:
        lock.release()
    worker.finish()

    assert code_of(attempts.errors[0]) == LOCK_TIMEOUT[db.dialect]
    assert backend.exception_safe_to_retry(attempts.errors[0])
    assert attempts.calls == len(attempts.errors) + 1
    assert_stored_once(db, backend, "slow-lock", "done")


def make_deadlock(db) -> BaseException:
    """Two bare transactions locking two rows in opposite orders: the server's
    own deadlock error, from whichever it chose as the victim."""
    table = db.qualified(f"dl_{db.task_table}")
    setup = raw_connect(db.dialect, db.url)
    first = raw_connect(db.dialect, db.url)
    second = raw_connect(db.dialect, db.url)
    try:
        bare_one(setup, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v INTEGER)")
        bare_one(setup, f"INSERT INTO {table} (id, v) VALUES (1, 0), (2, 0)")
        bare_one(first, "BEGIN")
        bare_one(first, f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        bare_one(second, "BEGIN")
        bare_one(second, f"UPDATE {table} SET v = v + 1 WHERE id = 2")
        crossing = Worker(lambda: bare_one(first, f"UPDATE {table} SET v = v + 1 WHERE id = 2"))
        crossing.start()
        wait_until(lambda: lock_waiters(db, f"dl_{db.task_table}"), "the first transaction to wait")
        errors = []
        try:
            bare_one(second, f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        except Exception as exc:
            errors.append(exc)
            bare_one(second, "ROLLBACK")
        try:
            crossing.finish()
        except Exception as exc:
            errors.append(exc)
        assert len(errors) == 1, errors
        return errors[0]
    finally:
        for conn in (first, second):
            try:
                bare_one(conn, "ROLLBACK")
            finally:
                conn.close()
        try:
            bare_one(setup, f"DROP TABLE IF EXISTS {table}")
        finally:
            setup.close()


def test_real_deadlock_is_transient_and_keeps_the_pool(server_db):
    """A deadlock raised by the server is retryable, and the retry hook keeps
    the pooled connection (it is healthy); a disconnect, by contrast, drops it."""
    db = server_db
    backend = db.backend()
    backend.store_result("warm", 1, states.SUCCESS)
    pid = backend_pid(backend)

    deadlock = make_deadlock(db)

    assert code_of(deadlock) == DEADLOCK[db.dialect]
    assert backend.exception_safe_to_retry(deadlock)
    backend.on_backend_retryable_error(deadlock)
    assert backend_pid(backend) == pid

    # A real disconnect error, from a bare connection the server killed.
    victim = raw_connect(db.dialect, db.url)
    try:
        kill(db, bare_one(victim, PID_SQL[db.dialect])[0])
        with pytest.raises(Exception) as disconnect:
            bare_one(victim, "SELECT 1")
    finally:
        victim.close()
    assert backend.exception_safe_to_retry(disconnect.value)
    backend.on_backend_retryable_error(disconnect.value)
    assert backend_pid(backend) != pid


# A trigger that makes the backend's upsert lock a second row first.
LOCKING_TRIGGER = {
    "postgresql": [
        "CREATE TABLE {other} (id INTEGER PRIMARY KEY)",
        "INSERT INTO {other} (id) VALUES (1)",
        "CREATE FUNCTION {schema}.lock_other() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN PERFORM 1 FROM {other} WHERE id = 1 FOR UPDATE; RETURN NEW; END $$",
        "CREATE TRIGGER lock_other BEFORE INSERT OR UPDATE ON {task} "
        "FOR EACH ROW EXECUTE FUNCTION {schema}.lock_other()",
    ],
    "mysql": [
        "CREATE TABLE {other} (id INTEGER PRIMARY KEY) ENGINE=InnoDB",
        "INSERT INTO {other} (id) VALUES (1)",
        "CREATE TRIGGER lock_other_{task} BEFORE INSERT ON {task} "
        "FOR EACH ROW SELECT id INTO @rawtest_locked FROM {other} WHERE id = 1 FOR UPDATE",
    ],
}


def test_store_in_a_real_deadlock_is_stored_once(server_db):
    """The backend's upsert (made to lock a second row by a trigger) deadlocks
    with a bare transaction. Whichever the server picks as the victim, the
    result ends stored exactly once."""
    db = server_db
    backend = db.backend()
    backend.store_result("deadlocked", "pending", states.STARTED)
    other = db.qualified(f"lk_{db.task_table}")
    names = {"other": other, "task": db.qualified(db.task_table), "schema": db.schema}
    try:
        for sql in LOCKING_TRIGGER[db.dialect]:
            db.query(sql.format(**names))
        attempts = Attempts(backend)
        lock = RowLock(db, "deadlocked")
        try:
            worker = Worker(lambda: backend.store_result("deadlocked", "done", states.SUCCESS))
            worker.start()
            # The store holds the other row (trigger) and waits for the task row.
            wait_until(lambda: lock_waiters(db, db.task_table), "the store to wait on the lock")
            try:
                bare_one(lock.conn, f"SELECT id FROM {other} WHERE id = 1 FOR UPDATE")
                victim = "backend"
            except Exception as exc:
                assert code_of(exc) == DEADLOCK[db.dialect], exc
                victim = "bare transaction"
        finally:
            lock.release()
        worker.finish()
    finally:
        if db.dialect == "mysql":
            db.query(f"DROP TABLE IF EXISTS {other}")

    print(f"\n{db.dialect}: the server chose the {victim} as the deadlock victim")
    if victim == "backend":
        assert [code_of(e) for e in attempts.errors] == [DEADLOCK[db.dialect]]
        assert attempts.calls == 2
    else:
        assert attempts.errors == [] and attempts.calls == 1
    assert_stored_once(db, backend, "deadlocked", "done")


def test_serialization_failure_is_transient(pg_db):
    """A real serialization failure (40001, REPEATABLE READ) is retryable and
    keeps the pool. (MySQL reports its conflicts as deadlocks, 1213, above.)"""
    db = pg_db
    backend = db.backend()
    backend.store_result("warm", 1, states.SUCCESS)
    pid = backend_pid(backend)
    table = db.qualified("serial")
    db.query(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v INTEGER)")
    db.query(f"INSERT INTO {table} VALUES (1, 0)")
    reader = raw_connect(db.dialect, db.url)
    try:
        bare_one(reader, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        bare_one(reader, f"SELECT v FROM {table} WHERE id = 1")
        db.query(f"UPDATE {table} SET v = 1 WHERE id = 1")
        with pytest.raises(Exception, match="could not serialize") as caught:
            bare_one(reader, f"UPDATE {table} SET v = 2 WHERE id = 1")
        bare_one(reader, "ROLLBACK")
    finally:
        reader.close()

    assert code_of(caught.value) == "40001"
    assert backend.exception_safe_to_retry(caught.value)
    backend.on_backend_retryable_error(caught.value)
    assert backend_pid(backend) == pid


# -- errors that must not be retried ----------------------------------------------

# Make the task table refuse a NULL traceback, so a plain SUCCESS store hits a
# real integrity error.
REFUSE_NULL_TRACEBACK = {
    "postgresql": "ALTER TABLE {task} ALTER COLUMN traceback SET NOT NULL",
    "mysql": "ALTER TABLE {task} MODIFY traceback LONGTEXT NOT NULL",
    "sqlite": (
        "CREATE TRIGGER refuse_null BEFORE INSERT ON {task} WHEN NEW.traceback IS NULL "
        "BEGIN SELECT RAISE(ABORT, 'traceback may not be NULL'); END"
    ),
}
INTEGRITY_MESSAGE = {
    "postgresql": 'null value in column "traceback"',
    "mysql": "Column 'traceback' cannot be null",
    "sqlite": "traceback may not be NULL",
}


def driver_error(dialect: str, name: str) -> type:
    import importlib

    module = {"postgresql": "psycopg", "mysql": "pymysql", "sqlite": "sqlite3"}[dialect]
    return getattr(importlib.import_module(module), name)


def test_integrity_error_is_not_retried(db):
    """A store that hits an IntegrityError raises at once: one attempt, not retryable."""
    backend = db.backend()
    with backend.ResultSession():
        pass  # the tables exist now
    db.query(REFUSE_NULL_TRACEBACK[db.dialect].format(task=db.qualified(db.task_table)))
    attempts = Attempts(backend)

    with pytest.raises(driver_error(db.dialect, "IntegrityError"), match=INTEGRITY_MESSAGE[db.dialect]):
        backend.store_result("refused", 1, states.SUCCESS)

    assert attempts.calls == 1
    assert not backend.exception_safe_to_retry(attempts.errors[0])
    assert rows_of(db, "refused") == []
    backend.store_result("accepted", 2, states.SUCCESS, traceback="none")
    assert_stored_once(db, backend, "accepted", 2)


def test_syntax_error_is_not_retried(db):
    """A store whose SQL the server rejects as a syntax error raises at once."""
    backend = db.backend()
    backend.store_result("fine", 1, states.SUCCESS)
    with backend.ResultSession() as session:
        with pytest.raises(driver_error(db.dialect, "Error"), match="syntax") as plain:
            session.execute("SELEC 1")
    assert not backend.exception_safe_to_retry(plain.value)
    # Break the store's own statement (its SQL, as loaded from sql/).
    good_sql = backend.tables.sql
    backend.tables.sql = {
        name: sql.replace("INSERT", "INSERTT", 1) if name.startswith("store_result") else sql
        for name, sql in good_sql.items()
    }
    attempts = Attempts(backend)

    with pytest.raises(driver_error(db.dialect, "Error"), match="syntax"):
        backend.store_result("broken", 1, states.SUCCESS)

    assert attempts.calls == 1
    assert not backend.exception_safe_to_retry(attempts.errors[0])
    assert rows_of(db, "broken") == []
    backend.tables.sql = good_sql
    backend.store_result("mended", 2, states.SUCCESS)
    assert_stored_once(db, backend, "mended", 2)


# -- SQLite's lock --------------------------------------------------------------------


def test_sqlite_database_is_locked_is_retried(sqlite_db):
    """Another connection holds the SQLite write lock (BEGIN IMMEDIATE): the
    store gets a real SQLITE_BUSY, Celery's loop retries, and it is stored."""
    path = sqlite_db.url[len("sqlite:///"):]
    impatient = dataclasses.replace(sqlite_db, url=f"{sqlite_db.url}?timeout=0.05")
    backend = impatient.backend(
        result_backend_base_sleep_between_retries_ms=20,
        result_backend_max_sleep_between_retries_ms=200,
        result_backend_max_retries=100,
    )
    backend.store_result("warm", 1, states.SUCCESS)
    attempts = Attempts(backend)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")

        def release_after_first_busy():
            wait_until(lambda: attempts.errors, "the first SQLITE_BUSY")
            holder.execute("ROLLBACK")

        releaser = Worker(release_after_first_busy)
        releaser.start()
        backend.store_result("busy", "stored", states.SUCCESS)
        releaser.finish()
    finally:
        holder.close()

    assert code_of(attempts.errors[0]) == 5  # SQLITE_BUSY
    assert "database is locked" in str(attempts.errors[0])
    assert attempts.calls == len(attempts.errors) + 1
    assert_stored_once(sqlite_db, backend, "busy", "stored")


# -- bad input ----------------------------------------------------------------------------


def test_result_too_large_for_celerys_blob(mysql_db):
    """Celery's MySQL table has a 64 KB BLOB: a larger result is refused at
    once, before anything is sent (the server's strict mode or not), writes
    nothing, and the backend goes on (tests/test_large_values.py has more)."""
    db = mysql_db
    celery_backend = db.app(prefix="db+").backend
    celery_backend.store_result("made-by-celery", 1, states.SUCCESS)
    column_type = db.query(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = 'result'",
        (db.task_table,),
    )
    assert column_type == [("blob",)]
    backend = db.backend()
    attempts = Attempts(backend)
    big = "x" * 70_000
    task_id = f"big-{uuid.uuid4().hex[:6]}"

    with pytest.raises(ValueTooLarge, match=r"result is 70002 bytes, more than column .*\(65535 bytes\)"):
        backend.store_result(task_id, big, states.SUCCESS)

    assert attempts.calls == 1
    assert rows_of(db, task_id) == []
    backend.store_result("small", "fits", states.SUCCESS)
    assert_stored_once(db, backend, "small", "fits")
    assert celery_backend.get_task_meta("small", cache=False)["result"] == "fits"
