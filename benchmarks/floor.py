"""The floor: the one SQL statement an operation needs, on the bare driver.

A `Floor` holds one kept-open connection in autocommit mode (psycopg 3
``autocommit=True``, PyMySQL ``autocommit=True``, sqlite3
``isolation_level=None``) and issues each operation as a single statement on
the tables Celery's backend created, with the same encoded bytes. It is the
lower bound a result backend written in Python can approach; the benchmark
also uses it to fill tables fast (expired rows for ``cleanup()``).

Dialect knowledge of the benchmark lives here, in the ``SQL`` table.
"""
from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

# Names of the tables, and on a server of the schema (PostgreSQL) or database
# (MySQL/MariaDB) that holds them and their sequences, that the benchmark owns
# and drops at the end. The schema's name can be changed (``--schema``,
# $RAWBACKEND_BENCH_SCHEMA) so that runs on one server keep apart: on MySQL
# it is a database of the server's, shared by every user of it.
TASK_TABLE = "bench_taskmeta"
GROUP_TABLE = "bench_tasksetmeta"
SCHEMA_ENV = "RAWBACKEND_BENCH_SCHEMA"
DEFAULT_SCHEMA = "rawbackend_bench"
SCHEMA = DEFAULT_SCHEMA
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def set_schema(name: str) -> None:
    """Use ``name`` for the benchmark's schema (PostgreSQL) or database (MySQL),
    here and in the processes this one starts (they read the environment)."""
    global SCHEMA
    if not SCHEMA_NAME.fullmatch(name):
        raise ValueError(f"benchmark schema name {name!r} is not 1 to 63 lower-case letters, "
                         "digits or underscores starting with a letter or underscore")
    SCHEMA = name
    os.environ[SCHEMA_ENV] = name


if os.environ.get(SCHEMA_ENV):
    set_schema(os.environ[SCHEMA_ENV])

# Slots: {task} and {group} are qualified table names; {id_col} and
# {task_id}/{group_id} give the primary key where Celery's tables take it
# from a sequence (PostgreSQL; MariaDB, where SQLAlchemy creates sequences
# too), and are empty where the column fills itself (AUTO_INCREMENT on MySQL,
# SQLite). Parameters use the driver's own style.
TASK_ROW = "SELECT task_id, status, result, date_done, traceback, children FROM {task}"

