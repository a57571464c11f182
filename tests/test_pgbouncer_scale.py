"""PgBouncer at scale: 16 processes x 4 threads on 10 server connections.

A PgBouncer of the test's own (transaction pooling, ``default_pool_size`` and
``max_db_connections`` 10) logs in to the server as a role of the test's own,
so that ``pg_stat_activity.usename`` counts its server connections and
nothing else; its admin console counts its clients. 16 spawned processes of 4
threads each store, read, join, save and restore groups and run a chord
through it, with rawbackend's default settings (psycopg prepares statements
until the pool meets PgBouncer's 26000/42P05). With ``database_notify`` on,
every process's listener finds that notifications do not arrive there, and
waiters poll and still get their results.

The connection budget these figures document is in docs/scaling.md.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import traceback
import uuid
from contextlib import contextmanager

import psycopg
import pytest

from conftest import raw_connect, wait_until
from rawbackend import listen
from test_notify import heard_on_each_server_connection, listen_channel
from test_pgbouncer import pgbouncer_version, running_pgbouncer

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

PROCESSES, THREADS = 16, 4
SERVER_CONNECTIONS = 10
ROUNDS = 6  # per thread: 3 stores, a read, a group saved and restored, a join, a get()
SPAWN = multiprocessing.get_context("spawn")
# PgBouncer's max_prepared_statements: 0, psycopg's statements break (26000/42P05);
# > 0 (PgBouncer 1.21+), PgBouncer keeps protocol-level prepared statements itself.
PREPARED_SETTINGS = [0, 200]


@contextmanager
def server_role(pg_db):
    """A login role of the test's own, free to use the test's schema."""
    role = f"rb_pgb_{uuid.uuid4().hex[:10]}"
    pg_db.query(f'CREATE ROLE "{role}" LOGIN')
    pg_db.query(f'GRANT USAGE, CREATE ON SCHEMA "{pg_db.schema}" TO "{role}"')
    try:
        yield role
    finally:
        pg_db.query(f'DROP OWNED BY "{role}"')  # the tables it made, its grants
        pg_db.query(f'DROP ROLE "{role}"')


class Sampler(threading.Thread):
    """Every 10 ms: the server connections of ``role`` (the server's view)
    and PgBouncer's clients of the test's database (its admin console)."""

    def __init__(self, role: str, admin_url: str, dbname: str):
        super().__init__(daemon=True)
        self.role, self.admin_url, self.dbname = role, admin_url, dbname
        self.max_servers = self.max_clients = 0
        self.stop = threading.Event()

    def run(self):
        server = raw_connect("postgresql")
        # The admin console speaks only the simple query protocol: never prepare.
        admin = psycopg.connect(self.admin_url, autocommit=True, prepare_threshold=None)
        try:
            while not self.stop.wait(0.01):
                (servers,), = server.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self.role,)).fetchall()
                self.max_servers = max(self.max_servers, servers)
                cursor = admin.cursor()
                cursor.execute("SHOW POOLS")
                names = [d.name for d in cursor.description]
                for row in cursor.fetchall():
                    pool = dict(zip(names, row, strict=True))
                    if pool["database"] == self.dbname:
                        self.max_clients = max(self.max_clients, pool["cl_active"] + pool["cl_waiting"])
        finally:
            server.close()
            admin.close()


# Chord bodies sent in this process: {chord's group id: the args it was sent with}.
FIRED: dict[str, tuple] = {}


def _app(url: str, conf: dict):
    from celery import Celery, Task

    app = Celery("pgbouncer-scale", set_as_current=False)
    app.conf.update(result_backend="rawdb+" + url, **conf)

    class Recorded(Task):
        """Sending the body records it (no broker; an eager body would set
        Celery's process-wide "join will block" flag under the other threads' get())."""

        def apply_async(self, args=None, kwargs=None, task_id=None, **options):
            FIRED.setdefault(options["group_id_of_chord"], args)

    @app.task(name="scale.tsum", base=Recorded, shared=False)
    def tsum(values):
        return sum(values)

    return app


def _thread(app, prefix: str) -> tuple[list[str], object]:
    """One thread's work: the ids it stored (each checked SUCCESS), and its
    pool's prepare_threshold at the end."""
    from celery import states
    from celery.app.task import Context
    from celery.result import AsyncResult, GroupResult

    backend = app.backend
    stored: list[str] = []
    for r in range(ROUNDS):
        ids = [f"{prefix}-{r}-{j}" for j in range(3)]
        for j, task_id in enumerate(ids):
            backend.store_result(task_id, {"r": r, "j": j}, states.SUCCESS)
        stored += ids
        meta = backend.get_task_meta(ids[0], cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, {"r": r, "j": 0}), meta
        group_id = f"{prefix}-g{r}"
        group = GroupResult(group_id, [AsyncResult(i, app=app) for i in ids], app=app)
        backend.save_group(group_id, group)
        restored = backend.restore_group(group_id, cache=False)
        assert [child.id for child in restored.results] == ids, restored
        fresh = GroupResult(group_id, [AsyncResult(i, app=app) for i in ids], app=app)
        assert fresh.join_native(timeout=30) == [{"r": r, "j": j} for j in range(3)]  # get_many
        assert AsyncResult(ids[2], app=app).get(timeout=30) == {"r": r, "j": 2}  # wait_for
        # A result stored while its waiter waits (with database_notify: the
        # listener gave up, the poll finds it).
        later = f"{prefix}-later-{r}"
        timer = threading.Timer(0.02, backend.store_result, (later, r, states.SUCCESS))
        timer.start()
        assert AsyncResult(later, app=app).get(timeout=30) == r
        timer.join()
        stored.append(later)
    # A chord of 3, its parts reported as a worker does; the last fires the body.
    group_id = f"{prefix}-chord"
    parts = [f"{prefix}-part-{i}" for i in range(3)]
    body = app.signature("scale.tsum", options={"group_id_of_chord": group_id})
    backend.apply_chord((group_id, [AsyncResult(p, app=app) for p in parts]), body)
    for i, part_id in enumerate(parts):
        backend.mark_as_done(part_id, i * 10, request=Context(id=part_id, group=group_id, chord=dict(body)))
    assert FIRED.get(group_id) == ([0, 10, 20],), FIRED.get(group_id)
    stored += parts
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    return stored, engine.params.get("prepare_threshold", "default")


def _process(url: str, conf: dict, name: str, ready, start, report) -> None:
    """One worker-like process of THREADS threads. As in Celery's threads
    pool, each thread has a backend of its own (``app.backend`` is
    thread-local), so a pool of its own; the listener is the process's."""
    from celery import states

    errors: list[str] = []
    stored: list[str] = []
    thresholds: list = []
    try:
        app = _app(url, conf)
        backend = app.backend
        backend.store_result(f"{name}-warm", 0, states.SUCCESS)  # tables, pool warm
        ready.put(name)
        start.wait(120)

        def run(k: int) -> None:
            try:
                ids, threshold = _thread(app, f"{name}-{k}")
                stored.extend(ids)
                thresholds.append(threshold)
            except BaseException:  # reported to the test
                errors.append(traceback.format_exc())

        threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        # Every stored id read back SUCCESS, in one native join.
        found = dict(backend.get_many(stored, timeout=30))
        not_success = sorted(i for i in stored if found.get(i, {}).get("status") != states.SUCCESS)
        listener = next(iter(_listeners()), None)
        if listener is not None:
            # A quick process may be done before its probe's verdict (3 s).
            wait_until(lambda: listener.unusable or listener.active, "the listener's verdict",
                       timeout=listen.PROBE_TIMEOUT + 10)
        report.put({
            "name": name, "errors": errors, "stored": len(stored), "not_success": not_success[:5],
            "prepare_thresholds": thresholds,
            "listener_unusable": listener.unusable if listener else None,
        })
    except BaseException:
        report.put({"name": name, "errors": errors + [traceback.format_exc()], "stored": len(stored)})


def _listeners():
    return list(listen._LISTENERS.values())


def run_fleet(url: str, conf: dict) -> list[dict]:
    ready, start, report = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    processes = [SPAWN.Process(target=_process, args=(url, conf, f"p{n}", ready, start, report),
                               daemon=True) for n in range(PROCESSES)]
    for process in processes:
        process.start()
    try:
        # All start together once all are up (spawned interpreters take a
        # second or more each on 2 cores), so that the 64 threads overlap.
        for _ in processes:
            ready.get(timeout=120)
        start.set()
        reports = [report.get(timeout=300) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return reports


# A pool per process, shared by its threads, of at most 2 + 2 connections,
# that never prepares (as docs/scaling.md advises behind PgBouncer): no
# connection is replaced on 26000/42P05, so none overlaps its replacement.
SHARED_POOL = {"result_backend_thread_safe": True,
               "database_engine_options": {"pool_size": 2, "max_overflow": 2, "prepare_threshold": None}}
SETTINGS = {"poll": {}, "database_notify": {"database_notify": True}, "shared_pool": SHARED_POOL}


@pytest.mark.parametrize("max_prepared_statements", PREPARED_SETTINGS)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_64_clients_on_10_server_connections(pg_db, tmp_path, figures, setting, max_prepared_statements):
    """0 errors, every result read back SUCCESS, at most 10 server connections
    (the server's count), and PgBouncer's 26000/42P05 ridden out by the pools
    turning preparation off; with database_notify, every listener gave up on
    notifications, waiters polled, and no LISTEN was left on the table's channel;
    with the backend shared by a process's threads, its pool bounds its clients."""
    if max_prepared_statements and pgbouncer_version() < (1, 21):
        version = ".".join(map(str, pgbouncer_version()))
        pytest.skip(f"PgBouncer {version} has no max_prepared_statements (1.21+)")
    conf = SETTINGS[setting]
    notify = conf.get("database_notify", False)
    with server_role(pg_db) as role, running_pgbouncer(
        tmp_path, server_user=role, default_pool_size=SERVER_CONNECTIONS,
        max_db_connections=SERVER_CONNECTIONS, max_client_conn=300, admin_users="postgres",
        **({"max_prepared_statements": max_prepared_statements} if max_prepared_statements else {}),
    ) as bouncer:
        dbname = bouncer.url.rsplit("/", 1)[1]
        # The tables, made by the role through PgBouncer.
        dataclasses.replace(pg_db, url=bouncer.url).backend().store_result("parent-warm", 0, "SUCCESS")
        sampler = Sampler(role, bouncer.url.rsplit("/", 1)[0] + "/pgbouncer", dbname)
        sampler.start()
        try:
            reports = run_fleet(bouncer.url, pg_db.conf(**conf))
        finally:
            sampler.stop.set()
            sampler.join(10)
        if notify:
            channel = listen_channel(pg_db.backend(database_notify=True))
            heard = heard_on_each_server_connection(bouncer.url, channel, SERVER_CONNECTIONS)
        table = pg_db.qualified(pg_db.task_table)
        (rows, distinct), = pg_db.query(
            f"SELECT count(*), count(DISTINCT task_id) FROM {table} WHERE status = 'SUCCESS' "
            "AND task_id NOT LIKE %s", ("%-warm",))

    errors = [error for r in reports for error in r["errors"]]
    assert errors == [], f"{len(errors)} errors, the first: {errors[0]}"
    assert [r["not_success"] for r in reports] == [[]] * PROCESSES
    stored = sum(r["stored"] for r in reports)
    assert stored == PROCESSES * THREADS * (ROUNDS * 4 + 3)
    assert (rows, distinct) == (stored, stored)

    assert 1 <= sampler.max_servers <= SERVER_CONNECTIONS
    assert sampler.max_clients > SERVER_CONNECTIONS  # clients did queue for them
    if conf.get("result_backend_thread_safe"):
        # One backend and pool per process: its size bounds the process's
        # clients (threads wait for a connection); + the test's own one.
        per_process = SHARED_POOL["database_engine_options"]["pool_size"] + \
            SHARED_POOL["database_engine_options"]["max_overflow"]
        assert sampler.max_clients <= PROCESSES * per_process + 1
    if max_prepared_statements:
        # PgBouncer keeps the prepared statements: nothing to learn.
        assert {t for r in reports for t in r["prepare_thresholds"]} == {"default"}
    else:
        # Every pool met 26000/42P05 and turned preparation off (or never prepared).
        assert [t for r in reports for t in r["prepare_thresholds"]] == [None] * PROCESSES * THREADS
    if notify:
        assert all("did not arrive" in (r["listener_unusable"] or "") for r in reports), reports
        assert heard == []
    figures(f"{PROCESSES}x{THREADS} threads, {stored} results, 0 errors; at most "
            f"{sampler.max_servers} server connections (server's count), {sampler.max_clients} "
            f"clients at once (PgBouncer's)")
