"""cleanup(): expired results in batches while another process stores, and rows
that never finished, aged by watermarks (rawbackend.expiry). Every dialect."""
from __future__ import annotations

import multiprocessing
import pickle
import time
import uuid
from datetime import datetime, timedelta

import pytest
from celery import states
from celery.exceptions import ImproperlyConfigured

from rawbackend.expiry import WATERMARKS_KEPT, age_bounds, utc_now

EXPIRED_ROWS = 100_000
UNFINISHED = (states.STARTED, states.RETRY, states.RECEIVED, states.PENDING)


def tid() -> str:
    return uuid.uuid4().hex


def ph(db) -> str:
    return "?" if db.dialect == "sqlite" else "%s"


def task_ids(db, where: str = "1 = 1") -> set[str]:
    return {r[0] for r in db.query(f"SELECT task_id FROM {db.qualified(db.task_table)} WHERE {where}")}


def watermarks(db) -> list[tuple]:
    return db.query(f"SELECT recorded_at, max_id FROM {db.qualified(db.watermark_table)} "
                    "ORDER BY recorded_at")


def fill_expired(db, backend, prefix: str, count: int = EXPIRED_ROWS) -> None:
    """``count`` SUCCESS rows done in 2000, in one INSERT ... SELECT (a cross
    join of digits: the same SQL on every dialect), ids as each table draws them."""
    digits = " UNION ALL ".join(f"SELECT {d} AS n" for d in range(10))
    places = len(str(count)) - 1
    assert count == 10 ** places
    number = " + ".join(f"d{p}.n * {10 ** p}" for p in range(places))
    joins = ", ".join(f"({digits}) d{p}" for p in range(places))
    if db.dialect == "postgresql":
        id_col, id_val = "id, ", f"nextval('{db.schema}.task_id_sequence'), "
    elif backend.tables.variant == "mariadb":
        id_col, id_val = "id, ", "NEXTVAL(task_id_sequence), "
    else:
        id_col = id_val = ""
    concat = f"CONCAT('{prefix}', {number})" if db.dialect == "mysql" else f"'{prefix}' || ({number})"
    db.query(
        f"INSERT INTO {db.qualified(db.task_table)} ({id_col}task_id, status, result, date_done) "
        f"SELECT {id_val}{concat}, 'SUCCESS', NULL, '2000-01-01 00:00:00' FROM {joins}"
    )


def store_until_stopped(url: str, conf: dict, stop, started, out) -> None:
    """A worker's stores, in a process of its own, until ``stop`` is set:
    the ids stored and the errors raised go to ``out``."""
    from celery import Celery

    app = Celery("storer", set_as_current=False)
    app.conf.update(result_backend=url, **conf)
    backend = app.backend
    stored, errors = [], []
    while not stop.is_set():
        task_id = f"fresh-{uuid.uuid4().hex}"
        try:
            backend.store_result(task_id, {"n": len(stored)}, states.SUCCESS)
            stored.append(task_id)
        except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
            errors.append(f"{type(exc).__name__}: {exc}")
        started.set()
        time.sleep(0.002)  # a worker between tasks: back to back, SQLite's one writer starves the rest
    out.put((stored, errors))


def test_cleanup_while_another_process_stores(db):
    """100,000 expired rows go in batches while a real other process stores:
    no store fails, every expired row is gone, every fresh row stays; unfinished
    rows older than database_unfinished_expires go, younger ones stay."""
    app = db.app(result_expires=timedelta(days=1), database_unfinished_expires=3600)
    backend = app.backend
    old_unfinished = {state: f"old-{state}-{tid()}" for state in UNFINISHED}
    for state, task_id in old_unfinished.items():
        backend.store_result(task_id, None, state)
    # The cleanup of two hours ago recorded the ids written by then.
    backend._cleanup(now=utc_now() - timedelta(hours=2))
    young_unfinished = {f"young-{state}-{tid()}" for state in UNFINISHED}
    for task_id in young_unfinished:
        backend.store_result(task_id, None, task_id.split("-")[1])
    fresh = {f"kept-{tid()}" for _ in range(5)}
    for task_id in fresh:
        backend.mark_as_done(task_id, 1)
    fill_expired(db, backend, "expired-")
    assert len(task_ids(db, "task_id LIKE 'expired-%'")) == EXPIRED_ROWS

    ctx = multiprocessing.get_context("spawn")
    stop, started, out = ctx.Event(), ctx.Event(), ctx.Queue()
    storer = ctx.Process(target=store_until_stopped,
                         args=("rawdb+" + db.url, db.conf(), stop, started, out))
    storer.start()
    try:
        assert started.wait(60), "the storing process never stored"
        backend.cleanup()
    finally:
        stop.set()
        stored, errors = out.get(timeout=60)
        storer.join(30)

    assert errors == []
    assert stored, "no store ran during the cleanup"
    left = task_ids(db)
    assert not {t for t in left if t.startswith("expired-")}
    assert fresh | set(stored) | young_unfinished <= left
    assert not set(old_unfinished.values()) & left


def test_unfinished_rows_never_expire_by_default(db):
    """Off unless asked: Celery's semantics, a STARTED row stays however old."""
    backend = db.backend(result_expires=timedelta(days=1))
    assert backend.unfinished_expires is None
    task_id = tid()
    backend.store_result(task_id, None, states.STARTED)
    backend._cleanup(now=utc_now() - timedelta(days=400))
    backend.cleanup()
    assert task_ids(db) == {task_id}


