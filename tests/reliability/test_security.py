"""The password never shows: not in logs at any level (``echo`` on), not in
``repr``, ``as_uri()``, exceptions or their tracebacks, through real work,
real disconnects and real connection failures.

(That results are never unpickled unless the app accepts pickle is
tests/test_contract.py's test_pickle_never_read_unless_accepted.)
"""
from __future__ import annotations

import logging
import traceback
import uuid

import pytest
from celery import Celery, states
from celery.result import GroupResult

from conftest import mysql_account, raw_connect

PID_SQL = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL_SQL = {"postgresql": "SELECT pg_terminate_backend(%s)", "mysql": "KILL %s"}


class Everything(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def all_logs():
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def account(server_db):
    """(user, password) on the test's server; MariaDB checks it, PostgreSQL
    here trusts loopback connections (the password still travels in the URL)."""
    if server_db.dialect == "postgresql":
        yield "postgres", "Pw-" + uuid.uuid4().hex
        return
    with mysql_account(server_db) as account:
        yield account


def with_account(db, user: str, password: str) -> str:
    scheme, rest = db.url.split("://", 1)
    location, database = rest.split("@", 1)[1].split("/", 1)
    return f"rawdb+{scheme}://{user}:{password}@{location}/{database}"


def kill_backend_connections(db, backend) -> None:
    with backend.ResultSession() as session:
        pid = next(iter(session.fetch_one(PID_SQL[db.dialect]).values()))
    conn = raw_connect(db.dialect, db.url)
    try:
        conn.cursor().execute(KILL_SQL[db.dialect] % int(pid))
    finally:
        conn.close()


def test_password_never_in_logs_reprs_or_errors(server_db, account, all_logs):
    user, password = account
    app = Celery(f"sec-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(
        result_backend=with_account(server_db, user, password),
        database_engine_options={"echo": True},
        result_extended=True,
        result_expires=60,
        **server_db.conf(),
    )
    server_db.apps.append(app)
    backend = app.backend
    seen: list[str] = []

    # Real work, every operation, with echo on.
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"v": 1}, states.SUCCESS)
    backend.get_task_meta(task_id, cache=False)
    group = GroupResult(str(uuid.uuid4()), [app.AsyncResult(task_id)], app=app)
    backend.save_group(group.id, group)
    backend.restore_group(group.id, cache=False)
    backend.forget(task_id)
    backend.cleanup()
    assert any("rawbackend.echo" in line for line in all_logs.lines), "echo logged nothing"

    # A real disconnect in the middle: retried, logged with its traceback.
    kill_backend_connections(server_db, backend)
    backend.store_result(str(uuid.uuid4()), "after the kill", states.SUCCESS)

    # A real failure that reaches the caller, traceback and chain included.
    failing = Celery(f"sec-{uuid.uuid4().hex[:6]}", set_as_current=False)
    failing.conf.update(result_backend=with_account(server_db, user, "wrong-" + password),
                        **server_db.conf())
    server_db.apps.append(failing)
    try:
        _ = failing.backend  # connects: the wrong password fails here
    except Exception as exc:  # the assertions below look at it
        seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    else:
        if server_db.dialect == "mysql":
            pytest.fail("a wrong password was accepted")

    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    seen += [repr(backend), backend.as_uri(), repr(engine), str(backend.session_manager)]
    seen += all_logs.lines
    assert seen and not [text for text in seen if password in text]
    assert backend.as_uri().count("**") == 1
