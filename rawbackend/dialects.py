"""What differs between databases, as data: one ``Dialect`` row each.

Adding a database is adding a row here and a folder under ``sql/``. Drivers
are imported only when a connection is opened, so a SQLite user never loads
psycopg or PyMySQL.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import errcodes
from .errors import ErrorRules

__all__ = ("DIALECTS", "MYSQL", "POSTGRESQL", "SQLITE", "Batching", "Dialect")


def _same(value):
    return value


def naive_utc(value: datetime | None) -> datetime | None:
    """``value`` as naive UTC, what every dialect stores in date_done.

    Celery's ``app.now()`` is aware in the app's time zone: drivers write its
    wall-clock time (PyMySQL, our SQLite format) or let the server shift it
    to the session's time zone (psycopg sends timestamptz). A naive value is
    taken as UTC already, as ``app.now()`` with enable_utc gives.
    """
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _maybe_int(value: Any) -> int | None:
    """``prepare_threshold=none`` turns psycopg's server-side preparation off."""
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return int(value)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Batching:
    """How cleanup deletes: ``rows`` a batch at most; with ``seconds``,
    batches sized to hold their locks about that long; after a batch that
    took up to ``t`` seconds, a pause of ``p`` seconds with no lock held, for
    the first ``(t, p)`` of ``pauses`` that fits (none: no pause)."""

    rows: int
    seconds: float | None = None
    pauses: tuple[tuple[float, float], ...] = ()
    first: int | None = None  # the first batch's size, before any was timed (None: rows)
    least: int = 100  # the smallest batch an adaptive size goes down to

    def pause_after(self, held: float) -> float:
        return next((pause for upto, pause in self.pauses if held <= upto), 0.0)


