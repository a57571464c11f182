"""Waiters woken by the store's notification (PostgreSQL LISTEN/NOTIFY).

The poll is taken out of the way where a test must prove that the
notification did it: ``pauses`` yields 30 s pauses, and the listener's safety
check is pushed out to 1,000 s.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest
from celery import states
from celery.exceptions import ImproperlyConfigured
from celery.result import AsyncResult, GroupResult

import rawbackend.backend
from conftest import wait_until
from rawbackend import listen
from test_statements import PostgresLog, bare_all

PROMPT = 0.2  # seconds from a store to its waiter's return: generous
NO_POLL = 30.0


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def no_poll(monkeypatch):
    """Waiters' pauses of 30 s and no safety check: only a notification (or
    the listener asking for a re-check) can end a wait early."""
    monkeypatch.setattr(rawbackend.backend, "pauses", lambda interval, timeout=None: iter([NO_POLL] * 100))
    monkeypatch.setattr(listen, "SAFETY_CHECK", 1000.0)


def listener_of(backend) -> listen.Listener:
    return listen._LISTENERS[(backend.url, backend.tables.sql["notify_listen"])]


def wait_listening(backend) -> listen.Listener:
    listener = wait_until(lambda: listen._LISTENERS.get((backend.url, backend.tables.sql["notify_listen"])),
                          "the listener")
    wait_until(lambda: listener.active, "the listener listening")
    return listener


class Waiter(threading.Thread):
    """``AsyncResult(task_id).get()`` in a thread; ``returned_at``: time.time()."""

    def __init__(self, backend, task_ids, timeout: float = 20.0):
        super().__init__(daemon=True)
        self.backend, self.task_ids, self.timeout = backend, task_ids, timeout
        self.value = self.error = self.returned_at = None

    def run(self):
        backend = self.backend
        try:
            result = AsyncResult(self.task_ids[0], backend=backend, app=backend.app)
            self.value = result.get(timeout=self.timeout)
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.returned_at = time.time()

    def result(self):
        self.join(self.timeout + 10)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        return self.value


def store_in_another_process(db, task_id: str, value=42) -> float:
    """Store ``task_id`` from a new Python process; time.time() once stored."""
    script = (
        "import sys, time\n"
        "from celery import Celery, states\n"
        "app = Celery('storer', set_as_current=False)\n"
        "app.conf.update(result_backend=sys.argv[1], result_serializer='json', accept_content=['json'],\n"
        "    database_table_names={'task': sys.argv[2], 'group': sys.argv[3]},\n"
        "    database_table_schemas={'task': sys.argv[4], 'group': sys.argv[4]}, database_notify=True)\n"
        "app.backend.store_result(sys.argv[5], int(sys.argv[6]), states.SUCCESS)\n"
        "print(time.time())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "rawdb+" + db.url, db.task_table, db.group_table, db.schema,
         task_id, str(value)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


# -- the store's notification ------------------------------------------------------


def test_a_ready_store_notifies_its_task_id_once(pg_db):
    """A store of a ready state notifies the table's channel with the task id,
    in the store's one statement; a state not ready notifies nothing, nor does
    a store that a SUCCESS already stored keeps out."""
    backend = pg_db.backend(database_notify=True)
    assert "pg_notify" in backend.tables.sql[backend._store_statement]
    backend.store_result("warm", 0, states.SUCCESS)  # the tables exist
    channel = listen_channel(backend)
    with psycopg.connect(pg_db.url, autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel}"')
        a, b = new_id(), new_id()
        backend.store_result(a, None, states.STARTED)
        backend.store_result(a, 1, states.SUCCESS)
        backend.store_result(a, 2, states.FAILURE)  # kept out: a SUCCESS is sticky
        backend.store_result(b, None, states.REVOKED)
        got = [(n.channel, n.payload) for n in conn.notifies(timeout=0.5)]
    assert got == [(channel, a), (channel, b)]


def listen_channel(backend) -> str:
    return backend.tables.sql["notify_listen"][len('LISTEN "'):-1]


def test_the_channel_is_per_table_and_fits_an_identifier():
    from rawbackend.models import channel_of

    assert channel_of("s", "t") == "rawbackend:s.t"
    assert channel_of(None, "celery_taskmeta") == "rawbackend:celery_taskmeta"
    long = channel_of("s" * 63, "t" * 63)
    assert len(long) <= 63 and long != channel_of("s" * 63, "u" * 63)
    assert set(channel_of("o'dd", 'qu"ote')) <= set("rawbckend:0123456789abcdef")


# -- waking -------------------------------------------------------------------------------


def test_get_returns_promptly_when_another_process_stores(pg_db, no_poll):
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    task_id = new_id()
    waiter = Waiter(backend, [task_id])
    waiter.start()
    wait_listening(backend)
    time.sleep(0.3)  # the waiter is in its wait, past any re-check
    stored_at = store_in_another_process(pg_db, task_id)
    assert waiter.result() == 42
    assert waiter.returned_at - stored_at < PROMPT


def test_a_store_before_listen_is_active_is_not_missed(pg_db, no_poll, monkeypatch):
    """The race: a store between the waiter's first read (PENDING) and LISTEN
    being active notifies nobody; the waiter re-checks once LISTEN is active."""
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    task_id = new_id()
    first_read = threading.Event()
    real_get, real_listen = backend._get_task_meta_for, listen.Listener._listen
    stored = {}

    def get(tid):
        meta = real_get(tid)
        first_read.set()
        return meta

    def late_listen(self, conn):
        assert first_read.wait(10)
        stored["at"] = store_in_another_process(pg_db, task_id)  # nobody listens yet
        return real_listen(self, conn)

    backend._get_task_meta_for = get
    monkeypatch.setattr(listen.Listener, "_listen", late_listen)
    waiter = Waiter(backend, [task_id])
    waiter.start()
    assert waiter.result() == 42
    assert waiter.returned_at - stored["at"] < 1.0  # LISTEN, the probe, the re-check: not 30 s


def test_group_get_wakes_on_notifications(pg_db, no_poll):
    """GroupResult.get(), the native join (get_many): in this thread, as a
    group resolves the app's backend in the thread that joins."""
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    ids = [new_id() for _ in range(3)]
    stored = {}

    def store():
        wait_listening(backend)
        time.sleep(0.3)  # the join is in its wait
        backend.store_result(ids[0], 0, states.SUCCESS)
        backend.store_result(ids[1], 1, states.SUCCESS)
        stored["at"] = store_in_another_process(pg_db, ids[2], 2)

    storer = threading.Thread(target=store, daemon=True)
    storer.start()
    group = GroupResult(new_id(), [AsyncResult(i, backend=backend, app=backend.app) for i in ids],
                        app=backend.app)
    assert group.get(timeout=20) == [0, 1, 2]
    returned_at = time.time()
    storer.join(10)
    assert returned_at - stored["at"] < PROMPT


