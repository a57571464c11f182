"""The retry tables, pinned entry by entry, and classification of real driver exceptions."""
from __future__ import annotations

import sqlite3

import psycopg
import pymysql
import pytest

from rawbackend import errcodes
from rawbackend.dialects import MYSQL, POSTGRESQL, SQLITE
from rawbackend.errcodes import DISCONNECT, READ_ONLY, TRANSIENT
from rawbackend.errors import ConnectFailed, ReadOnlyServer, classify

POSTGRESQL_PINNED = {
    "40001": TRANSIENT, "40P01": TRANSIENT, "57P01": DISCONNECT, "57P02": DISCONNECT,
    "57P03": DISCONNECT, "57P05": DISCONNECT, "25006": READ_ONLY, "53300": TRANSIENT, "55P03": TRANSIENT,
    "57014": TRANSIENT, "26000": TRANSIENT, "42P05": TRANSIENT,
}
MYSQL_PINNED = {
    1205: TRANSIENT, 1213: TRANSIENT, 1040: TRANSIENT, 1053: DISCONNECT, 1927: DISCONNECT,
    4031: DISCONNECT, 2003: DISCONNECT, 2006: DISCONNECT, 2013: DISCONNECT, 2014: DISCONNECT,
    2055: DISCONNECT, 1290: DISCONNECT, 1792: DISCONNECT, 1047: DISCONNECT, 1180: DISCONNECT,
    1264: TRANSIENT,
}


def test_tables_are_pinned():
    assert errcodes.POSTGRESQL_CODES == POSTGRESQL_PINNED
    assert errcodes.POSTGRESQL_CLASSES == {"08": DISCONNECT, "40": TRANSIENT}
    assert errcodes.POSTGRESQL_UNPREPARE == {"26000", "42P05"}
    assert errcodes.MYSQL_CODES == MYSQL_PINNED
    assert errcodes.SQLITE_CODES == {5: TRANSIENT, 6: TRANSIENT}


def test_a_read_only_server_drops_the_connection():
    """25006 (a write that reached a standby): the connection goes, and the
    next one may reach the new primary."""
    assert READ_ONLY.transient and READ_ONLY.disconnect and READ_ONLY.read_only
    assert not DISCONNECT.read_only and not TRANSIENT.read_only
    exc = psycopg.errors.lookup("25006")("cannot execute INSERT in a read-only transaction")
    assert classify(POSTGRESQL.errors, exc) == READ_ONLY
    # rawbackend's own errors carry the verdict of the driver's error they name.
    assert classify(POSTGRESQL.errors, ReadOnlyServer("the server is read-only", READ_ONLY)) == READ_ONLY
    assert classify(POSTGRESQL.errors, ConnectFailed("could not connect", DISCONNECT)) == DISCONNECT


# libpq's own text when no host of a list would do (psycopg 3.3, libpq 18).
LIBPQ_NONE_WRITABLE = (
    'connection failed: connection to server at "127.0.0.1", port 5433 failed: session is '
    "read-only\nMultiple connection attempts failed. All failures were:\n- host: '127.0.0.1', "
    "port: '5432', hostaddr: '127.0.0.1': connection failed: connection to server at "
    '"127.0.0.1", port 5432 failed: Connection refused\n- host: \'127.0.0.1\', port: \'5433\', '
    "hostaddr: '127.0.0.1': connection failed: connection to server at \"127.0.0.1\", port "
    "5433 failed: session is read-only"
)


def test_a_connect_that_no_host_took_is_a_disconnect():
    """libpq's failures of a host list carry no SQLSTATE: the codeless rule
    makes them a disconnect, waited for once the URL has answered."""
    assert classify(POSTGRESQL.errors, psycopg.OperationalError(LIBPQ_NONE_WRITABLE)) == DISCONNECT


def test_a_connect_that_found_only_standbys_says_so():
    hint = POSTGRESQL.connect_hint(psycopg.OperationalError(LIBPQ_NONE_WRITABLE))
    assert hint == (". No host of the URL would do: a host that answered is read-only (a standby, "
                    "or default_transaction_read_only is on) and the URL asks for "
                    "target_session_attrs=read-write")
    primary = POSTGRESQL.connect_hint(psycopg.OperationalError("... failed: server is in hot standby mode"))
    assert "is a standby and the URL asks for target_session_attrs=primary" in primary
    assert POSTGRESQL.connect_hint(psycopg.OperationalError("Connection refused")) == ""
    assert MYSQL.connect_hint(pymysql.err.OperationalError(2003, "session is read-only")) == ""