@dataclass(frozen=True)
class Dialect:
    name: str  # also the folder under sql/
    driver: str  # the DB-API module
    paramstyle: str  # the driver's own: "pyformat" (%(name)s) or "named" (:name)
    schemes: tuple[str, ...]  # URL schemes that mean this dialect
    quote: str  # identifier quote character
    max_identifier: int  # longest identifier the server accepts
    database_param: str  # the connect keyword that names the database (or file)
    has_host: bool  # a server URL (user:password@host:port/db), or a file path
    default_port: int | None  # the port when the URL names none
    connect: Callable[[dict], Any]  # open one connection from its parameters
    errors: ErrorRules
    param_types: dict[str, Callable[[str], Any]] = field(default_factory=dict)
    connect_defaults: dict[str, Any] = field(default_factory=dict)
    # The connect parameters of a URL that names several hosts, in its order
    # ((host, port) pairs), or None: the dialect takes one host only.
    several_hosts: Callable[[list[tuple[str, int]]], dict[str, Any]] | None = None
    # Codes that mean server-side prepared statements got lost (PgBouncer).
    unprepare_codes: frozenset = frozenset()
    # How a datetime is written (always as naive UTC first) and read back, as
    # the driver or SQLAlchemy does.
    encode_datetime: Callable[[datetime | None], Any] = naive_utc
    decode_datetime: Callable[[Any], datetime | None] = _same
    # How a list of task ids is passed as one parameter (get_many's task_ids):
    # psycopg sends a list as an array, PyMySQL writes it out as (a, b, ...).
    encode_ids: Callable[[list[str]], Any] = _same
    # The socket a connection owns, to be replaced in a forked child (pool.py).
    socket_of: Callable[[Any], int | None] = lambda conn: None
    # Where a connection went (``host:port``: one of the URL's hosts), for errors.
    address_of: Callable[[Any], str | None] = lambda conn: None
    # Whether a connection's server takes no writes (a standby), when the
    # driver knows it without a round trip; False when it can't tell.
    read_only: Callable[[Any], bool] = lambda conn: False
    # How to reach a server that takes writes, for the error of a write that
    # reached one that doesn't.
    read_only_hint: str = ""
    # Why the driver passed over a host, lowercase -> what it means, added to
    # a failed connect's error (see connect_hint).
    connect_hints: dict[str, str] = field(default_factory=dict)
    # Parameters that a pool of this dialect must use whatever the options say
    # (one shared in-memory SQLite database lives only as long as its connection).
    pool_overrides: Callable[[dict], dict] = lambda params: {}
    # The folder under sql/ whose statements replace this dialect's own on the
    # server behind a connection, or None (MariaDB answers mysql:// URLs).
    variant_of: Callable[[Any], str | None] = lambda conn: None
    variants: tuple[str, ...] = ()  # what variant_of may answer
    # A variant that refines another: its statements first, then the base
    # variant's it does not replace, then the dialect's own (galera -> mariadb).
    variant_bases: dict[str, str] = field(default_factory=dict)
    # Told that a connection failed with a disconnect verdict, so that the next
    # connect starts at another of the URL's hosts (a Galera node cut off from
    # the cluster still accepts connections, and refuses every statement).
    server_failed: Callable[[Any], None] = lambda conn: None
    # The bytes a statement with its parameters takes on the wire, to compare
    # with the server's max_statement (read only where there is one): exact
    # when it comes near ``limit``, a cheap upper bound below that.
    statement_size: Callable[[str, dict, int], int] = lambda sql, params, limit: 0
    # How ``database_lock_timeout`` is applied: the connect keyword that takes
    # it in seconds (SQLite's busy timeout), or None: the ``set_lock_timeout``
    # statement of sql/<name>/session.sql runs once on each new connection.
    lock_timeout_param: str | None = None
    # Whether a connection keeps one cursor for all its statements: a new
    # psycopg cursor costs microseconds per statement. Not on SQLite, where an
    # open cursor on an unfinished SELECT would keep a read transaction open.
    keep_cursor: bool = True
    # cleanup()'s batches. On the servers a batch locks only the rows it
    # deletes, which stores never touch: the size only trades round trips
    # against the length of one transaction.
    cleanup: Batching = Batching(rows=5000)

    def quote_identifier(self, name: str) -> str:
        return f"{self.quote}{name}{self.quote}"

    def describe(self, params: dict[str, Any]) -> str:
        """What ``params`` connect to, for error messages (never the password)."""
        database = params.get(self.database_param)
        if not self.has_host:
            return f"the {self.name} database {database!r}"
        return (f"the {self.name} server at {', '.join(self.locations(params))} "
                f"(database {database!r}, user {params.get('user')!r})")

    def locations(self, params: dict[str, Any]) -> list[str]:
        """``host:port`` of each server ``params`` name, in order."""
        if "hosts" in params:
            return [f"{host}:{port}" for host, port in params["hosts"]]
        hosts = str(params.get("host") or "localhost").split(",")
        ports = str(params.get("port") or self.default_port).split(",")
        # One port for every host, or one port each.
        return [f"{host}:{port}" for host, port in zip(hosts, ports * len(hosts), strict=False)]

    def connect_hint(self, exc: BaseException) -> str:
        """What a failed connect's reasons mean, as a sentence to add ("" if
        none of ``connect_hints`` is among them)."""
        message = str(exc).lower()
        hints = [hint for reason, hint in self.connect_hints.items() if reason in message]
        return f". No host of the URL would do: {'; '.join(hints)}" if hints else ""

    def typed(self, params: dict[str, Any]) -> dict[str, Any]:
        """Query-string values converted to what the driver's connect takes."""
        return {
            key: self.param_types.get(key, _same)(value) for key, value in params.items()
        }


def _connect_postgresql(params: dict) -> Any:
    import psycopg

    # Autocommit: a store is one statement, so no BEGIN/COMMIT round trips.
    return psycopg.connect(autocommit=True, **params)


# Where a connect to each list of hosts starts: the host that answered last,
# or the one after a host whose connection failed. Per process (a forked child
# inherits a hint, never a connection); a plain dict, whose item assignments
# are atomic: two threads racing only pick a start each.
_FIRST_HOST: dict[tuple, int] = {}


