"""Native chords: distinct parts counted, the body fired once, ChordError on a
failed part, the chord table's rows removed, and no ``celery.chord_unlock``.

Unit-level tests drive the backend directly, as a worker would: each part is
``mark_as_done``/``mark_as_failure`` with a request that names its group and
the chord's body. The app is eager, so the body "fires" by running in-process
and records what it received; its errback records the errors it is called with.
The worker tests are in test_e2e_worker.py.
"""
from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import chord, states
from celery.app.task import Context
from celery.exceptions import ChordError

from conftest import Database, wait_until
from rawbackend.backend import DatabaseBackend
from test_concurrency import _errdir, fork_children, wait_children
from test_e2e_worker import TIMEOUT

FORK = multiprocessing.get_context("fork")


class Chord:
    """A chord started through ``apply_chord``, whose parts are reported by hand."""

    def __init__(self, db, size: int, *, chord_size: int | None = None, **conf):
        self.db = db
        # Stored eager results: the last part joins the header through the backend.
        self.app = db.app(task_always_eager=True, task_store_eager_result=True, **conf)
        self.backend = self.app.backend
        self.fired: list = []
        self.errors: list = []

        @self.app.task(name="chordtest.body", shared=False)
        def body(values):
            self.fired.append(values)
            return sum(values)

        @self.app.task(name="chordtest.on_error", shared=False)
        def on_error(request, exc, traceback):
            self.errors.append(str(exc))

        self.group_id = uuid.uuid4().hex
        self.body_id = f"body-{uuid.uuid4().hex}"
        self.part_ids = [f"part-{i}-{uuid.uuid4().hex}" for i in range(size)]
        self.body = self.app.signature("chordtest.body", options={"task_id": self.body_id})
        self.body.link_error(self.app.signature("chordtest.on_error"))
        header = [self.app.AsyncResult(part_id) for part_id in self.part_ids]
        self.backend.apply_chord((self.group_id, header), self.body)
        self.chord = dict(self.body)  # the body's signature, as a worker's request carries it
        if chord_size is not None:
            self.chord["chord_size"] = chord_size

    def request(self, part_id: str) -> Context:
        return Context(id=part_id, group=self.group_id, chord=self.chord)

    def done(self, i: int, value=None, part_id: str | None = None) -> None:
        part_id = part_id or self.part_ids[i]
        self.backend.mark_as_done(part_id, i * 10 if value is None else value, request=self.request(part_id))

    def fail(self, i: int, exc: Exception) -> None:
        part_id = self.part_ids[i]
        self.backend.mark_as_failure(part_id, exc, request=self.request(part_id))

    def rows(self) -> list[tuple]:
        db = self.db
        return sorted(db.query(
            f"SELECT task_id FROM {db.qualified(db.chord_table)} WHERE group_id = '{self.group_id}'"
        ))

    def group_saved(self) -> bool:
        db = self.db
        return bool(db.query(
            f"SELECT 1 FROM {db.qualified(db.group_table)} WHERE taskset_id = '{self.group_id}'"
        ))


def test_body_fires_once_when_the_last_part_returns(db):
    """Parts finish in any order; the body fires with the last, once, with the
    header's results in header order."""
    c = Chord(db, 4)
    assert c.group_saved()  # saved at apply_chord, for the last part to join
    for i in (2, 0, 3):
        c.done(i)
        assert c.fired == []
    c.done(1)
    assert c.fired == [[0, 10, 20, 30]]


def test_part_reported_twice_counts_once(db):
    """A part reported again (a retry, a redelivery with acks_late) neither
    completes the chord early nor fires the body a second time."""
    c = Chord(db, 3)
    c.done(0)
    c.done(0)
    c.done(1)
    c.done(1)
    assert c.fired == []  # 4 reports, 2 distinct parts of 3
    c.done(2)
    assert c.fired == [[0, 10, 20]]
    for i in (2, 0, 1):  # late duplicates, after the body fired
        c.done(i)
    assert c.fired == [[0, 10, 20]]
    # No "GroupResult ... no longer exists" error for the late ones.
    assert c.errors == []
    assert c.backend.get_task_meta(c.body_id, cache=False)["result"] == 30