def test_the_listener_comes_back_after_its_connection_is_killed(pg_db, no_poll):
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    first, second = new_id(), new_id()
    waiter = Waiter(backend, [first])
    waiter.start()
    listener = wait_listening(backend)
    epoch, pid = listener.epoch, listener._conn.info.backend_pid
    assert pg_db.query("SELECT pg_terminate_backend(%s)", (pid,)) == [(True,)]
    wait_until(lambda: listener.active and listener.epoch > epoch, "the listener back", timeout=20)
    assert listener._conn.info.backend_pid != pid
    time.sleep(0.3)
    stored_at = store_in_another_process(pg_db, first)
    assert waiter.result() == 42
    assert waiter.returned_at - stored_at < PROMPT
    # And a new waiter on the new connection.
    waiter = Waiter(backend, [second])
    waiter.start()
    time.sleep(0.3)
    stored_at = store_in_another_process(pg_db, second)
    assert waiter.result() == 42
    assert waiter.returned_at - stored_at < PROMPT


def test_a_forked_child_listens_on_its_own_and_the_parent_keeps_its_listener(pg_db, no_poll):
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    first = new_id()
    waiter = Waiter(backend, [first])  # the parent listens while it waits
    waiter.start()
    listener = wait_listening(backend)
    backend.store_result(first, 1, states.SUCCESS)
    assert waiter.result() == 1
    epoch, pid = listener.epoch, listener._conn.info.backend_pid
    in_child, in_parent = new_id(), new_id()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through its exit code)
        code = 1
        try:
            os.close(read)
            waiter = Waiter(backend, [in_child])
            waiter.start()
            own = wait_listening(backend)
            if own is not listener and own._conn.info.backend_pid != pid:
                time.sleep(0.3)
                os.write(write, b"x")  # the parent stores now
                code = 0 if waiter.result() == 42 else 2
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == b"x", "the child did not listen on a connection of its own"
    finally:
        os.close(read)
    stored_at = store_in_another_process(pg_db, in_child)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert time.time() - stored_at < 1.0  # woken, not polled (30 s)
    # The parent's listener is untouched: the same connection, and it wakes.
    assert listener.active and listener.epoch == epoch and listener._conn.info.backend_pid == pid
    waiter = Waiter(backend, [in_parent])
    waiter.start()
    time.sleep(0.3)
    stored_at = store_in_another_process(pg_db, in_parent)
    assert waiter.result() == 42
    assert waiter.returned_at - stored_at < PROMPT


