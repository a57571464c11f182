"""A PostgreSQL primary with a synchronous standby (pgcluster.py), reached
through a URL that names both nodes, as users of libpq's multi-host URLs
write it: ``postgresql://h1:5432,h2:5432/db?target_session_attrs=read-write``.

On it: a result stored through one node is read through the other; racing
stores, tables created at once, groups and chords; the load of the reliability
campaign while the primary fails over (0 raised, 0 lost with default settings,
every store's stall bounded by the outage + 1 s); a URL that leads only to a
standby raises a clear read-only error at once and loses nothing silently.

The pair is the module's; a test that fails it over makes a new standby after.
"""
from __future__ import annotations

import os
import time
import uuid
from urllib.parse import quote

import pytest
from celery import states

import test_chords
import test_concurrency
from conftest import REQUIRE_SERVERS, Database, _drop, wait_until
from pgcluster import PG_BIN, PrimaryAndStandby
from reliability.harness import Load, Pinger, check_no_harm, check_stored_exactly_once, lost

pytestmark = [pytest.mark.cluster, pytest.mark.postgresql, pytest.mark.slow]

PER_THREAD = 2_500  # the hard bound of each writer thread
BEFORE = 400  # stores before the failover
AFTER = 400  # stores once the new primary takes writes, before the writers stop
STALL_MARGIN = 1.0  # seconds a store may stall beyond the outage
REMOTE_APPLY = "?options=" + quote("-c synchronous_commit=remote_apply")


@pytest.fixture(scope="module")
def pg_cluster():
    if not os.access(PG_BIN / "initdb", os.X_OK):
        problem = f"no PostgreSQL server binaries in {PG_BIN} (RAWBACKEND_PG_BIN)"
        if REQUIRE_SERVERS:
            pytest.fail(f"{problem} (RAWBACKEND_REQUIRE_SERVERS=1)")
        pytest.skip(problem)
    cluster = PrimaryAndStandby()
    try:
        yield cluster
    finally:
        cluster.close()


def cluster_database(url: str) -> Database:
    """Tables in a schema of their own, through ``url``; dropped by ``_drop``."""
    suffix = uuid.uuid4().hex[:10]
    db = Database("postgresql", url, f"t_{suffix}", f"g_{suffix}", schema=f"s_{suffix}",
                  chord_table=f"c_{suffix}")
    db.query(f'CREATE SCHEMA "{db.schema}"')
    return db


@pytest.fixture
def ha_db(pg_cluster):
    """A database on the pair, through the URL that names both nodes."""
    db = cluster_database(pg_cluster.url())
    yield db
    _drop(db)


class Failover:
    """What the reliability harness's Pinger needs of a server: a write
    through the URL of both nodes, and waiting until one takes it."""

    def __init__(self, cluster: PrimaryAndStandby, url: str):
        self.cluster, self.url = cluster, url
        self.steps: dict[str, float] = {}

    def writes(self, sql: str) -> bool:
        return self.cluster.writes(self.url, sql)

    def wait_up(self, timeout: float = 60) -> None:
        wait_until(lambda: self.writes("SELECT 1"), "a primary to answer", timeout)

    def __call__(self) -> None:
        self.steps = self.cluster.failover()


def under_load(db: Database, tmp_path, cluster: PrimaryAndStandby, prefix: str,
               app_prefix: str = "rawdb+", check: bool = True, **conf):
    """The campaign's load through ``db.url``; the primary fails over in its
    middle, a pinger measuring how long no write went through."""
    failover = Failover(cluster, db.url)
    load = Load(db, tmp_path / prefix, prefix, PER_THREAD, app_prefix=app_prefix, **conf).start()
    try:
        load.wait_stored(BEFORE, "the first stores")
        with Pinger(failover) as pinger:
            failover()
            failover.wait_up()
            load.wait_stored(load.stored() + AFTER, "stores on the new primary")
            time.sleep(0.2)  # one more ping after the last failure
    finally:
        outcome = load.finish(stop=True, check=check)
        cluster.rebuild()
    assert pinger.longest >= 0.05, "the pinger never saw the failover"
    outcome.window = pinger.window
    return outcome, pinger.longest, failover.steps


def describe(outcome, outage: float, steps: dict[str, float]) -> str:
    start, end = outcome.window
    began = outcome.longest_at
    return (
        f"outage {outage:.2f}s (stop {steps['stop']:.2f}s, promote {steps['promote']:.2f}s, "
        f"reset {steps['reset']:.2f}s); {outcome.stores} stores, {len(outcome.failed)} raised; "
        f"slowest store {outcome.longest:.2f}s (began {began - start:+.2f}s after the last "
        f"answer, ended {began + outcome.longest - end:+.2f}s after the next), slowest read "
        f"{outcome.longest_read:.2f}s; {outcome.reads} reads, {len(outcome.read_errors)} raised; "
        f"retries: {outcome.celery_retries} by Celery's loop, {outcome.statement_reruns} by "
        f"rawbackend"
    )


def check_failover_survived(db, prefix, outcome, outage) -> None:
    check_no_harm(outcome)
    check_stored_exactly_once(db, prefix, outcome)
    assert outcome.longest <= outage + STALL_MARGIN, \
        f"a store stalled {outcome.longest:.2f}s, the outage was {outage:.2f}s"


# -- failover under load --------------------------------------------------------


def test_failover_under_load(ha_db, tmp_path, pg_cluster, figures):
    """The primary stops at once mid-load and the standby takes over: every
    store lands on the new primary, none raises, none is lost."""
    outcome, outage, steps = under_load(ha_db, tmp_path, pg_cluster, "failover")
    figures(f"failover under load, target_session_attrs=read-write: {describe(outcome, outage, steps)}")
    check_failover_survived(ha_db, "failover", outcome, outage)

