"""Behind a real PgBouncer in transaction pooling mode.

Each test starts its own PgBouncer (the Debian package's /usr/sbin/pgbouncer)
on a free loopback port with a config in tmp_path, in front of the test
PostgreSQL server, and stops it in teardown. PgBouncer before 1.21 (and later
ones with ``max_prepared_statements = 0``) hands each transaction to any server
connection, so a statement psycopg prepared on one server connection is missing
on the next (26000) or its name is already taken there (42P05).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from celery import states

from conftest import REQUIRE_SERVERS, require_server, server_url
from rawbackend.url import parse_url

pytestmark = pytest.mark.postgresql

THREADS = 8
STORES_PER_THREAD = 50
LOST_PREPARED = {"26000", "42P05"}  # invalid_sql_statement_name, duplicate_prepared_statement


@dataclasses.dataclass
class Bouncer:
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pgbouncer(tmp_path) -> Bouncer:
    """A PgBouncer of this test's own, transaction pooling, 2 server connections."""
    with running_pgbouncer(tmp_path, default_pool_size=2, max_client_conn=100) as bouncer:
        yield bouncer


@contextmanager
def running_pgbouncer(directory: Path, server_user: str | None = None, **settings) -> Iterator[Bouncer]:
    """A PgBouncer in front of the test server, transaction pooling, with
    ``settings`` in its [pgbouncer] section; its files in ``directory``.
    ``server_user``: the role it logs in to the server as (default: the client's)."""
    require_server("postgresql")
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(exe, os.X_OK):
        problem = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"
        if REQUIRE_SERVERS:
            pytest.fail(f"{problem} (RAWBACKEND_REQUIRE_SERVERS=1)")
        pytest.skip(problem)
    _, server = parse_url(server_url("postgresql"))
    user, dbname = server.get("user", "postgres"), server.get("dbname", "test")
    target = f"host={server.get('host', '127.0.0.1')} port={server.get('port', 5432)} dbname={dbname}"
    if server.get("password"):
        target += f" password={server['password']}"
    if server_user:
        target += f" user={server_user}"
    port = free_port()
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    # PgBouncer 1.21+ can track protocol-level prepared statements; keep
    # the classic behaviour that psycopg's preparation breaks under, unless asked.
    if _version(exe) >= (1, 21):
        settings.setdefault("max_prepared_statements", 0)
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"{dbname} = {target}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        + "".join(f"{key} = {value}\n" for key, value in settings.items())
    )
    # PgBouncer refuses to run as root; -u drops to nobody after reading the
    # config (so the directory may stay private). Logs go to stderr, into a file.
    command = [exe, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(config)]
    log = directory / "pgbouncer.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"postgresql://{user}@127.0.0.1:{port}/{dbname}"
        _wait_ready(process, url, log)
        yield Bouncer(url, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def pgbouncer_version() -> tuple[int, int]:
    """The installed PgBouncer's (major, minor); (0, 0) when there is none."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return _version(exe) if os.access(exe, os.X_OK) else (0, 0)


def _version(exe: str) -> tuple[int, int]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    major, minor = out.split()[1].split(".")[:2]
    return int(major), int(minor)


def _wait_ready(process, url: str, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"pgbouncer did not answer in {timeout:g}s: {log.read_text()}") from exc
            time.sleep(0.05)


def run_threads(count: int, body) -> list[BaseException]:
    """Run ``body(n)`` in ``count`` threads started together; their exceptions."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(n):
        try:
            start.wait(30)
            body(n)
        except BaseException as exc:  # collected for the test's assertions
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a thread did not finish within 120 s"
    return errors


def test_bare_psycopg_loses_prepared_statements(pgbouncer):
    """The set-up shows the fault: bare psycopg connections with the default
    prepare_threshold fail with 26000/42P05 through this PgBouncer."""
    failures: list[psycopg.Error] = []
    lock = threading.Lock()
    repetitions = 20
    while True:

        def body(n, repetitions=repetitions):
            with psycopg.connect(pgbouncer.url, autocommit=True) as conn:
                assert conn.prepare_threshold == 5  # psycopg's default
                for i in range(repetitions):
                    try:
                        assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
                    except psycopg.Error as exc:
                        with lock:
                            failures.append(exc)

        assert run_threads(THREADS, body) == []
        if failures or repetitions >= 320:
            break
        repetitions *= 2  # bounded: 20, 40, ... 320

    assert failures, f"no lost prepared statement in {THREADS} threads x {repetitions} queries"
    assert {exc.sqlstate for exc in failures} <= LOST_PREPARED, failures[:3]


def through(pg_db, bouncer: Bouncer, query: str = ""):
    """The test's database, reached through PgBouncer (same tables, same apps list)."""
    return dataclasses.replace(pg_db, url=bouncer.url + query)


def store_from_threads(backend, prefix: str, threads: int, per_thread: int) -> list[BaseException]:
    def body(n):
        for i in range(per_thread):
            backend.store_result(f"{prefix}-{n}-{i}", {"n": n, "i": i}, states.SUCCESS)

    return run_threads(threads, body)


def assert_all_stored(pg_db, backend, prefix: str, threads: int, per_thread: int) -> None:
    table = pg_db.qualified(pg_db.task_table)
    total, distinct = pg_db.query(
        f"SELECT count(*), count(DISTINCT task_id) FROM {table} "
        f"WHERE task_id LIKE %s AND status = 'SUCCESS'", (f"{prefix}-%",)
    )[0]
    assert (total, distinct) == (threads * per_thread,) * 2
    meta = backend.get_task_meta(f"{prefix}-{threads - 1}-{per_thread - 1}", cache=False)
    assert meta["result"] == {"n": threads - 1, "i": per_thread - 1}


def test_rawbackend_with_default_settings(pg_db, pgbouncer):
    """8 threads x 50 stores on one backend whose pool is smaller than the
    threads, default settings: zero errors, every row there, and the pool
    learnt to stop preparing statements."""
    backend = through(pg_db, pgbouncer).backend(database_engine_options={
        "pool_pre_ping": True, "pool_recycle": 3600, "pool_size": 3, "max_overflow": 0,
    })
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    assert "prepare_threshold" not in engine.params  # psycopg's default, 5

    errors = store_from_threads(backend, "default", THREADS, STORES_PER_THREAD)

    assert errors == []
    assert_all_stored(pg_db, backend, "default", THREADS, STORES_PER_THREAD)
    # It met PgBouncer's fault (26000/42P05) and turned preparation off.
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    assert engine.params["prepare_threshold"] is None


def prepare_threshold_of(backend):
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    pooled = engine.getconn()
    try:
        return pooled.conn.prepare_threshold
    finally:
        engine.putconn(pooled)


@pytest.mark.parametrize("how", ["url", "engine_options"])
def test_prepare_threshold_none_is_accepted(pg_db, pgbouncer, how):
    """``?prepare_threshold=none`` in the URL or ``engine_options={'prepare_threshold':
    None}`` reach psycopg: connections never prepare, and stores through
    PgBouncer never fail."""
    if how == "url":
        backend = through(pg_db, pgbouncer, "?prepare_threshold=none").backend()
    else:
        backend = through(pg_db, pgbouncer).backend(
            database_engine_options={"pool_pre_ping": True, "prepare_threshold": None}
        )
    assert prepare_threshold_of(backend) is None

    errors = store_from_threads(backend, how, 4, 25)

    assert errors == []
    assert_all_stored(pg_db, backend, how, 4, 25)
    assert prepare_threshold_of(backend) is None