# -- cost --------------------------------------------------------------------------------


def test_100_idle_waiters_cost_at_most_5_queries_a_second(pg_db):
    """100 threads waiting on PENDING ids (default interval 0.5 s: 200
    queries/s polling): every statement of the backend's connections, the
    listener's included, counted in the server's log over a 6.5 s window,
    which holds one of the listener's safety checks (every 5 to 6 s): the
    count sees the listener's statements too."""
    name = f"rawtest_{uuid.uuid4().hex[:12]}"
    backend = pg_db.backend(database_notify=True, database_engine_options={
        "connect_args": {"options": "-c log_statement=all", "application_name": name},
    })
    backend.store_result("warm", 0, states.SUCCESS)
    waiters = [Waiter(backend, [new_id()], timeout=12.0) for _ in range(100)]
    for waiter in waiters:
        waiter.start()
    listener = wait_listening(backend)
    wait_until(lambda: len(listener._watches) == 100, "100 waiters registered")
    time.sleep(1.0)  # past every waiter's first read and its re-check
    with psycopg.connect(pg_db.url, autocommit=True) as admin:
        log = PostgresLog(admin)
        started = time.monotonic()
        time.sleep(6.5)
        window = time.monotonic() - started
        pids = {row[0] for row in bare_all(
            admin, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,))}
        text = log.read_new()
    ours = [line for line in text.splitlines()
            if PostgresLog.STATEMENT.search(line) and any(f"[{pid}]" in line for pid in pids)]
    assert listener._conn.info.backend_pid in pids
    print(f"100 idle waiters: {len(ours)} statements in {window:.1f}s")
    assert len(ours) <= 5 * window, ours
    assert any("SELECT task_id FROM" in line for line in ours), ours  # the safety check, seen
    for waiter in waiters:
        with pytest.raises(Exception, match="timed out"):
            waiter.result()


# -- off, elsewhere, behind PgBouncer ------------------------------------------------------


def test_notify_off_stores_plainly_and_waiters_poll(pg_db):
    backend = pg_db.backend(database_notify=False)
    assert backend.notify is False
    assert "pg_notify" not in backend.tables.sql[backend._store_statement]
    backend.store_result("warm", 0, states.SUCCESS)
    task_id = new_id()
    waiter = Waiter(backend, [task_id])
    waiter.start()
    time.sleep(0.3)
    backend.store_result(task_id, 7, states.SUCCESS)
    assert waiter.result() == 7
    assert not any(key[0] == backend.url for key in listen._LISTENERS)  # nobody listened


def test_notify_is_off_by_default_and_must_be_a_bool(pg_db):
    assert pg_db.backend().notify is False
    with pytest.raises(ImproperlyConfigured, match="database_notify must be True or False, got 'yes'"):
        pg_db.backend(database_notify="yes")


def test_notify_survives_pickling(pg_db):
    import pickle

    backend = pickle.loads(pickle.dumps(pg_db.backend(database_notify=True)))
    assert backend.notify is True


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_other_dialects_are_unaffected(dialect, request):
    db = request.getfixturevalue(f"{dialect}_db")
    backend = db.backend(database_notify=True)
    assert backend.notify is False
    assert not any(name.startswith("notify_") for name in backend.tables.sql)
    task_id = new_id()
    waiter = Waiter(backend, [task_id])
    waiter.start()
    time.sleep(0.1)
    backend.store_result(task_id, 7, states.SUCCESS)
    assert waiter.result() == 7
    assert not any(key[0] == backend.url for key in listen._LISTENERS)


