"""Concurrency: racing processes, threads sharing a pool, forks with pooled
connections, and many workers creating the tables at once, on real databases.

Children are made with ``os.fork()`` (as Celery's prefork pool does, after the
backend exists); each always leaves through ``os._exit`` and reports a failure
through its exit code and a file holding its traceback.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import states

import rawbackend.pool
import rawbackend.session

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds: the most any child process or thread may take
FORK = multiprocessing.get_context("fork")

# The server's own id for the connection a statement runs on.
SERVER_CONNECTION_ID = {
    "postgresql": "SELECT pg_backend_pid() AS pid",
    "mysql": "SELECT CONNECTION_ID() AS pid",
}


# -- children ------------------------------------------------------------------


def fork_children(n: int, target: Callable[[int], None], errdir: Path) -> list[int]:
    """Fork ``n`` children running ``target(i)``; exit code 0 means it returned."""
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                target(i)
                code = 0
            except BaseException:
                (errdir / f"child-{i}.err").write_text(traceback.format_exc())
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def wait_children(pids: list[int], errdir: Path, timeout: float = TIMEOUT) -> None:
    """Wait for every child (killing those still running after ``timeout``);
    fail with the tracebacks of those that did not exit with 0."""
    deadline = time.monotonic() + timeout
    codes: dict[int, int] = {}
    pending = set(pids)
    try:
        while pending and time.monotonic() < deadline:
            for pid in list(pending):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
                    pending.discard(pid)
            if pending:
                time.sleep(0.02)
    finally:
        for pid in pending:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    errors = "\n".join(p.read_text() for p in sorted(errdir.glob("child-*.err")))
    assert not pending, f"children {sorted(pending)} still running after {timeout}s\n{errors}"
    assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{errors}"


def _errdir(tmp_path: Path) -> Path:
    errdir = tmp_path / "errors"
    errdir.mkdir()
    return errdir


def _count(db, where: str = "") -> int:
    return db.query(f"SELECT COUNT(*) FROM {db.qualified(db.task_table)} {where}")[0][0]


def _engine(backend):
    return backend.session_manager.get_engine(backend.url, **backend.engine_options)


def _server_pid(backend) -> int:
    with backend.ResultSession() as session:
        return session.fetch_one(SERVER_CONNECTION_ID[backend.dialect.name])["pid"]


# -- racing stores of the same task ids ----------------------------------------


def test_forked_processes_race_on_the_same_task_ids(db, tmp_path):
    """4 forked processes store STARTED, SUCCESS, STARTED for the same ids at
    once, on a backend that had pooled connections at fork time: no child
    raises, one row per id, and SUCCESS wins over every later STARTED."""
    backend = db.backend()
    backend.store_result("before-fork", "warm", states.SUCCESS)
    assert _engine(backend).status()["idle"] >= 1  # a pooled connection crosses the fork
    task_ids = [f"race-{k}" for k in range(40)]
    go = FORK.Event()

    def child(i: int) -> None:
        assert go.wait(TIMEOUT), "never told to start"
        pid = os.getpid()
        for task_id in task_ids:
            backend.store_result(task_id, {"pid": pid}, states.STARTED)
            backend.store_result(task_id, f"done-{task_id}", states.SUCCESS)
            backend.store_result(task_id, {"pid": pid, "again": True}, states.STARTED)

    errdir = _errdir(tmp_path)
    pids = fork_children(4, child, errdir)
    go.set()
    wait_children(pids, errdir)

    rows = db.query(
        f"SELECT task_id, COUNT(*) FROM {db.qualified(db.task_table)} GROUP BY task_id"
    )
    assert dict(rows) == {task_id: 1 for task_id in [*task_ids, "before-fork"]}
    for task_id in task_ids:
        meta = backend.get_task_meta(task_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, f"done-{task_id}")
    assert backend.get_task_meta("before-fork", cache=False)["result"] == "warm"


# -- threads sharing one backend -----------------------------------------------


@pytest.fixture
def connection_guard(monkeypatch):
    """Wraps ``rawbackend.session._execute`` so that a connection used by two
    threads at once fails the statement; returns who used which connection."""
    real_execute = rawbackend.session._execute
    guard = threading.Lock()
    locks: dict[int, threading.Lock] = {}
    keep: dict[int, object] = {}  # keeps each connection alive, so ids stay unique
    users: dict[int, set[int]] = defaultdict(set)
    overlaps: list[str] = []

    def checked_execute(pooled, keep_cursor, sql, params, consume):
        conn = pooled.conn
        with guard:
            lock = locks.setdefault(id(conn), threading.Lock())
            keep[id(conn)] = conn
            users[id(conn)].add(threading.get_ident())
        if not lock.acquire(blocking=False):
            overlaps.append(f"connection {id(conn):#x} used by thread {threading.get_ident()} "
                            "while another thread runs a statement on it")
            raise AssertionError(overlaps[-1])
        try:
            return real_execute(pooled, keep_cursor, sql, params, consume)
        finally:
            lock.release()

    monkeypatch.setattr(rawbackend.session, "_execute", checked_execute)
    return users, overlaps


def test_threads_share_a_backend(db, connection_guard):
    """8 threads store at once on one backend: every result is there, and no
    connection ever runs statements of two threads at the same time."""
    users, overlaps = connection_guard
    threads_n = 8
    per_thread = 150 if db.dialect == "sqlite" else 500  # SQLite serialises every write
    backend = db.backend()
    backend.store_result("warm-up", 0, states.SUCCESS)
    start = threading.Barrier(threads_n)
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            start.wait(TIMEOUT)
            for k in range(per_thread):
                backend.store_result(f"thread-{t}-{k}", {"t": t, "k": k}, states.SUCCESS)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads still storing"
    assert not errors, "\n".join(errors)
    assert not overlaps, overlaps

    assert _count(db, "WHERE task_id LIKE 'thread-%'") == threads_n * per_thread
    meta = backend.get_task_meta(f"thread-{threads_n - 1}-{per_thread - 1}", cache=False)
    assert meta["result"] == {"t": threads_n - 1, "k": per_thread - 1}
    # The threads really did run at once, on several pooled connections.
    assert len(users) > 1
    assert len(set().union(*users.values())) >= threads_n


# -- forking with pooled connections -------------------------------------------


def test_fork_keeps_connections_apart(server_db, tmp_path, monkeypatch, caplog):
    """The parent uses the backend, forks 2 children that store 500 each, and
    stores while they run and after they exit: every row is there, each child
    stored over one connection of its own (a server connection id that is not
    the parent's), and the parent's pooled connection outlives the children
    without reconnecting."""
    db = server_db
    caplog.set_level(logging.INFO, logger="rawbackend")
    connects: list[int] = []  # the process that opened each connection
    real_connect = rawbackend.pool.Pool.connect

    def counting_connect(self):
        connects.append(os.getpid())
        return real_connect(self)

    monkeypatch.setattr(rawbackend.pool.Pool, "connect", counting_connect)

    backend = db.backend()
    for k in range(10):
        backend.store_result(f"parent-before-{k}", k, states.SUCCESS)
    parent_server_pid = _server_pid(backend)
    parent_connects = len(connects)
    assert parent_connects >= 1

    go, resume = FORK.Event(), FORK.Event()
    halfway = FORK.Semaphore(0)
    errdir = _errdir(tmp_path)

    def child(i: int) -> None:
        assert go.wait(TIMEOUT), "never told to start"
        before = _server_pid(backend)
        for k in range(250):
            backend.store_result(f"child-{i}-{k}", k, states.SUCCESS)
        halfway.release()
        assert resume.wait(TIMEOUT), "never told to go on"
        for k in range(250, 500):
            backend.store_result(f"child-{i}-{k}", k, states.SUCCESS)
        report = {
            "before": before,
            "after": _server_pid(backend),
            "connects": sum(1 for pid in connects if pid == os.getpid()),
        }
        (tmp_path / f"child-{i}.json").write_text(json.dumps(report))

    pids = fork_children(2, child, errdir)
    try:
        go.set()
        for _ in pids:
            assert halfway.acquire(timeout=TIMEOUT), "a child never got halfway"
        # Both children are alive, each holding its own connection.
        for k in range(100):
            backend.store_result(f"parent-during-{k}", k, states.SUCCESS)
        during_server_pid = _server_pid(backend)
        resume.set()
        for k in range(100, 200):
            backend.store_result(f"parent-during-{k}", k, states.SUCCESS)
    finally:
        go.set()
        resume.set()
        wait_children(pids, errdir)

    for k in range(100):
        backend.store_result(f"parent-after-{k}", k, states.SUCCESS)
    assert backend.get_task_meta("parent-before-0", cache=False)["result"] == 0

    reports = [json.loads((tmp_path / f"child-{i}.json").read_text()) for i in range(2)]
    child_server_pids = {r["before"] for r in reports}
    for report in reports:
        assert report["before"] == report["after"], report  # no reconnect in the child
        assert report["connects"] == 1, report  # its one connection, opened by itself
    assert len(child_server_pids) == 2
    assert parent_server_pid not in child_server_pids
    # The parent's connection survived the children: same server session, no new connection.
    assert during_server_pid == parent_server_pid
    assert _server_pid(backend) == parent_server_pid
    assert len(connects) == parent_connects
    retried = [r.getMessage() for r in caplog.records if "again on a new connection" in r.getMessage()]
    assert not retried

    assert _count(db, "WHERE task_id LIKE 'child-%'") == 1000
    assert _count(db, "WHERE task_id LIKE 'parent-%'") == 10 + 200 + 100


# -- table creation by many workers at once -------------------------------------


TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ({names})",
    "postgresql": "SELECT table_name FROM information_schema.tables "
                  "WHERE table_schema = '{schema}' AND table_name IN ({names})",
    "mysql": "SELECT table_name FROM information_schema.tables "
             "WHERE table_schema = DATABASE() AND table_name IN ({names})",
}


def test_many_workers_create_the_tables_at_once(db, tmp_path):
    """6 processes build a backend on tables that don't exist yet, at the same
    instant: none fails, and the two tables exist once, with every store."""
    names = f"'{db.task_table}', '{db.group_table}'"
    assert db.query(TABLES_SQL[db.dialect].format(names=names, schema=db.schema)) == []
    ready = FORK.Semaphore(0)
    go = FORK.Event()

    def child(i: int) -> None:
        app = db.app(database_create_tables_at_setup=True)
        ready.release()
        assert go.wait(TIMEOUT), "never told to start"
        backend = app.backend  # creates the tables
        backend.store_result(f"creator-{i}", i, states.SUCCESS)
        backend.save_group(f"group-{i}", app.GroupResult(f"group-{i}", []))

    errdir = _errdir(tmp_path)
    pids = fork_children(6, child, errdir)
    try:
        for _ in pids:
            assert ready.acquire(timeout=TIMEOUT), "a child never got ready"
    finally:
        go.set()  # all at once
        wait_children(pids, errdir)

    tables = db.query(TABLES_SQL[db.dialect].format(names=names, schema=db.schema))
    assert sorted(name for (name,) in tables) == sorted([db.task_table, db.group_table])
    assert _count(db) == 6
    groups = db.query(f"SELECT COUNT(*) FROM {db.qualified(db.group_table)}")[0][0]
    assert groups == 6
    backend = db.backend()
    assert [backend.get_task_meta(f"creator-{i}", cache=False)["result"] for i in range(6)] == [
        0, 1, 2, 3, 4, 5
    ]