def test_failing_part_fails_the_body_with_chord_error(db):
    c = Chord(db, 3)
    c.done(0)
    c.fail(1, ValueError("boom"))
    assert c.fired == []
    c.done(2)
    assert c.fired == []
    meta = c.backend.get_task_meta(c.body_id, cache=False)
    assert meta["status"] == states.FAILURE
    assert isinstance(meta["result"], ChordError)
    assert str(meta["result"]) == f"Dependency {c.part_ids[1]} raised ValueError('boom')"
    assert c.errors == [str(meta["result"])]  # the body's errback, once
    assert c.rows() == [("",)] and not c.group_saved()


def test_size_from_chord_size(db):
    """``chord_size`` in the request's chord decides, not the header's length
    (a header whose group parts report under the chord's group id)."""
    c = Chord(db, 2, chord_size=3)
    c.done(0)
    c.done(1)
    assert c.fired == []  # len(header) parts, but 3 are expected
    c.done(2, part_id=f"nested-{uuid.uuid4().hex}")
    assert c.fired == [[0, 10]]


def test_rows_gone_after_firing(db):
    """After the body fired: the saved header and the part rows are gone; one
    claim row per chord stays (until cleanup or the group is deleted), which
    is what makes a late part harmless."""
    c = Chord(db, 3)
    c.done(0)
    c.done(1)
    assert c.rows() == sorted([(c.part_ids[0],), (c.part_ids[1],)])
    c.done(2)
    assert c.fired == [[0, 10, 20]]
    assert c.rows() == [("",)]
    assert not c.group_saved()


def test_delete_group_forget_and_cleanup_remove_chord_rows(db):
    deleted = Chord(db, 3)
    deleted.done(0)
    assert deleted.rows()
    deleted.app.GroupResult(deleted.group_id).delete()  # the backend's delete_group
    assert deleted.rows() == [] and not deleted.group_saved()

    forgotten = Chord(db, 2)
    forgotten.done(0)
    forgotten.done(1)
    assert forgotten.rows() == [("",)]
    forgotten.backend.forget(forgotten.group_id)
    assert forgotten.rows() == []

    old, fresh = Chord(db, 3, result_expires=3600), Chord(db, 3)
    old.done(0)
    fresh.done(0)
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(tzinfo=None)
    db.query(
        f"UPDATE {db.qualified(db.chord_table)} SET date_done = '{long_ago:%Y-%m-%d %H:%M:%S}' "
        f"WHERE group_id = '{old.group_id}'"
    )
    old.backend.cleanup()
    assert old.rows() == []
    assert fresh.rows() == [(fresh.part_ids[0],)]


def test_forgotten_header_fails_the_body_once(db):
    """The saved header deleted while the chord runs: Celery's ChordError
    "GroupResult ... no longer exists", written once, not once per part."""
    c = Chord(db, 3)
    c.done(0)
    db.query(f"DELETE FROM {db.qualified(db.group_table)} WHERE taskset_id = '{c.group_id}'")
    c.done(1)
    meta = c.backend.get_task_meta(c.body_id, cache=False)
    assert meta["status"] == states.FAILURE
    assert str(meta["result"]) == f"GroupResult {c.group_id} no longer exists"
    c.done(2)
    assert c.errors == [f"GroupResult {c.group_id} no longer exists"]
    assert c.fired == []


def test_chord_started_again_fires_again(db):
    """The same group id started again (a replayed canvas) starts afresh:
    the claim row of its first run does not keep its body from firing."""
    c = Chord(db, 2)
    c.done(0)
    c.done(1)
    header = [c.app.AsyncResult(part_id) for part_id in c.part_ids]
    c.backend.apply_chord((c.group_id, header), c.body)
    assert c.rows() == []
    c.done(0, value=1)
    c.done(1, value=2)
    assert len(c.fired) == 2


def test_claim_is_won_once_and_found_again_by_its_maker(db):
    """A claim retried after a lost reply finds its own token and still wins;
    any other claim of the same chord loses."""
    c = Chord(db, 1)
    assert c.backend._claim_chord(c.group_id, "first") is True
    assert c.backend._claim_chord(c.group_id, "second") is False
    assert c.backend._claim_chord(c.group_id, "first") is True  # the retry of "first"
    assert c.rows() == [("",)]


def test_part_without_an_id_is_refused(db):
    c = Chord(db, 2)
    request = Context(id=None, group=c.group_id, chord=c.chord)
    with pytest.raises(ValueError, match="chord part task id None is not a string of 1 to 155"):
        c.backend.on_chord_part_return(request, states.SUCCESS, 1)