def _connect_mysql(params: dict) -> Any:
    """One connection: to the URL's host, or to the first of its hosts that
    answers, starting at the one that answered last (see _mysql_server_failed)."""
    import pymysql

    hosts = params.get("hosts")
    if hosts is None:
        return _connect_mysql_host(params)
    # PyMySQL connects to one host: try each, in the URL's order from the start.
    params = {k: v for k, v in params.items() if k != "hosts"}
    key = tuple(hosts)
    start = _FIRST_HOST.get(key, 0)
    failures = []
    for index in [*range(start, len(hosts)), *range(start)]:
        host, port = hosts[index]
        try:
            conn = _connect_mysql_host({**params, "host": host, "port": port})
        except pymysql.err.OperationalError as exc:
            failures.append((host, port, exc))
            continue
        _FIRST_HOST[key] = index
        conn._rawbackend_host = (key, index)
        return conn
    code = failures[-1][2].args[0] if failures[-1][2].args else 2003
    raise pymysql.err.OperationalError(
        code, "; ".join(f"{host}:{port}: {exc}" for host, port, exc in failures)
    )


def _mysql_server_failed(conn) -> None:
    """The next connect to this connection's hosts starts after its host,
    unless another connection moved it on already."""
    key, index = getattr(conn, "_rawbackend_host", (None, None))
    if key is not None and _FIRST_HOST.get(key, 0) == index:
        _FIRST_HOST[key] = (index + 1) % len(key)


def _connect_mysql_host(params: dict) -> Any:
    import pymysql

    # PyMySQL bounds the TCP connect by connect_timeout, then waits for the
    # server's greeting with read_timeout, None by default: a port that accepts
    # and never answers would hang the connect forever. The handshake gets the
    # connect timeout; the connection then reads with the timeout asked for
    # (PyMySQL applies _read_timeout before each read).
    read_timeout = params.get("read_timeout")
    handshake = {**params, "read_timeout": read_timeout or params.get("connect_timeout", 10)}
    conn = pymysql.connect(autocommit=True, **handshake)
    conn._read_timeout = read_timeout  # type: ignore[attr-defined]  # private: not in PyMySQL's stubs
    return conn


def _connect_sqlite(params: dict) -> Any:
    import sqlite3

    # isolation_level=None: autocommit, as on the servers. The pool hands a
    # connection to one thread at a time, so cross-thread use is safe.
    return sqlite3.connect(isolation_level=None, check_same_thread=False, **params)


def _postgresql_socket(conn) -> int | None:
    try:
        return conn.pgconn.socket
    except Exception:  # closed, or never opened
        return None


def _postgresql_address(conn) -> str | None:
    try:
        return f"{conn.info.host}:{conn.info.port}"
    except Exception:  # closed
        return None


def _postgresql_read_only(conn) -> bool:
    # Reported by the server with the connection (PostgreSQL 14+, as libpq's
    # target_session_attrs reads them): no round trip. Older servers: None.
    info = conn.info
    return "on" in (info.parameter_status("in_hot_standby"),
                    info.parameter_status("default_transaction_read_only"))


def _mysql_socket(conn) -> int | None:
    sock = getattr(conn, "_sock", None)
    return sock.fileno() if sock is not None else None


_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.\d+-MariaDB")


def _mysql_variant(conn) -> str | None:
    # From 10.3 MariaDB has sequences, and SQLAlchemy's MariaDB dialect makes
    # Celery's tables draw their ids from them instead of AUTO_INCREMENT.
    match = _MARIADB_VERSION.search(conn.get_server_info() or "")
    if not match or (int(match[1]), int(match[2])) < (10, 3):
        return None
    # A Galera node says so itself, whatever the URL or the configuration.
    from .loader import load_dialect
    from .models import KNOWN_SLOTS  # models imports this module: imported here

    sql = load_dialect("mariadb", "pyformat", KNOWN_SLOTS, frozenset())["wsrep_on"].render({})
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return "galera" if row and str(row[1]).upper() == "ON" else "mariadb"


# What PyMySQL's string literals escape with a backslash: one byte becomes two.
_MYSQL_ESCAPED = tuple(chr(c) for c in b"\0\n\r\x1a'\"\\")
_MYSQL_OTHER = 32  # quotes and _binary, NULL, a number, a datetime: at most this many bytes


