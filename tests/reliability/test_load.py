"""Load: 4 forked processes x 2 threads storing results, 2 processes reading
them back, on each dialect; every result present exactly once with the right
state and value. SQLite: 4 processes on one file, WAL and rollback journal.

Throughput is in the end-of-run "rawbackend figures" section.
"""
from __future__ import annotations

import sqlite3

import pytest

from harness import Load, check_no_harm, check_stored_exactly_once

pytestmark = pytest.mark.slow

DEFAULT_STORES = 2_000
HEAVY_STORES = 20_000
WRITERS, THREADS = 4, 2


def run_load(db, tmp_path, figures, stores: int, label: str, **conf):
    load = Load(db, tmp_path / "load", "load", stores // (WRITERS * THREADS),
                writers=WRITERS, threads=THREADS, **conf).start()
    outcome = load.finish()
    check_no_harm(outcome)
    check_stored_exactly_once(db, "load", outcome)
    assert outcome.stores == stores
    assert outcome.reads > 0, "the readers read nothing"
    figures(
        f"{label}: {outcome.stores} stores by {WRITERS}x{THREADS} in {outcome.wall:.1f}s = "
        f"{outcome.throughput:.0f} stores/s, slowest store {outcome.longest * 1000:.0f} ms; "
        f"{outcome.reads} reads, slowest {outcome.longest_read * 1000:.0f} ms; "
        f"retries: {outcome.celery_retries} by Celery's loop, {outcome.statement_reruns} by rawbackend"
    )
    return outcome


def test_load(db, tmp_path, figures):
    run_load(db, tmp_path, figures, DEFAULT_STORES, f"{db.dialect} load")


@pytest.mark.heavy
def test_heavy_load(db, tmp_path, figures):
    run_load(db, tmp_path, figures, HEAVY_STORES, f"{db.dialect} heavy load")


def sqlite_file(sqlite_db, journal_mode: str):
    path = sqlite_db.url[len("sqlite:///"):]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mode = conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0]
    finally:
        conn.close()
    assert mode == journal_mode  # WAL stays set in the file; delete is the default
    return sqlite_db


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_processes_share_one_file(sqlite_db, tmp_path, figures, journal_mode):
    """4 processes write one file at once, with a busy timeout so short that
    SQLITE_BUSY reaches Celery's loop and is retried there: nothing lost."""
    db = sqlite_file(sqlite_db, journal_mode)
    db.backend().store_result("warm", 0, "SUCCESS")  # the tables, before the fork
    outcome = run_load(
        db, tmp_path, figures, 1_200, f"sqlite {journal_mode}, 4 processes, lock budget 5 ms",
        database_lock_timeout=0.005, result_backend_max_retries=100,
        result_backend_max_sleep_between_retries_ms=50,
    )
    assert outcome.celery_retries > 0, "no SQLITE_BUSY ever reached Celery's loop"