def test_unfinished_age_counts_from_the_first_write(db):
    """A row is aged by its id, given at its first write: a task that retries
    for longer than the age loses its RETRY row; a finished row never goes."""
    backend = db.backend(result_expires=None, database_unfinished_expires=timedelta(minutes=30))
    retrying, done = tid(), tid()
    backend.store_result(retrying, None, states.STARTED)
    backend.mark_as_done(done, 1)
    backend._cleanup(now=utc_now() - timedelta(hours=1))
    backend.store_result(retrying, None, states.RETRY)  # written again just now
    backend.cleanup()
    assert task_ids(db) == {done}


def test_a_watermark_younger_than_the_age_expires_nothing(db):
    backend = db.backend(database_unfinished_expires=3600)
    task_id = tid()
    backend.store_result(task_id, None, states.STARTED)
    backend._cleanup(now=utc_now() - timedelta(minutes=59))
    report = backend._cleanup()
    assert task_ids(db) == {task_id}
    assert report.unfinished_before is None


def test_watermarks_recorded_and_pruned(db):
    """Each cleanup records one; those older than the one the age needs go,
    and so does one above the table's largest id (ids restarted)."""
    backend = db.backend(database_unfinished_expires=timedelta(hours=1))
    backend.mark_as_done(tid(), 1)
    now = utc_now().replace(microsecond=0)
    for hours in (5, 4, 3, 0.5):
        backend._cleanup(now=now - timedelta(hours=hours))
    assert len(watermarks(db)) == 2  # 3 h (what the age needs at 0.5 h) and 0.5 h
    db.query(f"INSERT INTO {db.qualified(db.watermark_table)} (task_table, recorded_at, max_id) "
             f"VALUES ({ph(db)}, {ph(db)}, 99999999)",
             (db.qualified(db.task_table), str(now - timedelta(minutes=10))))
    backend._cleanup(now=now)
    kept = watermarks(db)
    assert [int(max_id) for _, max_id in kept] == [int(kept[0][1])] * len(kept)
    assert len(kept) == 3  # 3 h (the one in use), 0.5 h, now


def test_watermarks_kept_a_month_when_the_setting_is_off(db):
    backend = db.backend()
    backend.store_result(tid(), 1, states.SUCCESS)
    now = utc_now().replace(microsecond=0)
    for days in (45, 40, 10, 0):
        backend._cleanup(now=now - timedelta(days=days))
    assert len(watermarks(db)) == 3
    assert WATERMARKS_KEPT == timedelta(days=30)


def test_dry_run_counts_and_deletes_nothing(db):
    app = db.app(result_expires=timedelta(days=1), database_unfinished_expires=60)
    backend = app.backend
    backend.store_result("unfinished", None, states.STARTED)
    backend._cleanup(now=utc_now() - timedelta(hours=1))
    fill_expired(db, backend, "expired-", count=1000)
    before = task_ids(db)
    marks = watermarks(db)

    report = backend._cleanup(dry_run=True)

    assert report.rows == {"tasks": 1000, "groups": 0, "chords": 0, "unfinished": 1}
    assert task_ids(db) == before and watermarks(db) == marks


def test_cleanup_adds_the_watermark_table_next_to_existing_tables(db):
    """Tables made before the watermark table existed (Celery's, an older
    rawbackend's) get it at the first cleanup."""
    backend = db.backend(database_unfinished_expires=60)
    backend.store_result("old", None, states.STARTED)
    db.query(f"DROP TABLE {db.qualified(db.watermark_table)}")
    backend.cleanup()
    assert len(watermarks(db)) == 1


@pytest.mark.parametrize("value", [-1, "1h", True, float("inf"), float("nan")])
def test_bad_unfinished_setting_is_named(sqlite_db, value):
    with pytest.raises(ImproperlyConfigured, match="database_unfinished_expires must be a number"):
        sqlite_db.backend(database_unfinished_expires=value)


@pytest.mark.parametrize("value, expected", [
    (None, None), (0, None), (90, timedelta(seconds=90)),
    (timedelta(days=2), timedelta(days=2)), (timedelta(0), None),
])
def test_unfinished_setting_values(sqlite_db, value, expected):
    backend = sqlite_db.backend(database_unfinished_expires=value)
    assert backend.unfinished_expires == expected
    assert pickle.loads(pickle.dumps(backend)).unfinished_expires == expected


def test_age_bounds_from_watermarks():
    now = datetime(2026, 1, 10)
    marks = [(datetime(2026, 1, 1), 10), (datetime(2026, 1, 5), 20), (datetime(2026, 1, 9), 30)]
    assert age_bounds(marks, 15, now) == (timedelta(days=5), timedelta(days=9))
    assert age_bounds(marks, 5, now) == (timedelta(days=9), None)
    assert age_bounds(marks, 31, now) == (None, timedelta(days=1))
    assert age_bounds([], 1, now) == (None, None)


def test_nothing_expiring_writes_nothing(db):
    """result_expires None and no unfinished age: cleanup() does nothing at all."""
    backend = db.backend(result_expires=None)
    backend.store_result(tid(), None, states.STARTED)
    report = backend._cleanup()
    assert report.rows == {} and watermarks(db) == []
