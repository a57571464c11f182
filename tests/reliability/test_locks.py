"""Lock contention: a bare-driver transaction holds the rows (SQLite: the
write lock) that stores want to write. Stores wait, or time out and are
retried, and succeed once it is released; a wait beyond the budget ends in
Celery's ``BackendStoreError``, never a hang. And ``database_lock_timeout``
reaches every new connection.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from celery import states
from celery.exceptions import BackendStoreError, ImproperlyConfigured

from conftest import raw_connect

IDS = [f"locked-{n}" for n in range(6)]
HOLD = 3.0  # seconds the lock is held while stores wait
TOO_LONG = 60.0  # the holder's own bound: the test fails before it is reached

# How each dialect reports the lock budget of a connection, and in what unit.
SHOW_BUDGET = {
    "postgresql": "SELECT current_setting('lock_timeout') AS budget",
    "mysql": "SELECT @@session.innodb_lock_wait_timeout AS budget",
    "sqlite": "PRAGMA busy_timeout",
}
BUDGET = {  # setting -> what SHOW_BUDGET answers
    "postgresql": {10.0: "10s", 2.5: "2500ms", None: "0"},
    "mysql": {10.0: 10, 2.5: 3, None: 50},
    "sqlite": {10.0: 10000, 2.5: 2500, None: 5000},
}


class Holder(threading.Thread):
    """A bare connection that locks ``IDS`` in a transaction and holds the
    lock until ``release`` is set (or ``TOO_LONG`` passes)."""

    def __init__(self, db):
        super().__init__(daemon=True)
        self.db = db
        self.locked = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        db = self.db
        if db.dialect == "sqlite":
            conn = sqlite3.connect(db.url[len("sqlite:///"):], isolation_level=None)
        else:
            conn = raw_connect(db.dialect, db.url)
        try:
            cursor = conn.cursor()
            if db.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")  # SQLite locks the whole file
            else:
                cursor.execute("BEGIN")
                marks = ", ".join(["%s"] * len(IDS))
                cursor.execute(f"SELECT task_id FROM {db.qualified(db.task_table)} "
                               f"WHERE task_id IN ({marks}) FOR UPDATE", IDS)
                assert len(cursor.fetchall()) == len(IDS)
            self.locked.set()
            self.release.wait(TOO_LONG)
            cursor.execute("ROLLBACK")
        except BaseException as exc:
            self.error = exc
        finally:
            self.locked.set()
            conn.close()

    def __enter__(self):
        self.start()
        assert self.locked.wait(30) and self.error is None, self.error
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.join(30)
        assert not self.is_alive()


def store_all(backend):
    """Store SUCCESS for every id at once, a thread each: (durations, errors)."""
    durations, errors = {}, {}

    def store(task_id):
        began = time.monotonic()
        try:
            backend.store_result(task_id, {"id": task_id}, states.SUCCESS)
        except Exception as exc:
            errors[task_id] = exc
        durations[task_id] = time.monotonic() - began

    threads = [threading.Thread(target=store, args=(i,), daemon=True) for i in IDS]
    for t in threads:
        t.start()
    return threads, durations, errors


def prepared(db, **conf):
    backend = db.backend(**conf)
    for task_id in IDS:
        backend.store_result(task_id, None, states.STARTED)
    return backend


def check_all_stored(db, backend):
    for task_id in IDS:
        meta = backend.get_task_meta(task_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, {"id": task_id})
    mark = "?" if db.dialect == "sqlite" else "%s"
    [(count,)] = db.query(f"SELECT COUNT(*) FROM {db.qualified(db.task_table)} "
                          f"WHERE task_id LIKE {mark}", ("locked-%",))
    assert count == len(IDS)


def test_stores_wait_for_a_held_lock_and_succeed(db, figures):
    """Default budget (10 s) against a 3 s lock: the stores wait it out."""
    backend = prepared(db)
    with Holder(db) as holder:
        threads, durations, errors = store_all(backend)
        time.sleep(HOLD)
        assert not durations, "a store went through the lock"
        holder.release.set()
        for t in threads:
            t.join(30)
    assert errors == {}
    assert all(HOLD - 0.2 <= took <= HOLD + 5 for took in durations.values()), durations
    check_all_stored(db, backend)
    figures(f"{db.dialect}: stores behind a {HOLD:g}s lock waited {max(durations.values()):.2f}s")


def test_lock_timeouts_are_retried_until_the_lock_is_released(db, caplog):
    """A 1 s budget against a 2.5 s lock: the first attempts time out, Celery's
    loop retries them, and they succeed after the release."""
    backend = prepared(db, database_lock_timeout=1)
    with caplog.at_level(logging.WARNING, logger="celery.backends.base"):
        with Holder(db) as holder:
            threads, durations, errors = store_all(backend)
            time.sleep(2.5)
            holder.release.set()
            for t in threads:
                t.join(30)
    assert errors == {}
    retries = [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert len(retries) >= len(IDS), "the lock waits did not time out and get retried"
    check_all_stored(db, backend)


def test_a_lock_held_beyond_the_budget_ends_in_backend_store_error(db, figures, caplog):
    """Budget 1 s, one retry: two timed-out attempts, then BackendStoreError
    (not a hang), while the lock is still held. The row is left as it was."""
    backend = prepared(db, database_lock_timeout=1, result_backend_max_retries=1)
    with caplog.at_level(logging.ERROR, logger="celery.backends.base"), Holder(db):
        began = time.monotonic()
        with pytest.raises(BackendStoreError, match="failed to store result") as raised:
            backend.store_result(IDS[0], "late", states.SUCCESS)
        took = time.monotonic() - began
    assert 1.8 <= took <= 10, took  # two 1 s attempts; generous above
    assert backend.exception_safe_to_retry(raised.value.__context__)
    assert backend.get_task_meta(IDS[0], cache=False)["status"] == states.STARTED
    backend.store_result(IDS[0], "late", states.SUCCESS)  # lock gone: it goes through
    assert backend.get_task_meta(IDS[0], cache=False)["result"] == "late"
    figures(f"{db.dialect}: a lock beyond a 1 s budget raised BackendStoreError after {took:.2f}s")


@pytest.mark.parametrize("setting", [10.0, 2.5, None])
def test_lock_timeout_reaches_every_new_connection(db, setting):
    conf = {} if setting == 10.0 else {"database_lock_timeout": setting}  # 10 s: the default
    backend = db.backend(**conf)
    for _ in range(2):  # a second pool, after the first is dropped
        with backend.ResultSession() as session:
            row = session.fetch_one(SHOW_BUDGET[db.dialect])
        assert list(row.values()) == [BUDGET[db.dialect][setting]]
        backend.session_manager.invalidate(backend.url)


@pytest.mark.parametrize("bad", ["10", -1, float("nan"), float("inf"), True, [1]])
def test_bad_lock_timeout_is_refused_by_name(sqlite_db, bad):
    with pytest.raises(ImproperlyConfigured, match=r"database_lock_timeout must be a number"):
        sqlite_db.backend(database_lock_timeout=bad)


def test_0_means_the_servers_own(sqlite_db):
    backend = sqlite_db.backend(database_lock_timeout=0)
    assert backend.lock_timeout is None
    with backend.ResultSession() as session:
        assert list(session.fetch_one("PRAGMA busy_timeout").values()) == [5000]