def _mysql_statement_size(sql: str, params: dict, limit: int) -> int:
    # PyMySQL sends one COM_QUERY: a command byte, then the statement text
    # with every value quoted into it (placeholders counted too: a few bytes over).
    values = [v for v in params.values() if isinstance(v, (str, bytes))]
    raw = sum(len(v) for v in values)
    size = 1 + len(sql) + len(params) * _MYSQL_OTHER
    if size + 4 * raw <= limit:  # UTF-8, escapes, _binary: never over 4 bytes for one
        return size + 4 * raw
    for value in values:
        if isinstance(value, str):
            size += len(value.encode("utf-8", "surrogatepass"))
            size += sum(value.count(c) for c in _MYSQL_ESCAPED)
        else:
            # Measured on MariaDB 10.11: a _binary'...' literal is refused
            # (error 1153, connection dropped) from half max_allowed_packet,
            # however many of its bytes are escaped on the wire.
            size += 2 * len(value)
    return size


def _sqlite_datetime(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DateTime storage format, which Celery's rows have.
    value = naive_utc(value)
    return None if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_read_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _sqlite_pool_overrides(params: dict) -> dict:
    if params.get("database") in (":memory:", ""):
        # Each connection to :memory: is a new database: keep exactly one.
        return {"pool_size": 1, "max_overflow": 0, "pool_recycle": -1}
    return {}


POSTGRESQL = Dialect(
    name="postgresql",
    driver="psycopg",
    paramstyle="pyformat",
    schemes=(
        "postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2",
        "postgresql+psycopg3", "postgresql+psycopg_binary",
    ),
    quote='"',
    max_identifier=63,
    database_param="dbname",
    has_host=True,
    default_port=5432,
    connect=_connect_postgresql,
    errors=ErrorRules(
        driver="psycopg",
        code_of=lambda exc: getattr(exc, "sqlstate", None),
        codes=errcodes.POSTGRESQL_CODES,
        classes=errcodes.POSTGRESQL_CLASSES,
        class_width=2,
        codeless={"OperationalError": errcodes.DISCONNECT, "InterfaceError": errcodes.DISCONNECT},
    ),
    param_types={"prepare_threshold": _maybe_int},
    # libpq waits for a server without end unless told: a wrong host must fail
    # within seconds (the URL's ?connect_timeout= overrides it).
    connect_defaults={"connect_timeout": 10},
    # libpq takes lists and tries the hosts itself (target_session_attrs,
    # load_balance_hosts: query parameters that go to it as they are).
    several_hosts=lambda hosts: {
        "host": ",".join(host for host, _ in hosts), "port": ",".join(str(p) for _, p in hosts),
    },
    unprepare_codes=errcodes.POSTGRESQL_UNPREPARE,
    socket_of=_postgresql_socket,
    address_of=_postgresql_address,
    read_only=_postgresql_read_only,
    read_only_hint="name every node of the cluster in the URL with ?target_session_attrs=read-write "
    "(postgresql://host1:5432,host2:5432/db?target_session_attrs=read-write), so that "
    "only the primary is used",
    connect_hints=errcodes.POSTGRESQL_CONNECT_HINTS,
    # Each batch pays a commit (a WAL flush) and an index scan that steps over
    # the rows of the batch before, dead but not yet vacuumed: 100,000 rows took
    # 2.5x one plain DELETE in batches of 10,000, 1.4x in batches of 50,000
    # (python -m benchmarks --only cleanup), a transaction of ~0.1-0.2 s.
    cleanup=Batching(rows=50_000),
)

MYSQL = Dialect(
    name="mysql",
    driver="pymysql",
    paramstyle="pyformat",
    schemes=("mysql", "mysql+pymysql", "mysql+mysqldb", "mariadb", "mariadb+pymysql", "mariadb+mysqldb"),
    quote="`",
    max_identifier=64,
    database_param="database",
    has_host=True,
    default_port=3306,
    connect=_connect_mysql,
    errors=ErrorRules(
        driver="pymysql",
        code_of=lambda exc: exc.args[0] if exc.args and isinstance(exc.args[0], int) else None,
        codes=errcodes.MYSQL_CODES,
        codeless={"InterfaceError": errcodes.DISCONNECT},
    ),
    param_types={
        **dict.fromkeys(
            ("port", "connect_timeout", "read_timeout", "write_timeout", "client_flag",
             "max_allowed_packet"), int),
        **dict.fromkeys(("binary_prefix", "local_infile", "autocommit"), _truthy),
    },
    # utf8mb4: all of Unicode. binary_prefix: result bytes go as _binary'...',
    # never checked against the connection's character set.
    connect_defaults={"charset": "utf8mb4", "binary_prefix": True},
    several_hosts=lambda hosts: {"hosts": hosts},
    socket_of=_mysql_socket,
    variant_of=_mysql_variant,
    variants=("mariadb", "galera"),
    variant_bases={"galera": "mariadb"},
    server_failed=_mysql_server_failed,
    statement_size=_mysql_statement_size,
    # Each batch pays a commit (a redo log flush) and an index range scan over
    # the delete-marked rows of the batches before it, not yet purged: 100,000
    # rows took 2.5-2.9x one plain DELETE in batches of 5,000, 1.2-2.7x in
    # batches of 20,000 (~0.1-0.2 s each), on a machine busy with other tests.
    # Their locks (the rows, and the gap up to the first row done after the
    # cutoff) are where no store writes.
    cleanup=Batching(rows=20_000),
)

SQLITE = Dialect(
    name="sqlite",
    keep_cursor=False,
    driver="sqlite3",
    paramstyle="named",
    schemes=("sqlite", "sqlite+pysqlite"),
    quote='"',
    max_identifier=1024,
    database_param="database",
    has_host=False,
    default_port=None,
    connect=_connect_sqlite,
    errors=ErrorRules(
        driver="sqlite3",
        code_of=lambda exc: (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF or None,
        codes=errcodes.SQLITE_CODES,
        message_class="OperationalError",
        messages=errcodes.SQLITE_MESSAGES,
    ),
    param_types={"timeout": float, "cached_statements": int, "uri": _truthy},
    encode_datetime=_sqlite_datetime,
    decode_datetime=_sqlite_read_datetime,
    encode_ids=json.dumps,  # sqlite3 binds no lists: a JSON array for json_each
    pool_overrides=_sqlite_pool_overrides,
    lock_timeout_param="timeout",
    # One writer at a time. Back to back, each batch took the lock again before
    # a waiting store's busy handler retried, and stores waited for the whole
    # cleanup (330-530 ms for 100,000 rows). That handler retries 1, 3, 8, 18,
    # 33, 53, 78, 103, 128 ms after the first try, and so on (SQLite's
    # sqliteDefaultBusyCallback): a store that began waiting during a batch of
    # up to 18 ms retries within the 10 ms after it, during one of up to 33 ms
    # within 15 ms, and so on down the table. Batches are sized to hold the
    # lock ~10 ms, and a batch that took longer (a busy machine, or a wait for
    # a store's lock) gets the longer pause its waiters need, up to the 25 ms
    # that serve a store waiting for 128 ms: past the 100 ms target already,
    # longer pauses would only slow the cleanup.
    cleanup=Batching(rows=20_000, seconds=0.010, first=500, least=500, pauses=(
        (0.018, 0.010), (0.033, 0.015), (0.053, 0.020), (math.inf, 0.025),
    )),
)

DIALECTS: tuple[Dialect, ...] = (POSTGRESQL, MYSQL, SQLITE)
BY_SCHEME: dict[str, Dialect] = {s: d for d in DIALECTS for s in d.schemes}


def replace_socket_with_devnull(fd: int | None) -> None:
    """Point ``fd`` at /dev/null in this process only.

    A forked child shares its parent's sockets. Closing a driver connection
    would send the server a goodbye on the parent's socket (libpq's Terminate,
    MySQL's COM_QUIT) and end the parent's session; pointing the child's
    descriptor elsewhere first makes any later close or garbage collection
    harmless, and leaves the parent's socket alone.
    """
    if fd is None or fd < 0:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
