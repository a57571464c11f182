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

import dataclasses
import time
import uuid
from urllib.parse import quote

import pytest
from celery import Celery, states

import test_chords
import test_concurrency
from conftest import REQUIRE_SERVERS, Database, _drop, wait_until
from pgcluster import PrimaryAndStandby, missing
from rawbackend.errors import ConnectFailed, ReadOnlyServer
from reliability.harness import Load, Pinger, check_no_harm, check_stored_exactly_once, lost

pytestmark = [pytest.mark.cluster, pytest.mark.postgresql, pytest.mark.slow]

PER_THREAD = 2_500  # the hard bound of each writer thread
BEFORE = 400  # stores before the failover
AFTER = 400  # stores once the new primary takes writes, before the writers stop
STALL_MARGIN = 1.0  # seconds a store may stall beyond the outage
REMOTE_APPLY = "options=" + quote("-c synchronous_commit=remote_apply")
READS = 50  # reads through the standby right after a store
AT_ONCE = 10.0  # seconds: far below the 30 s reconnect wait, let alone four of them


@pytest.fixture(scope="module")
def pg_cluster():
    problem = missing()
    if problem:
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


def app_on(db: Database, url: str, **conf) -> Celery:
    """An app on ``url`` with ``db``'s tables (its pools dropped with ``db``)."""
    app = Celery(f"ha-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend=f"rawdb+{url}", **db.conf(**conf))
    db.apps.append(app)
    return app


def rows_of(db: Database, task_id: str) -> list[tuple]:
    return db.query(f"SELECT status FROM {db.qualified(db.task_table)} WHERE task_id = %s",
                    (task_id,))


class Failover:
    """What the reliability harness's Pinger needs of a server: a write
    through both nodes' URL (target_session_attrs=read-write: the outage is
    the time no node takes writes), and waiting until one takes it."""

    def __init__(self, cluster: PrimaryAndStandby, detection: float = 0.0):
        self.cluster, self.url, self.detection = cluster, cluster.url(), detection
        self.steps: dict[str, float] = {}

    def writes(self, sql: str) -> bool:
        return self.cluster.writes(self.url, sql)

    def wait_up(self, timeout: float = 60) -> None:
        wait_until(lambda: self.writes("SELECT 1"), "a primary to answer", timeout)

    def __call__(self) -> None:
        self.steps = self.cluster.failover(self.detection)


def under_load(db: Database, tmp_path, cluster: PrimaryAndStandby, prefix: str,
               app_prefix: str = "rawdb+", check: bool = True, detection: float = 0.0, **conf):
    """The campaign's load through ``db.url``; the primary fails over in its
    middle (promoted ``detection`` seconds after the stop), a pinger measuring
    how long no write went through."""
    failover = Failover(cluster, detection)
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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def stalls(outcome) -> str:
    """The stores in flight during the outage: how many, their longest and
    99th percentile; and the 99th percentile of all stores."""
    start, end = outcome.window
    during = [took for began, took in outcome.timings if began < end and began + took > start]
    every = [took for _, took in outcome.timings]
    return (f"{len(during)} stores in flight during it: max {max(during, default=0):.2f}s, "
            f"p99 {percentile(during, 0.99):.2f}s, p50 {percentile(during, 0.5):.2f}s; "
            f"p99 of all stores {percentile(every, 0.99) * 1000:.0f} ms")


def describe(outcome, outage: float, steps: dict[str, float]) -> str:
    start, end = outcome.window
    began = outcome.longest_at
    return (
        f"outage {outage:.2f}s (stop and detection {steps['stop']:.2f}s, promote "
        f"{steps['promote']:.2f}s, reset {steps['reset']:.2f}s); {stalls(outcome)}; "
        f"{outcome.stores} stores, {len(outcome.failed)} raised; "
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


URL_FORMS = {
    "hosts": lambda cluster: cluster.url(),
    "?host=": lambda cluster: cluster.query_url(),
    "load_balance_hosts": lambda cluster: cluster.url(
        "?target_session_attrs=read-write&load_balance_hosts=random"),
}


@pytest.mark.parametrize("form", URL_FORMS)
def test_failover_under_load(pg_cluster, tmp_path, figures, form):
    """The primary stops at once mid-load and the standby takes over: every
    store lands on the new primary, none raises, none is lost. The URL names
    both nodes with target_session_attrs=read-write: as a host list, in
    SQLAlchemy's ?host= form, and with the hosts tried in random order."""
    db = cluster_database(URL_FORMS[form](pg_cluster))
    try:
        outcome, outage, steps = under_load(db, tmp_path, pg_cluster, "failover")
        figures(f"failover under load, {form}: {describe(outcome, outage, steps)}")
        check_failover_survived(db, "failover", outcome, outage)
    finally:
        _drop(db)



def test_failover_without_target_session_attrs(pg_cluster, tmp_path, figures):
    """Without target_session_attrs libpq takes the first node that accepts:
    during the failover that is the standby, where a write gets 25006
    (read-only). The connection is dropped and the store waits for a node
    that takes writes."""
    db = cluster_database(pg_cluster.url())  # the checks and the clean-up go to the primary
    # The primary's address first, as such a URL is written: stores go there until it stops.
    any_node = dataclasses.replace(
        db, url=f"postgresql://postgres@{pg_cluster.primary.address},{pg_cluster.standby.address}/ha")
    try:
        outcome, outage, steps = under_load(any_node, tmp_path, pg_cluster, "anynode")
        figures(f"failover under load, no target_session_attrs: {describe(outcome, outage, steps)}")
        check_failover_survived(db, "anynode", outcome, outage)
    finally:
        _drop(db)


# -- through one node, then the other -------------------------------------------


def test_a_result_stored_through_one_node_is_read_through_the_other(ha_db, pg_cluster, figures):
    """With synchronous_commit=remote_apply in the URL a store returns once the
    standby has applied it: a read there right after finds it, every time.
    With on (the cluster's setting) the standby has the commit on disk when
    the store returns, and a read there may come before it is applied:
    counted, not asserted."""
    ha_db.backend().store_result("tables", None, states.SUCCESS)  # made on the primary
    pg_cluster.wait_replayed()
    on_standby = app_on(ha_db, pg_cluster.standby.url()).backend
    missed = {}
    for setting, query in (("on", "?target_session_attrs=read-write"),
                           ("remote_apply", f"?target_session_attrs=read-write&{REMOTE_APPLY}")):
        writer = app_on(ha_db, pg_cluster.url(query)).backend
        missed[setting] = 0
        for k in range(READS):
            task_id = f"{setting}-{k}"
            writer.store_result(task_id, {"k": k}, states.SUCCESS)
            meta = on_standby.get_task_meta(task_id, cache=False)
            if meta["status"] != states.SUCCESS:
                missed[setting] += 1
            else:
                assert meta["result"] == {"k": k}
    figures(f"reads through the standby right after a store through the primary: "
            f"{missed['on']} of {READS} still PENDING with synchronous_commit=on, "
            f"{missed['remote_apply']} of {READS} with remote_apply")
    assert missed["remote_apply"] == 0
    pg_cluster.wait_replayed()
    assert all(on_standby.get_task_meta(f"on-{k}", cache=False)["result"] == {"k": k}
               for k in range(READS))


# -- a URL that leads only to a standby -------------------------------------------


def test_only_a_standby_with_read_write_fails_at_once_naming_it(ha_db, pg_cluster):
    """target_session_attrs=read-write and no primary among the hosts: libpq
    turns each down, and the error says so, at once (a wrong URL, not an
    outage to wait for)."""
    ha_db.backend().store_result("tables", None, states.SUCCESS)  # made on the primary
    app = app_on(ha_db, pg_cluster.standby.url(query="?target_session_attrs=read-write"))
    began = time.monotonic()
    with pytest.raises(ConnectFailed) as caught:
        app.backend.store_result("never", 1, states.SUCCESS)  # the tables are made at set-up
    took = time.monotonic() - began
    message = str(caught.value)
    assert pg_cluster.standby.address in message
    assert "session is read-only" in message
    assert "No host of the URL would do: a host that answered is read-only" in message
    assert took < AT_ONCE, f"took {took:.1f}s"
    assert rows_of(ha_db, "never") == []


def test_only_a_standby_raises_read_only_at_once_and_writes_nothing(ha_db, pg_cluster):
    """Without target_session_attrs libpq takes the standby: results are read
    there, and a store fails at once with an error that says read-only, names
    the standby and how to reach the primary; nothing is written anywhere."""
    ha_db.backend().store_result("stored", {"on": "primary"}, states.SUCCESS)
    pg_cluster.wait_replayed()
    backend = app_on(ha_db, pg_cluster.standby.url()).backend
    assert backend.get_task_meta("stored", cache=False)["result"] == {"on": "primary"}
    began = time.monotonic()
    with pytest.raises(ReadOnlyServer) as caught:
        backend.store_result("refused", 1, states.SUCCESS)
    took = time.monotonic() - began
    message = str(caught.value)
    assert f"server at {pg_cluster.standby.address} is read-only" in message
    assert "cannot execute INSERT in a read-only transaction" in message
    assert "target_session_attrs=read-write" in message
    assert took < AT_ONCE, f"took {took:.1f}s"
    assert rows_of(ha_db, "refused") == []
    assert backend.get_task_meta("refused", cache=False)["status"] == states.PENDING


# -- racing processes, tables made at once, groups and chords -----------------------


def test_two_processes_store_the_same_ids_at_once(ha_db, tmp_path):
    """The body of the single-server race (4 forked processes, the same ids,
    STARTED/SUCCESS/STARTED), on the pair: nothing raises, one row per id,
    every id SUCCESS."""
    test_concurrency.test_forked_processes_race_on_the_same_task_ids(ha_db, tmp_path)


def test_fresh_backends_create_the_tables_at_once(ha_db, tmp_path):
    """6 processes create the tables at the same instant through both nodes' URL."""
    test_concurrency.test_many_workers_create_the_tables_at_once(ha_db, tmp_path)


def test_last_two_chord_parts_at_once_fire_the_body_once(ha_db, tmp_path):
    test_chords.test_last_two_parts_at_once_fire_the_body_once(ha_db, tmp_path)


def test_groups_and_chords_across_a_failover(ha_db, pg_cluster):
    """Half a chord's parts before the failover, half after: the body fires
    once with every result; a group saved before is restored after."""
    c = test_chords.Chord(ha_db, 4)
    app, backend = c.app, c.backend
    group = app.GroupResult(uuid.uuid4().hex, [app.AsyncResult(p) for p in c.part_ids])
    backend.save_group(group.id, group)
    c.done(0)
    c.done(1)
    pg_cluster.failover()
    try:
        c.done(2)
        c.done(3)
        assert c.fired == [[0, 10, 20, 30]]
        assert backend.restore_group(group.id, cache=False) == group
        failing = test_chords.Chord(ha_db, 2)
        failing.done(0)
        failing.fail(1, KeyError("part 1"))
        assert failing.fired == []
        assert len(failing.errors) == 1 and "Dependency" in failing.errors[0]
    finally:
        pg_cluster.rebuild()


# -- heavy: several failovers, and Celery's own backend -------------------------------

FAILOVERS = 3
# Seconds from the primary's stop to the promotion in the heavy variants: the
# failover seen in the issue took 1-2 s (a slow stop, then the promotion).
DETECTION = 1.5


@pytest.mark.heavy
def test_failovers_one_after_another_under_load(pg_cluster, tmp_path, figures):
    """One load across three failovers, each node primary in turn; between
    two, a new standby is made of the new primary while the load goes on."""
    db = cluster_database(pg_cluster.url())
    failover = Failover(pg_cluster)
    load = Load(db, tmp_path / "again", "again", PER_THREAD * 10).start()
    outages = []
    try:
        load.wait_stored(BEFORE, "the first stores")
        for _ in range(FAILOVERS):
            with Pinger(failover) as pinger:
                failover()
                failover.wait_up()
                load.wait_stored(load.stored() + AFTER, "stores on the new primary")
                time.sleep(0.2)
            outages.append(pinger.longest)
            pg_cluster.rebuild()  # under load
            load.wait_stored(load.stored() + AFTER, "stores with the new standby")
            assert load.writers_alive(), "the writers were done before the failovers"
    finally:
        outcome = load.finish(stop=True)
    figures(f"{FAILOVERS} failovers under one load: outages "
            f"{', '.join(f'{o:.2f}s' for o in outages)}; {outcome.stores} stores, "
            f"{len(outcome.failed)} raised, slowest {outcome.longest:.2f}s; {outcome.reads} reads, "
            f"{len(outcome.read_errors)} raised; retries: {outcome.celery_retries} by Celery's "
            f"loop, {outcome.statement_reruns} by rawbackend")
    try:
        check_no_harm(outcome)
        check_stored_exactly_once(db, "again", outcome)
        assert outcome.longest <= max(outages) + STALL_MARGIN
    finally:
        _drop(db)


@pytest.mark.heavy
def test_slow_failover_under_load(pg_cluster, tmp_path, figures):
    """The standby promoted 1.5 s after the primary stopped: the stores wait
    for it (the reconnect wait), none raises, none is lost."""
    db = cluster_database(pg_cluster.url())
    try:
        outcome, outage, steps = under_load(db, tmp_path, pg_cluster, "slow", detection=DETECTION)
        figures(f"slow failover under load: {describe(outcome, outage, steps)}")
        assert outage >= DETECTION
        check_failover_survived(db, "slow", outcome, outage)
    finally:
        _drop(db)


@pytest.mark.heavy
@pytest.mark.parametrize("always_retry", [False, True], ids=["celery-defaults", "always-retry"])
def test_celery_database_backend_across_a_failover_for_comparison(pg_cluster, tmp_path, figures,
                                                                    always_retry):
    """Celery 5.7.0's own ``db+`` backend, with the same load and the slow
    failover, through the same nodes in SQLAlchemy's ?host= form: reported,
    not asserted. Its defaults do not retry; with result_backend_always_retry
    it retries 3 times within about 140 ms. About 35 s each."""
    detection = DETECTION
    db = cluster_database(pg_cluster.query_url())
    prefix = f"celery{int(always_retry)}"
    try:
        warm = db.app(prefix="db+").backend
        warm.store_result("celery-warm", 0, states.SUCCESS)  # its tables, before the fork
        warm.ResultSession().get_bind().dispose()
        outcome, outage, steps = under_load(db, tmp_path, pg_cluster, prefix, app_prefix="db+",
                                            check=False, detection=detection,
                                            result_backend_always_retry=always_retry)
        figures(f"Celery's db+ backend ({'always_retry' if always_retry else 'its defaults'}), "
                f"slow failover: {describe(outcome, outage, steps)}; "
                f"{len(lost(db, prefix, outcome))} never written; crashed {len(outcome.crashes)}, "
                f"hung {len(outcome.hung)}")
    finally:
        _drop(db)