SQL: dict[str, dict[str, str]] = {
    "postgresql": {
        "store": (
            "INSERT INTO {task} ({id_col}task_id, status, result, date_done, traceback, children)"
            " VALUES ({task_id}%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status,"
            " result = EXCLUDED.result, date_done = EXCLUDED.date_done,"
            " traceback = EXCLUDED.traceback, children = EXCLUDED.children"
            " WHERE {task}.status <> 'SUCCESS'"
        ),
        "get": TASK_ROW + " WHERE task_id = %s",
        "exists": "SELECT 1 FROM {task} WHERE task_id = %s",
        "get_many": TASK_ROW + " WHERE task_id IN ({ids})",
        "save_group": (
            "INSERT INTO {group} ({id_col}taskset_id, result, date_done)"
            " VALUES ({group_id}%s, %s, %s)"
        ),
        "restore_group": "SELECT taskset_id, result, date_done FROM {group} WHERE taskset_id = %s",
        "delete_expired": "DELETE FROM {task} WHERE date_done < %s",
        # One statement fills the table server-side: far faster than sending rows.
        "fill_expired": (
            "INSERT INTO {task} ({id_col}task_id, status, result, date_done)"
            " SELECT {task_id}%s || g, 'SUCCESS', %s, %s"
            " FROM generate_series(1, %s) AS g"
        ),
    },
    "mysql": {
        # why: assignments run left to right, so status is written last and
        # every other column still sees the old status in its IF().
        "store": (
            "INSERT INTO {task} ({id_col}task_id, status, result, date_done, traceback, children)"
            " VALUES ({task_id}%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE"
            " result = IF(status = 'SUCCESS', result, VALUES(result)),"
            " date_done = IF(status = 'SUCCESS', date_done, VALUES(date_done)),"
            " traceback = IF(status = 'SUCCESS', traceback, VALUES(traceback)),"
            " children = IF(status = 'SUCCESS', children, VALUES(children)),"
            " status = IF(status = 'SUCCESS', status, VALUES(status))"
        ),
        "get": TASK_ROW + " WHERE task_id = %s",
        "exists": "SELECT 1 FROM {task} WHERE task_id = %s",
        "get_many": TASK_ROW + " WHERE task_id IN ({ids})",
        "save_group": (
            "INSERT INTO {group} ({id_col}taskset_id, result, date_done)"
            " VALUES ({group_id}%s, %s, %s)"
        ),
        "restore_group": "SELECT taskset_id, result, date_done FROM {group} WHERE taskset_id = %s",
        "delete_expired": "DELETE FROM {task} WHERE date_done < %s",
        # PyMySQL's executemany batches this into multi-row INSERTs only when
        # every value is a placeholder: the ids are given, negative so that
        # they never meet the sequence's or AUTO_INCREMENT's.
        "fill_expired": (
            "INSERT INTO {task} (id, task_id, status, result, date_done)"
            " VALUES (%s, %s, %s, %s, %s)"
        ),
    },
    "sqlite": {
        "store": (
            "INSERT INTO {task} (task_id, status, result, date_done, traceback, children)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id) DO UPDATE SET status = excluded.status,"
            " result = excluded.result, date_done = excluded.date_done,"
            " traceback = excluded.traceback, children = excluded.children"
            " WHERE status <> 'SUCCESS'"
        ),
        "get": TASK_ROW + " WHERE task_id = ?",
        "exists": "SELECT 1 FROM {task} WHERE task_id = ?",
        "get_many": TASK_ROW + " WHERE task_id IN ({ids})",
        "save_group": "INSERT INTO {group} (taskset_id, result, date_done) VALUES (?, ?, ?)",
        "restore_group": "SELECT taskset_id, result, date_done FROM {group} WHERE taskset_id = ?",
        "delete_expired": "DELETE FROM {task} WHERE date_done < ?",
        "fill_expired": (
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?)"
            " INSERT INTO {task} (task_id, status, result, date_done)"
            " SELECT ? || n, 'SUCCESS', ?, ? FROM g"
        ),
    },
}

PLACEHOLDER = {"postgresql": "%s", "mysql": "%s", "sqlite": "?"}