def pg_error(sqlstate: str | None, cls=psycopg.errors.DatabaseError):
    """A psycopg exception of the class psycopg itself picks for ``sqlstate``."""
    if sqlstate is not None:
        cls = psycopg.errors.lookup(sqlstate)
    return cls("boom")


@pytest.mark.parametrize("code, verdict", sorted(POSTGRESQL_PINNED.items()))
def test_postgresql_exact_codes(code, verdict):
    assert classify(POSTGRESQL.errors, pg_error(code)) == verdict


@pytest.mark.parametrize("code, verdict", [
    ("08006", DISCONNECT),  # connection_failure, by its class
    ("08P01", DISCONNECT),  # protocol_violation
    ("40002", TRANSIENT),  # transaction_integrity_constraint_violation, class 40
    ("23505", None),  # unique_violation: never retried
    ("42601", None),  # syntax_error: never retried
    ("22001", None),  # string_data_right_truncation: bad input, not retried
])
def test_postgresql_classes_and_what_is_never_retried(code, verdict):
    assert classify(POSTGRESQL.errors, pg_error(code)) == verdict


def test_postgresql_errors_without_code():
    # A connection that died under us: psycopg raises these without a SQLSTATE.
    assert classify(POSTGRESQL.errors, psycopg.OperationalError("server closed the connection")) == DISCONNECT
    assert classify(POSTGRESQL.errors, psycopg.InterfaceError("the connection is closed")) == DISCONNECT
    assert classify(POSTGRESQL.errors, psycopg.ProgrammingError("no results")) is None
    assert classify(POSTGRESQL.errors, ValueError("not a driver error")) is None


@pytest.mark.parametrize("code, verdict", sorted(MYSQL_PINNED.items()))
def test_mysql_codes(code, verdict):
    exc = pymysql.err.OperationalError(code, "boom")
    assert classify(MYSQL.errors, exc) == verdict


def test_mysql_never_retried_and_codeless():
    assert classify(MYSQL.errors, pymysql.err.IntegrityError(1062, "Duplicate entry")) is None
    assert classify(MYSQL.errors, pymysql.err.ProgrammingError(1064, "syntax")) is None
    assert classify(MYSQL.errors, pymysql.err.DataError(1406, "Data too long")) is None
    assert classify(MYSQL.errors, pymysql.err.InterfaceError(0, "")) == DISCONNECT
    assert classify(MYSQL.errors, ConnectionResetError()) == DISCONNECT


def sqlite_error(code: int):
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize("code, verdict", [
    (5, TRANSIENT), (261, TRANSIENT), (517, TRANSIENT), (773, TRANSIENT),  # BUSY and its extended codes
    (6, TRANSIENT), (262, TRANSIENT),  # LOCKED, LOCKED_SHAREDCACHE
    (1, None), (19, None), (2067, None),  # ERROR, CONSTRAINT, CONSTRAINT_UNIQUE
])
def test_sqlite_codes(code, verdict):
    assert classify(SQLITE.errors, sqlite_error(code)) == verdict


