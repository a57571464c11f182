"""A real server restart while a thread stores results in a loop.

rawbackend must ride it out: no store raises, every result is there once (it
waits for the server within ``database_reconnect_timeout``). Celery's own
backend goes through one restart of its own for comparison, reported, not
asserted. The server is always brought back, and answers, before a test ends.
"""
from __future__ import annotations

import threading
import time

import pytest
from celery import states

from conftest import wait_until
from servers import Server

pytestmark = pytest.mark.slow

MAX_STORES = 20_000  # the loop's hard bound
BEFORE = 100  # stores before the restart begins
AFTER = 200  # stores after the server is back, before the loop stops


class StoreLoop(threading.Thread):
    """Stores results one after another, each under its own task id, until told
    to stop (or MAX_STORES); keeps what raised."""

    def __init__(self, backend, prefix: str):
        super().__init__(daemon=True)
        self.backend = backend
        self.prefix = prefix
        self.stop = threading.Event()
        self.attempted = 0
        self.stored: list[str] = []
        self.failed: list[tuple[str, BaseException]] = []
        self.longest = 0.0

    def run(self):
        while not self.stop.is_set() and self.attempted < MAX_STORES:
            task_id = f"{self.prefix}-{self.attempted}"
            began = time.monotonic()
            try:
                self.backend.store_result(task_id, {"n": self.attempted}, states.SUCCESS)
                self.stored.append(task_id)
            except Exception as exc:  # counted: the test decides what it means
                self.failed.append((task_id, exc))
            self.longest = max(self.longest, time.monotonic() - began)
            self.attempted += 1
            time.sleep(0.001)


def across_restart(backend, server: Server, prefix: str) -> StoreLoop:
    """Run a StoreLoop, restart the server in the middle of it, and stop it
    once ``AFTER`` more stores went through the server that came back."""
    loop = StoreLoop(backend, prefix)
    loop.start()
    try:
        wait_until(lambda: loop.attempted >= BEFORE, "the first stores", 60)
        started = server.started()
        server.restart()
        assert server.started() != started, "the server did not restart"
        back = loop.attempted
        wait_until(lambda: loop.attempted >= back + AFTER or not loop.is_alive(),
                   "stores after the restart", 120)
    finally:
        loop.stop.set()
        loop.join(180)
    assert not loop.is_alive(), "the store loop did not stop"
    assert loop.attempted > back  # it went on storing after the restart
    return loop


def stored_ids(db, prefix: str) -> list[str]:
    return [row[0] for row in db.query(
        f"SELECT task_id FROM {db.qualified(db.task_table)} WHERE task_id LIKE %s",
        (f"{prefix}-%",),
    )]


def test_store_loop_rides_out_a_server_restart(restartable):
    """rawbackend through a real restart: no store raises, every result once.
    Then Celery's own backend through another restart, for the report."""
    db, server = restartable
    backend = db.backend()

    ours = across_restart(backend, server, "raw")

    assert ours.failed == [], ours.failed[:3]
    in_db = stored_ids(db, "raw")
    assert len(in_db) == len(set(in_db)) == ours.attempted
    assert set(in_db) == set(ours.stored)
    assert backend.get_task_meta(ours.stored[-1], cache=False)["status"] == states.SUCCESS

    # Celery 5.7.0's DatabaseBackend on the same tables, through one restart.
    celery_backend = db.app(prefix="db+").backend
    celery_backend.store_result("celery-warm", 0, states.SUCCESS)
    theirs = across_restart(celery_backend, server, "celery")
    lost = [task_id for task_id, _ in theirs.failed if task_id not in set(stored_ids(db, "celery"))]
    print(
        f"\n{db.dialect} restart: rawbackend {len(ours.failed)} of {ours.attempted} stores raised "
        f"(longest stall {ours.longest:.2f}s); Celery's DatabaseBackend {len(theirs.failed)} of "
        f"{theirs.attempted} raised ({len(lost)} results never written, longest {theirs.longest:.2f}s)"
    )