@dataclass(frozen=True)
class Location:
    """A plain database URL, split into what each driver and backend needs."""

    url: str
    dialect: str  # postgresql | mysql | sqlite
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str = ""
    database: str = ""
    query: tuple[tuple[str, str], ...] = ()
    path: str = ""  # SQLite file

    @classmethod
    def parse(cls, url: str) -> Location:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+", 1)[0]
        dialect = {"postgresql": "postgresql", "postgres": "postgresql",
                   "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}.get(scheme)
        if dialect is None:
            raise ValueError(
                f"unsupported URL scheme {parts.scheme!r} in {mask(url)}: use postgresql://, "
                "mysql:// (or mariadb://) or sqlite:///path")
        if dialect == "sqlite":
            path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
            if not path or path == ":memory:":
                raise ValueError("the benchmark needs a SQLite file: sqlite:///path/to/file.db")
            return cls(url=url, dialect=dialect, path=path)
        return cls(
            url=url, dialect=dialect, host=parts.hostname or "127.0.0.1", port=parts.port,
            user=unquote(parts.username or ""), password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"), query=tuple(parse_qsl(parts.query)))

    @property
    def plain(self) -> str:
        """The URL without any SQLAlchemy driver suffix."""
        scheme, rest = self.url.split("://", 1)
        return f"{scheme.split('+', 1)[0]}://{rest}"

    @property
    def rawdb_url(self) -> str:
        return "rawdb+" + self.plain

    @property
    def celery_url(self) -> str:
        """Celery's ``db+`` URL, with the SQLAlchemy drivers the floor also uses."""
        rest = self.plain.split("://", 1)[1]
        driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "sqlite": "sqlite"}
        return f"db+{driver[self.dialect]}://{rest}"

    @property
    def masked(self) -> str:
        return mask(self.plain)


def mask(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def table_conf(dialect: str) -> dict[str, Any]:
    """Celery conf that points both backends at the benchmark's own tables."""
    conf: dict[str, Any] = {"database_table_names": {"task": TASK_TABLE, "group": GROUP_TABLE}}
    if dialect != "sqlite":
        # A schema of our own keeps the sequences (task_id_sequence, ...) and the
        # index names apart from any Celery tables already in the database.
        conf["database_table_schemas"] = {"task": SCHEMA, "group": SCHEMA}
    return conf


def connect(loc: Location) -> Any:
    """A new autocommit connection with the bare driver."""
    if loc.dialect == "postgresql":
        import psycopg

        return psycopg.connect(
            host=loc.host, port=loc.port or 5432, user=loc.user or None,
            password=loc.password or None, dbname=loc.database or None,
            autocommit=True, **dict(loc.query))
    if loc.dialect == "mysql":
        import pymysql

        options: dict[str, Any] = {"charset": "utf8mb4", **dict(loc.query)}
        return pymysql.connect(
            host=loc.host, port=loc.port or 3306, user=loc.user or "root",
            password=loc.password, database=loc.database or None,
            autocommit=True, **options)
    return sqlite3.connect(loc.path, isolation_level=None, timeout=30)


class Floor:
    """One kept-open bare-driver connection issuing one statement per operation."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.dialect = loc.dialect
        self.conn = connect(loc)
        self.cur = self.conn.cursor()
        self.sql: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self._fill_id = 0

    def bind(self, like: Floor | None = None) -> None:
        """Prepare the statements, once Celery's backend has created the tables."""
        if like is not None:  # another connection to the same tables
            self.names, self.sql = like.names, like.sql
            return
        q = '"' if self.dialect != "mysql" else "`"
        prefix = "" if self.dialect == "sqlite" else f"{q}{SCHEMA}{q}."
        names = {"task": f"{prefix}{q}{TASK_TABLE}{q}", "group": f"{prefix}{q}{GROUP_TABLE}{q}",
                 "id_col": "", "task_id": "", "group_id": ""}
        if self.dialect == "postgresql":
            names.update(id_col="id, ", task_id=f"nextval('{SCHEMA}.task_id_sequence'), ",
                         group_id=f"nextval('{SCHEMA}.taskset_id_sequence'), ")
        elif self.dialect == "mysql" and self._has_sequence("task_id_sequence"):
            names.update(id_col="id, ", task_id=f"NEXT VALUE FOR {prefix}`task_id_sequence`, ",
                         group_id=f"NEXT VALUE FOR {prefix}`taskset_id_sequence`, ")
        self.names = names
        # {ids} stays a slot: get_many fills it with one placeholder per id.
        self.sql = {name: text.format(ids="{ids}", **names) for name, text in SQL[self.dialect].items()}

    def _has_sequence(self, name: str) -> bool:
        """MariaDB: did SQLAlchemy create a sequence rather than AUTO_INCREMENT?"""
        self.cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s"
                         " AND table_name = %s AND table_type = 'SEQUENCE'", (SCHEMA, name))
        return bool(self.cur.fetchone()[0])

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass

    # -- values as Celery's backend writes them ---------------------------
    def db_datetime(self, dt: datetime) -> Any:
        """A UTC datetime as Celery's backend stores it in ``date_done``."""
        naive = dt.astimezone(timezone.utc).replace(tzinfo=None)
        if self.dialect == "sqlite":
            return naive.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite format
        return naive

    def now(self) -> Any:
        return self.db_datetime(datetime.now(timezone.utc))

    # -- the operations ---------------------------------------------------
    def store(self, task_id: str, status: str, result: bytes) -> None:
        self.cur.execute(self.sql["store"], (task_id, status, result, self.now(), None, None))

    def get(self, task_id: str) -> tuple | None:
        self.cur.execute(self.sql["get"], (task_id,))
        return self.cur.fetchone()

    def exists(self, task_id: str) -> bool:
        self.cur.execute(self.sql["exists"], (task_id,))
        return self.cur.fetchone() is not None

    def get_many(self, task_ids: list[str]) -> list[tuple]:
        marks = ", ".join([PLACEHOLDER[self.dialect]] * len(task_ids))
        self.cur.execute(self.sql["get_many"].format(ids=marks), task_ids)
        return self.cur.fetchall()

    def save_group(self, group_id: str, result: bytes) -> None:
        self.cur.execute(self.sql["save_group"], (group_id, result, self.now()))

    def restore_group(self, group_id: str) -> tuple | None:
        self.cur.execute(self.sql["restore_group"], (group_id,))
        return self.cur.fetchone()

    def delete_expired(self, before: datetime) -> int:
        self.cur.execute(self.sql["delete_expired"], (self.db_datetime(before),))
        return self.cur.rowcount

    # -- setting up ---------------------------------------------------------
    def fill_expired(self, count: int, prefix: str, result: bytes, days_ago: int = 30) -> None:
        """Insert ``count`` SUCCESS rows whose ``date_done`` is long past."""
        done = self.db_datetime(datetime.now(timezone.utc) - timedelta(days=days_ago))
        sql = self.sql["fill_expired"]
        if self.dialect == "postgresql":
            self.cur.execute(sql, (prefix, result, done, count))
        elif self.dialect == "sqlite":
            self.cur.execute(sql, (count, prefix, result, done))
        else:
            batch = 5000
            for start in range(0, count, batch):
                rows = []
                for i in range(start, min(count, start + batch)):
                    self._fill_id -= 1
                    rows.append((self._fill_id, f"{prefix}{i}", "SUCCESS", result, done))
                self.cur.executemany(sql, rows)

    def count_rows(self) -> int:
        self.cur.execute(f"SELECT COUNT(*) FROM {self.names['task']}")
        return int(self.cur.fetchone()[0])

    def drop_tables(self) -> None:
        """Drop everything the benchmark created (and any leftover of an earlier run)."""
        if self.dialect == "postgresql":
            self.cur.execute("SET lock_timeout = '20s'")  # a connection left open must not hang us
            self.cur.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        elif self.dialect == "mysql":
            self.cur.execute("SET SESSION lock_wait_timeout = 20")
            self.cur.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")
        else:
            for name in (TASK_TABLE, GROUP_TABLE):
                self.cur.execute(f'DROP TABLE IF EXISTS "{name}"')

    def create_schema(self) -> None:
        if self.dialect == "postgresql":
            self.cur.execute(f'CREATE SCHEMA "{SCHEMA}"')
        elif self.dialect == "mysql":
            self.cur.execute(f"CREATE DATABASE `{SCHEMA}`")

    def server_version(self) -> str:
        if self.dialect == "postgresql":
            self.cur.execute("SHOW server_version")
            return "PostgreSQL " + self.cur.fetchone()[0]
        if self.dialect == "mysql":
            self.cur.execute("SELECT VERSION()")
            return "MySQL/MariaDB " + self.cur.fetchone()[0]
        return "SQLite " + sqlite3.sqlite_version

    def pragmas(self) -> dict[str, str]:
        """The SQLite settings in force, worth knowing when reading the numbers."""
        if self.dialect != "sqlite":
            return {}
        return {name: str(self.conn.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("journal_mode", "synchronous")}
