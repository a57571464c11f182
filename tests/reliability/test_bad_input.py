"""Bad input, each with a clear error that names the problem, nothing
half-written, and the backend working afterwards.

The inputs tests/test_contract.py already covers (ids too long, empty, bytes
or with lone surrogates, unencodable results, invalid table and schema names,
malformed URLs) are not repeated here; this is the rest of the campaign's list:
tracebacks that are not valid UTF-8, identifiers built to inject SQL, unknown
driver suffixes, and every way of pointing at the wrong server.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid

import pytest
from celery import Celery, states
from celery.exceptions import ImproperlyConfigured

from conftest import mysql_account
from rawbackend.errors import ConnectFailed

CONNECT_TIMEOUT = 2  # seconds, given in the URLs below
SLACK = 3.0  # what a loaded 2-core machine adds to a failed connect


def tid() -> str:
    return str(uuid.uuid4())


def app_on(url: str, **conf) -> Celery:
    app = Celery(f"bad-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend=url, result_serializer="json", accept_content=["json"], **conf)
    return app


def build(url: str, **conf):
    """Build the backend as a worker does (tables created at set-up), timed."""
    began = time.monotonic()
    try:
        backend = app_on(url, **conf).backend
    except Exception as exc:  # the test looks at what it was
        return exc, time.monotonic() - began
    backend.session_manager.invalidate(backend.url)
    return None, time.monotonic() - began


# -- values --------------------------------------------------------------------


def test_traceback_not_valid_utf8_is_stored_escaped(db):
    """A traceback holding undecodable bytes (surrogate-escaped, as
    ``os.fsdecode`` and ``errors='surrogateescape'`` make them): the FAILURE is
    stored, the bytes shown escaped, nothing else changed."""
    backend = db.backend()
    task_id = tid()
    traceback = "Traceback (most recent call last):\n  File \"/data/caf\udce9.py\"\nValueError: x"
    backend.mark_as_failure(task_id, ValueError("bad file"), traceback=traceback)
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.FAILURE
    assert isinstance(meta["result"], ValueError) and str(meta["result"]) == "bad file"
    assert meta["traceback"] == traceback.replace("\udce9", "\\udce9")
    backend.mark_as_done(tid(), "still working")


@pytest.mark.parametrize("name", [
    'tasks"; DROP TABLE celery_taskmeta; --',
    "tasks`; DROP TABLE celery_taskmeta; --",
    "my tasks",
    "tasks'",
    "",
])
@pytest.mark.parametrize("where", ["database_table_names", "database_table_schemas"])
def test_identifiers_that_would_inject_sql(db, where, name):
    """Quotes, semicolons and spaces in table or schema names are refused
    before any SQL is built, naming the value; nothing is created."""
    with pytest.raises(ImproperlyConfigured, match="not a valid identifier") as caught:
        db.backend(**{where: {"task": name}})
    assert repr(name) in str(caught.value) or not name
    assert db.backend().get_task_meta(tid(), cache=False)["status"] == states.PENDING


@pytest.mark.parametrize("url, problem", [
    ("rawdb+postgresql+asyncpg://u@h/db", r"unknown scheme 'postgresql\+asyncpg'"),
    ("rawdb+mysql+mysqlconnector://u@h/db", r"unknown scheme 'mysql\+mysqlconnector'"),
    ("rawdb+sqlite+aiosqlite:///x.db", r"unknown scheme 'sqlite\+aiosqlite'"),
], ids=["asyncpg", "mysqlconnector", "aiosqlite"])
def test_unknown_driver_suffix(url, problem):
    """A driver suffix rawbackend doesn't map: ImproperlyConfigured naming it
    and the accepted forms (the drivers it does map are listed there)."""
    with pytest.raises(ImproperlyConfigured, match=problem) as caught:
        _ = app_on(url).backend  # the backend is made, and the URL parsed, on first use
    assert "postgresql+psycopg" in str(caught.value) and "mysql+pymysql" in str(caught.value)


# -- the wrong server ----------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never says a word: a
    wrong host that swallows packets, as seen from the client."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # the timeout, or closed at the end
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


SERVER_URLS = {
    "postgresql": "rawdb+postgresql://postgres@127.0.0.1:{port}/test?connect_timeout={timeout}",
    "mysql": "rawdb+mysql://root@127.0.0.1:{port}/test?connect_timeout={timeout}",
}


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_nothing_listening_fails_at_once_naming_host_and_port(dialect):
    """A wrong port: building the backend fails at once (no reconnect wait,
    the server never answered), and the error names host and port."""
    port = closed_port()
    exc, took = build(SERVER_URLS[dialect].format(port=port, timeout=CONNECT_TIMEOUT))
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert f"127.0.0.1:{port}" in str(exc) and dialect in str(exc)
    assert took < CONNECT_TIMEOUT + SLACK


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_silent_host_fails_within_the_connect_timeout(dialect, silent_port):
    """A host that accepts and never answers: building the backend fails
    within the connect timeout (PyMySQL alone would wait for the server's
    greeting forever), naming host and port."""
    exc, took = build(SERVER_URLS[dialect].format(port=silent_port, timeout=CONNECT_TIMEOUT))
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert f"127.0.0.1:{silent_port}" in str(exc)
    assert CONNECT_TIMEOUT * 0.9 <= took < CONNECT_TIMEOUT + SLACK


def test_mysql_read_timeout_still_applies_after_the_handshake(mysql_db):
    """The handshake borrows connect_timeout; the connection then reads with
    the read_timeout of the URL (none: waits as long as a query takes)."""
    backend = app_on(f"rawdb+{mysql_db.url}?read_timeout=1&connect_timeout=5",
                     database_table_names={"task": mysql_db.task_table,
                                           "group": mysql_db.group_table}).backend
    try:
        with backend.ResultSession() as session:
            conn = session.connection()
            assert conn._read_timeout == 1
            with pytest.raises(Exception, match="timed out"):
                session.fetch_one("SELECT SLEEP(3)")
    finally:
        backend.session_manager.invalidate(backend.url)
    untimed = app_on(f"rawdb+{mysql_db.url}?connect_timeout=1",
                     database_table_names={"task": mysql_db.task_table,
                                           "group": mysql_db.group_table}).backend
    try:
        with untimed.ResultSession() as session:
            assert session.fetch_one("SELECT SLEEP(1.5) AS s")["s"] == 0
    finally:
        untimed.session_manager.invalidate(untimed.url)


def test_postgresql_database_that_does_not_exist(pg_db):
    exc, took = build("rawdb+postgresql://postgres@127.0.0.1:5432/no_such_db_rawbackend")
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert "'no_such_db_rawbackend'" in str(exc) and 'does not exist' in str(exc)
    assert took < SLACK


def test_mysql_database_that_does_not_exist(mysql_db):
    exc, took = build("rawdb+mysql://root@127.0.0.1:3306/no_such_db_rawbackend")
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert "Unknown database 'no_such_db_rawbackend'" in str(exc)
    assert took < SLACK


@pytest.fixture
def mysql_user(mysql_db):
    with mysql_account(mysql_db) as account:
        yield account


def test_mysql_wrong_password(mysql_user):
    """A wrong password: refused at once, not retried, the error names the
    server and the user and shows neither password."""
    user, password = mysql_user
    exc, took = build(f"rawdb+mysql://{user}:wrong-{password}@127.0.0.1:3306/test")
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert "Access denied" in str(exc) and f"user {user!r}" in str(exc)
    assert "127.0.0.1:3306" in str(exc)
    assert password not in str(exc) and "wrong-" not in str(exc)
    assert took < SLACK


def test_tls_options_reach_the_driver(server_db):
    """sslmode (libpq) and ssl_ca (PyMySQL) in the URL reach the driver: this
    machine's servers have TLS off, so requiring it fails, naming why, at once."""
    cafile = ssl.get_default_verify_paths().openssl_cafile
    url = {
        "postgresql": "rawdb+postgresql://postgres@127.0.0.1:5432/test?sslmode=require",
        "mysql": f"rawdb+mysql://root@127.0.0.1:3306/test?ssl_ca={cafile}",
    }[server_db.dialect]
    exc, took = build(url)
    assert isinstance(exc, ConnectFailed), repr(exc)
    assert {
        "postgresql": "server does not support SSL, but SSL was required",
        "mysql": "SSL is required but the server doesn't support it",
    }[server_db.dialect] in str(exc)
    assert took < SLACK