@pytest.mark.parametrize("strip", [False, True], ids=["with-code", "codeless"])
def test_real_sqlite_busy_is_classified(tmp_path, strip):
    """A real 'database is locked' from sqlite3 is transient: with its
    SQLITE_BUSY code, and stripped of it as Python 3.10 raises it."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked") as info:
        other.execute("INSERT INTO t VALUES (1)")
    error = codeless(info.value) if strip else info.value
    assert classify(SQLITE.errors, error) == TRANSIENT
    holder.execute("ROLLBACK")
    holder.close()
    other.close()


# -- SQLite errors without a code: Python 3.10 attaches none ----------------------

SQLITE_MESSAGES_PINNED = {
    "database is locked": TRANSIENT,
    "database table is locked": TRANSIENT,
    "database schema is locked": TRANSIENT,
}


def codeless(exc: sqlite3.Error) -> sqlite3.Error:
    """``exc`` as Python 3.10 raises it: without sqlite_errorcode/sqlite_errorname."""
    for name in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(exc, name):
            delattr(exc, name)
    assert not hasattr(exc, "sqlite_errorcode")
    return exc


def test_sqlite_message_table_is_pinned():
    assert errcodes.SQLITE_MESSAGES == SQLITE_MESSAGES_PINNED


@pytest.mark.parametrize("message", [
    "database is locked",
    "Database is locked",  # case-insensitive
    "database table is locked",
    "database table is locked: celery_taskmeta",  # vdbe.c names the table
    "database schema is locked: main",  # prepare.c names the schema
])
def test_sqlite_codeless_lock_messages_are_transient(message):
    exc = sqlite3.OperationalError(message)
    assert not hasattr(exc, "sqlite_errorcode")  # built as 3.10 raises it
    assert classify(SQLITE.errors, exc) == TRANSIENT


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("no such table: celery_taskmeta"),
    sqlite3.OperationalError("disk I/O error"),
    sqlite3.OperationalError("the database is locked, maybe"),  # not the documented start
    sqlite3.OperationalError(""),
    sqlite3.OperationalError(),
    sqlite3.IntegrityError("database is locked"),  # not the class SQLite's lock errors come as
    RuntimeError("database is locked"),  # not a driver exception
    psycopg.OperationalError("database is locked"),
], ids=repr)
def test_sqlite_other_codeless_errors_are_not_retried(exc):
    assert classify(SQLITE.errors, exc) is None


def test_sqlite_code_wins_over_message():
    """With a code (Python 3.11+), the message is never looked at."""
    assert classify(SQLITE.errors, sqlite_error(1)) is None  # says "database is locked"


def test_message_rules_must_name_their_class_and_be_lowercase():
    from rawbackend.errors import ErrorRules

    with pytest.raises(ValueError, match="message_class"):
        ErrorRules(driver="sqlite3", code_of=lambda exc: None, codes={},
                   messages={"database is locked": TRANSIENT})
    with pytest.raises(ValueError, match="'Database is locked' must be lowercase"):
        ErrorRules(driver="sqlite3", code_of=lambda exc: None, codes={},
                   message_class="OperationalError", messages={"Database is locked": TRANSIENT})


def test_store_result_retries_a_codeless_database_is_locked(sqlite_db):
    """store_result hits a real 'database is locked' without a code; the
    backend calls it safe to retry, Celery's loop in base.py runs it again
    once the other connection's lock is gone, and the result is stored."""
    import dataclasses

    from celery import states

    path = sqlite_db.url[len("sqlite:///"):]
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    errors: list[str] = []

    class CodelessCursor(sqlite3.Cursor):
        """sqlite3 as on Python 3.10: errors carry no code. The first lock
        error also lets the lock go, so the backend's retry stores the result."""

        def execute(self, *args):
            try:
                return super().execute(*args)
            except sqlite3.OperationalError as exc:
                errors.append(str(codeless(exc)))
                if holder.in_transaction:
                    holder.execute("ROLLBACK")
                raise

    class CodelessConnection(sqlite3.Connection):
        def cursor(self, factory=CodelessCursor):
            return super().cursor(factory)

    app = dataclasses.replace(sqlite_db, url=sqlite_db.url + "?timeout=0").app(
        database_engine_options={"connect_args": {"factory": CodelessConnection}},
        result_backend_base_sleep_between_retries_ms=1,
    )
    backend = app.backend
    try:
        backend.store_result("before", 1, states.SUCCESS)  # tables made, a connection pooled
        holder.execute("BEGIN EXCLUSIVE")
        backend.store_result("while-locked", 42, states.SUCCESS)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()

    assert errors == ["database is locked"]  # one real, codeless failure, then the retry
    assert sqlite_db.query("SELECT task_id, status FROM celery_taskmeta WHERE task_id = 'while-locked'") == [
        ("while-locked", states.SUCCESS)
    ]
    assert backend.get_task_meta("while-locked", cache=False)["result"] == 42