def test_chord_table_named_by_conf_and_added_to_celerys_tables(db):
    """Celery's own backend makes its two tables; rawbackend adds its chord
    table, under the name from ``database_table_names["chord"]``, and Celery's
    backend still reads every part's result."""
    celery_backend = db.app(prefix="db+").backend
    celery_backend.store_result("made-by-celery", 1, states.SUCCESS)
    c = Chord(db, 2)
    c.done(0)
    c.done(1)
    assert c.fired == [[0, 10]]
    assert c.rows() == [("",)]
    for i, part_id in enumerate(c.part_ids):
        meta = celery_backend.get_task_meta(part_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, i * 10)
    assert celery_backend.get_task_meta("made-by-celery", cache=False)["result"] == 1


def test_chord_table_in_a_schema_of_its_own(pg_db):
    """``database_table_schemas["chord"]`` puts the chord table elsewhere than
    the group's schema, where it is by default."""
    other = f"{pg_db.schema}_chords"
    pg_db.query(f'CREATE SCHEMA "{other}"')
    try:
        c = Chord(pg_db, 2, database_table_schemas={"task": pg_db.schema, "group": pg_db.schema,
                                                    "chord": other})
        c.done(0)
        c.done(1)
        assert c.fired == [[0, 10]]
        where = "SELECT table_schema FROM information_schema.tables WHERE table_name = %s"
        assert pg_db.query(where, (pg_db.chord_table,)) == [(other,)]
    finally:
        pg_db.query(f'DROP SCHEMA "{other}" CASCADE')