def test_behind_pgbouncer_notifications_are_found_unusable_and_waiters_poll(pg_db, pgbouncer, caplog):
    """In transaction mode LISTEN runs on a server connection the listener
    does not keep: the probe never arrives, the listener gives up (a warning),
    and waiters, polling all along, get their results; nothing hangs."""
    through = dataclasses.replace(pg_db, url=pgbouncer.url)
    backend = through.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    first, second = new_id(), new_id()
    waiter = Waiter(backend, [first], timeout=30)
    waiter.start()
    time.sleep(0.5)
    backend.store_result(first, 1, states.SUCCESS)
    assert waiter.result() == 1  # by the poll, while the probe is still out
    listener = listener_of(backend)
    wait_until(lambda: listener.unusable, "the listener giving up", timeout=listen.PROBE_TIMEOUT + 10)
    assert "did not arrive" in listener.unusable and not listener.active
    assert any("database_notify = False" in r.getMessage() for r in caplog.records)
    waiter = Waiter(backend, [second], timeout=30)
    waiter.start()
    time.sleep(0.3)
    backend.store_result(second, 2, states.SUCCESS)
    started = time.monotonic()
    assert waiter.result() == 2
    assert time.monotonic() - started < 2.0  # the adaptive poll (interval 0.5 s)


def heard_on_each_server_connection(bouncer_url: str, channel: str, servers: int) -> list[str]:
    """Notify ``channel`` once from each of PgBouncer's ``servers`` server
    connections (as many clients, each holding one in a transaction): what
    they heard. A server connection where a LISTEN on ``channel`` was left
    hears its own notification at COMMIT and hands it to its client."""
    heard: list[str] = []
    clients = [psycopg.connect(bouncer_url, prepare_threshold=None) for _ in range(servers)]
    try:
        for client in clients:
            client.add_notify_handler(lambda notify: heard.append(notify.channel))
            client.execute("SELECT pg_notify(%s, 'x')", (channel,))  # BEGIN: holds a server connection
        for client in clients:
            client.commit()
    finally:
        for client in clients:
            client.close()
    return heard


def test_behind_pgbouncer_the_giving_up_listener_leaves_no_listen_on_the_tables_channel(
        pg_db, pgbouncer):
    """The listener's LISTEN went to a server connection that PgBouncer lends
    to others: had it been on the table's channel, every later store would
    hand a notification to whichever client holds that connection, and
    psycopg keeps each one (in a backlog without end) on pooled connections
    that never read them. The listener probes on a channel of probes first,
    and LISTENs on the table's channel only once the probe arrived."""
    through = dataclasses.replace(pg_db, url=pgbouncer.url)
    backend = through.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    task_id = new_id()
    waiter = Waiter(backend, [task_id], timeout=listen.PROBE_TIMEOUT + 20)
    waiter.start()
    listener = wait_until(lambda: listen._LISTENERS.get((backend.url, backend.tables.sql["notify_listen"])),
                          "the listener")
    wait_until(lambda: listener.unusable, "the listener giving up", timeout=listen.PROBE_TIMEOUT + 10)

    servers = 2  # the fixture's default_pool_size: each is covered
    # The LISTEN left behind is there (the check can see one)...
    assert "rawbackend:probe" in heard_on_each_server_connection(pgbouncer.url, "rawbackend:probe", servers)
    # ... and it is not on the table's channel.
    assert heard_on_each_server_connection(pgbouncer.url, listen_channel(backend), servers) == []
    backend.store_result(task_id, 1, states.SUCCESS)
    assert waiter.result() == 1  # polling


def test_an_idle_listener_closes_its_connection_and_listens_again_for_the_next_waiter(
        pg_db, no_poll, monkeypatch):
    monkeypatch.setattr(listen, "IDLE_CLOSE", 0.5)
    backend = pg_db.backend(database_notify=True)
    backend.store_result("warm", 0, states.SUCCESS)
    first, second = new_id(), new_id()
    waiter = Waiter(backend, [first])
    waiter.start()
    listener = wait_listening(backend)
    epoch, pid = listener.epoch, listener._conn.info.backend_pid
    backend.store_result(first, 1, states.SUCCESS)
    assert waiter.result() == 1
    wait_until(lambda: not listener.active and listener._conn is None, "the idle listener closing")
    wait_until(lambda: not pg_db.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
               "its server connection gone")
    waiter = Waiter(backend, [second])
    waiter.start()
    wait_until(lambda: listener.active and listener.epoch > epoch, "listening again")
    time.sleep(0.3)
    stored_at = store_in_another_process(pg_db, second)
    assert waiter.result() == 42
    assert waiter.returned_at - stored_at < PROMPT
