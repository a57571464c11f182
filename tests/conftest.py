"""Fixtures shared by every test: databases, apps on them, isolation.

Server URLs come from RAWBACKEND_TEST_POSTGRESQL_URL / RAWBACKEND_TEST_MYSQL_URL.
A server that does not answer skips its tests, unless RAWBACKEND_REQUIRE_SERVERS=1
(CI), where it fails them.
"""
from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from celery import Celery

POSTGRESQL_URL = os.environ.get(
    "RAWBACKEND_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("RAWBACKEND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVERS = os.environ.get("RAWBACKEND_REQUIRE_SERVERS") == "1"
DIALECTS = ("sqlite", "postgresql", "mysql")

# Fixtures that more than one test file uses, from the modules that define them:
# restartable (servers), worker (test_e2e_worker), pgbouncer (test_pgbouncer).
pytest_plugins = ["servers", "test_e2e_worker", "test_pgbouncer"]

_reachable: dict[str, str | None] = {}


def wait_until(predicate, what: str, timeout: float = 15.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def run_command(*args: str, cwd=None, env: dict | None = None, timeout: float = 120):
    """The installed ``rawbackend`` console script, run as a user would (a
    subprocess): its CompletedProcess, output as text."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("rawbackend")
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def server_error(dialect: str) -> str | None:
    """Why the server of ``dialect`` can't be used, or None when it answers."""
    if dialect not in _reachable:
        try:
            raw_connect(dialect).close()
            _reachable[dialect] = None
        except Exception as exc:  # any failure to connect
            _reachable[dialect] = f"{dialect} server not reachable: {exc}"
    return _reachable[dialect]


def require_server(dialect: str) -> None:
    if dialect == "sqlite":
        return
    problem = server_error(dialect)
    if problem:
        if REQUIRE_SERVERS:
            pytest.fail(f"{problem} (RAWBACKEND_REQUIRE_SERVERS=1)")
        pytest.skip(problem)


def server_url(dialect: str) -> str:
    return {"postgresql": POSTGRESQL_URL, "mysql": MYSQL_URL}[dialect]


def raw_connect(dialect: str, url: str | None = None):
    """A bare autocommit driver connection to the test server (not through rawbackend)."""
    from rawbackend.url import parse_url

    d, params = parse_url(url or server_url(dialect))
    return d.connect(params)


@dataclass
class Database:
    """One test's database: its URL and table names of its own, dropped after."""

    dialect: str
    url: str  # without the rawdb+/db+ prefix
    task_table: str
    group_table: str
    schema: str | None = None  # PostgreSQL: a schema of the test's own
    apps: list = field(default_factory=list)
    chord_table: str = "rawbackend_chordmeta"  # rawbackend's own, next to the group table
    watermark_table: str = "rawbackend_watermarks"  # rawbackend's own, next to the task table

    def conf(self, **extra) -> dict:
        conf = {
            "database_table_names": {
                "task": self.task_table, "group": self.group_table, "chord": self.chord_table,
                "watermark": self.watermark_table,
            },
            "result_serializer": "json",
            "accept_content": ["json"],
        }
        if self.schema:
            conf["database_table_schemas"] = {"task": self.schema, "group": self.schema}
        conf.update(extra)
        return conf

    def app(self, prefix: str = "rawdb+", **conf) -> Celery:
        """A Celery app whose result backend is this database (``prefix``
        ``db+`` gives Celery's own SQLAlchemy backend on the same tables)."""
        url = self.url
        if prefix == "db+":
            url = url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
                "mysql://", "mysql+pymysql://", 1
            )
        app = Celery(f"test-{uuid.uuid4().hex[:6]}", set_as_current=False)
        app.conf.update(result_backend=prefix + url, **self.conf(**conf))
        self.apps.append(app)
        return app

    def backend(self, **conf):
        return self.app(**conf).backend

    def qualified(self, table: str) -> str:
        return f"{self.schema}.{table}" if self.schema else table

    def query(self, sql: str, params=None) -> list[tuple]:
        """Run SQL with a bare driver connection (to look behind the backend)."""
        if self.dialect == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.url[len("sqlite:///"):], isolation_level=None)
        else:
            conn = raw_connect(self.dialect, self.url)
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params is not None else cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


@contextmanager
def mysql_account(db: Database):
    """(user, password): a MariaDB user with a password and every right on the
    test's database (root has no password here), dropped after."""
    user, password = f"rb_{uuid.uuid4().hex[:8]}", "Pw-" + uuid.uuid4().hex
    database = db.url.rsplit("/", 1)[1]
    for host in ("%", "localhost"):
        db.query(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'")
        db.query(f"GRANT ALL ON `{database}`.* TO '{user}'@'{host}'")
    try:
        yield user, password
    finally:
        db.query(f"DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost'")


def _drop(db: Database) -> None:
    from rawbackend import listen

    listen.stop_all()  # listeners' connections close: none pile up over a run
    for app in db.apps:
        backend = getattr(app, "_backend", None)
        manager = getattr(backend, "session_manager", None)
        if manager is not None and hasattr(manager, "_engines"):
            for url in list(manager._engines):
                manager.invalidate(url)
    if db.dialect == "postgresql":
        db.query(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE')
    elif db.dialect == "mysql":
        # rawbackend_chordmeta: the chord table of tests that name only Celery's tables.
        db.query(f"DROP TABLE IF EXISTS `{db.task_table}`, `{db.group_table}`, `{db.chord_table}`, "
                 f"`{db.watermark_table}`, rawbackend_chordmeta, rawbackend_watermarks")
        # MariaDB: Celery's sequences have fixed names in the database itself.
        db.query("DROP SEQUENCE IF EXISTS task_id_sequence, taskset_id_sequence")


def make_database(dialect: str, tmp_path) -> Database:
    require_server(dialect)
    suffix = uuid.uuid4().hex[:10]
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
        return Database(dialect, url, "celery_taskmeta", "celery_tasksetmeta")
    db = Database(dialect, server_url(dialect), f"t_{suffix}", f"g_{suffix}", chord_table=f"c_{suffix}",
                  watermark_table=f"w_{suffix}")
    if dialect == "postgresql":
        db.schema = f"s_{suffix}"
        db.query(f'CREATE SCHEMA "{db.schema}"')
    return db


@pytest.fixture(params=DIALECTS)
def db(request, tmp_path) -> Database:
    """The contract fixture: the same test body on sqlite, postgresql and mysql."""
    database = make_database(request.param, tmp_path)
    yield database
    _drop(database)


@pytest.fixture
def sqlite_db(tmp_path) -> Database:
    database = make_database("sqlite", tmp_path)
    yield database


@pytest.fixture
def pg_db(tmp_path) -> Database:
    database = make_database("postgresql", tmp_path)
    yield database
    _drop(database)


@pytest.fixture
def mysql_db(tmp_path) -> Database:
    database = make_database("mysql", tmp_path)
    yield database
    _drop(database)


@pytest.fixture(params=("postgresql", "mysql"))
def server_db(request, tmp_path) -> Database:
    """The servers only: faults, statement counts, concurrency on real servers."""
    database = make_database(request.param, tmp_path)
    yield database
    _drop(database)


# -- figures: measurements a test reports, shown at the end of the run -------------

_FIGURES: list[str] = []


@pytest.fixture
def figures(request):
    """``figures(line)`` keeps one measured line for the end-of-run summary
    (shown whatever -s or -q say) and as the test's ``figures`` property."""

    def add(line: str) -> None:
        _FIGURES.append(f"{request.node.nodeid}: {line}")
        request.node.user_properties.append(("figures", line))

    return add


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("rawbackend figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