def test_user_who_may_not_create_tables_still_stores_results(mysql_db, caplog):
    """On Celery's tables, a user without CREATE rights (a reader, a locked
    down worker) gets a working backend and a warning naming the chord table
    and how to create it; only chords need it."""
    celery_backend = mysql_db.app(prefix="db+").backend
    celery_backend.store_result("made-by-celery", 1, states.SUCCESS)  # Celery's two tables
    database = mysql_db.url.rsplit("/", 1)[1]
    user = f"rb_{uuid.uuid4().hex[:8]}"
    for host in ("%", "localhost"):
        mysql_db.query(f"CREATE USER '{user}'@'{host}'")
        mysql_db.query(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{user}'@'{host}'")
    try:
        limited = Database(mysql_db.dialect, mysql_db.url.replace("root@", f"{user}@", 1),
                           mysql_db.task_table, mysql_db.group_table, chord_table=mysql_db.chord_table)
        with caplog.at_level("WARNING", logger="rawbackend.models"):
            backend = limited.backend()
            backend.store_result("by-limited-user", 2, states.SUCCESS)
        assert backend.get_task_meta("made-by-celery", cache=False)["result"] == 1
        assert backend.get_task_meta("by-limited-user", cache=False)["result"] == 2
        warning = " ".join(r.getMessage() for r in caplog.records)
        assert f"could not create the chord table `{mysql_db.chord_table}`" in warning
        assert "CREATE TABLE IF NOT EXISTS" in warning
        backend.session_manager.invalidate(backend.url)
    finally:
        mysql_db.query(f"DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost'")


def test_pickled_backend_keeps_the_chord_table(db):
    c = Chord(db, 2)
    copy = DatabaseBackend(app=c.app, **c.backend.__reduce__()[1][2])
    assert copy.tables.chord_cls.table_name == db.chord_table
    assert copy.tables.sql["delete_chord"] == c.backend.tables.sql["delete_chord"]


# -- the last two parts at the same moment, in two processes --------------------

RACE_ROUNDS = 30


def test_last_two_parts_at_once_fire_the_body_once(db, tmp_path):
    """Round after round, the last two parts return at the same moment in two
    forked processes (a barrier): the body fires exactly once each round. The
    body records its firing as a row, since the processes share no memory."""
    c = Chord(db, 1)  # the app, its body task and tables; chords are made below
    app, backend = c.app, c.backend

    @app.task(name="chordtest.record", shared=False)
    def record(values):
        backend.store_result(f"fired-{uuid.uuid4().hex}", values, states.SUCCESS)

    errdir = _errdir(tmp_path)
    for round_ in range(RACE_ROUNDS):
        group_id = f"race-{round_}-{uuid.uuid4().hex}"
        part_ids = [f"{group_id}-{i}" for i in range(3)]
        body = app.signature("chordtest.record", options={"task_id": f"body-{group_id}"})
        backend.apply_chord((group_id, [app.AsyncResult(p) for p in part_ids]), body)
        requests = [Context(id=p, group=group_id, chord=dict(body)) for p in part_ids]
        backend.mark_as_done(part_ids[0], 0, request=requests[0])
        barrier = FORK.Barrier(2, timeout=30)

        def child(i, requests=requests, part_ids=part_ids, barrier=barrier):
            backend.store_result(part_ids[i + 1], i + 1, states.SUCCESS)
            barrier.wait()
            backend.on_chord_part_return(requests[i + 1], states.SUCCESS, i + 1)

        wait_children(fork_children(2, child, errdir), errdir)
        fired = db.query(
            f"SELECT result FROM {db.qualified(db.task_table)} WHERE task_id LIKE 'fired-%'"
        )
        assert len(fired) == 1, f"round {round_}: the body fired {len(fired)} times"
        assert backend.decode(bytes(fired[0][0])) == [0, 1, 2]
        db.query(f"DELETE FROM {db.qualified(db.task_table)} WHERE task_id LIKE 'fired-%'")


# -- through a real prefork worker (test_e2e_worker's, on RabbitMQ) ------------

LATENCY_ROUNDS = 5


def _settled(worker, group_id) -> bool:
    """The chord's header and parts are deleted, its claim row kept."""
    db = worker.db
    rows = db.query(f"SELECT task_id FROM {db.qualified(db.chord_table)} WHERE group_id = '{group_id}'")
    saved = db.query(f"SELECT 1 FROM {db.qualified(db.group_table)} WHERE taskset_id = '{group_id}'")
    return rows == [("",)] and not saved


@pytest.mark.slow
def test_chord_of_20_through_a_worker(worker, capsys):
    """``chord(add.s(i, i) for i in range(20))(tsum.s())`` is 380, fired by
    its last part: the worker never receives celery.chord_unlock. Latency
    (apply to .get() returning, polled every 10 ms so that the client's 0.5 s
    poll does not hide it), median of 5, is printed, not asserted."""
    app = worker.client(result_extended=False)
    add, tsum = app.signature("tasksmod.add"), app.signature("tasksmod.tsum")
    latencies = []
    for _ in range(LATENCY_ROUNDS):
        started = time.perf_counter()
        result = chord(add.clone((i, i)) for i in range(20))(tsum)
        assert result.get(timeout=TIMEOUT, interval=0.01) == 380
        latencies.append(time.perf_counter() - started)
        group_id = result.parent.id
        wait_until(lambda group_id=group_id: _settled(worker, group_id), "the chord's rows removed")
    assert result.parent.get(timeout=TIMEOUT) == [2 * i for i in range(20)]
    log = worker.log()
    assert log.count("tasksmod.tsum[") >= LATENCY_ROUNDS  # received and succeeded
    assert "celery.chord_unlock" not in log
    # Celery's own backend reads every result written while chords ran.
    celery_backend = worker.db.app(prefix="db+").backend
    for i, part in enumerate(result.parent.results):
        meta = celery_backend.get_task_meta(part.id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, 2 * i)
    assert celery_backend.get_task_meta(result.id, cache=False)["result"] == 380
    with capsys.disabled():
        print(
            f"\n[{worker.db.dialect}] chord of 20 through the worker: median "
            f"{statistics.median(latencies) * 1000:.0f} ms "
            f"(all: {', '.join(f'{t * 1000:.0f}' for t in latencies)} ms)"
        )


@pytest.mark.slow
def test_failing_part_through_a_worker(worker):
    """A failing part fails the body with ChordError naming it: .get() of the
    body raises it. (The chord's own result may raise the part's ValueError
    first: Celery's client checks the parents, the header, before the body.)"""
    app = worker.client(result_extended=False)
    header = [app.signature("tasksmod.add", (1, 1)), app.signature("tasksmod.fail", ("boom",)),
              app.signature("tasksmod.add", (2, 2))]
    result = chord(header)(app.signature("tasksmod.tsum"))
    body = app.AsyncResult(result.id)  # without the header as its parent
    with pytest.raises(ChordError) as info:
        body.get(timeout=TIMEOUT, interval=0.01)
    failed = result.parent.results[1].id
    assert str(info.value) == f"Dependency {failed} raised ValueError('boom')"
    with pytest.raises((ChordError, ValueError)):
        result.get(timeout=TIMEOUT)
    assert "celery.chord_unlock" not in worker.log()
