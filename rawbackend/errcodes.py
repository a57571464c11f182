"""Which driver errors are worth retrying: tables only, one per dialect.

Each row maps a code to a ``Verdict``: ``transient`` (the same operation may
succeed if tried again), ``disconnect`` (the connection is gone or unusable:
drop it and every pooled sibling) and ``read_only`` (the server takes no
writes: a standby; the next connection may reach the new primary).
``errors.classify`` reads these tables.
"""
from __future__ import annotations

from typing import NamedTuple


class Verdict(NamedTuple):
    transient: bool
    disconnect: bool
    read_only: bool = False


TRANSIENT = Verdict(transient=True, disconnect=False)
DISCONNECT = Verdict(transient=True, disconnect=True)
READ_ONLY = Verdict(transient=True, disconnect=True, read_only=True)

# PostgreSQL SQLSTATE codes (psycopg ``exc.sqlstate``); the exact code first,
# then its two-character class.
POSTGRESQL_CODES: dict[str, Verdict] = {
    # Class 40, transaction rollback: run it again.
    "40001": TRANSIENT,  # serialization_failure
    "40P01": TRANSIENT,  # deadlock_detected
    # Operator intervention: the server is going away or not there yet.
    "57P01": DISCONNECT,  # admin_shutdown (also pg_terminate_backend)
    "57P02": DISCONNECT,  # crash_shutdown
    "57P03": DISCONNECT,  # cannot_connect_now (starting up, shutting down)
    "57P05": DISCONNECT,  # idle_session_timeout
    # A write that reached a standby: during a failover, through a URL without
    # target_session_attrs=read-write, the node that accepts may be the standby.
    "25006": READ_ONLY,  # read_only_sql_transaction
    # Resources.
    "53300": TRANSIENT,  # too_many_connections
    "55P03": TRANSIENT,  # lock_not_available (lock_timeout)
    "57014": TRANSIENT,  # query_canceled (statement_timeout)
    # Behind PgBouncer in transaction mode: a prepared statement that lived on
    # another server connection. Handled by turning preparation off (session.py).
    "26000": TRANSIENT,  # invalid_sql_statement_name
    "42P05": TRANSIENT,  # duplicate_prepared_statement
}
POSTGRESQL_CLASSES: dict[str, Verdict] = {
    "08": DISCONNECT,  # connection exception
    "40": TRANSIENT,  # transaction rollback
}
# The codes that mean "server-side prepared statements don't survive here".
POSTGRESQL_UNPREPARE = frozenset({"26000", "42P05"})
# Why libpq passed over a host (target_session_attrs), lowercase -> what it
# means, added to the error when no host would do.
POSTGRESQL_CONNECT_HINTS: dict[str, str] = {
    "session is read-only": "a host that answered is read-only (a standby, or "
    "default_transaction_read_only is on) and the URL asks for target_session_attrs=read-write",
    "server is in hot standby mode": "a host that answered is a standby and the URL asks "
    "for target_session_attrs=primary",
}

# MySQL/MariaDB error numbers (PyMySQL ``exc.args[0]``).
MYSQL_CODES: dict[int, Verdict] = {
    1205: TRANSIENT,  # ER_LOCK_WAIT_TIMEOUT
    1213: TRANSIENT,  # ER_LOCK_DEADLOCK
    1040: TRANSIENT,  # ER_CON_COUNT_ERROR: too many connections
    1053: DISCONNECT,  # ER_SERVER_SHUTDOWN
    1927: DISCONNECT,  # ER_CONNECTION_KILLED (MariaDB)
    4031: DISCONNECT,  # ER_CLIENT_INTERACTION_TIMEOUT: idle client disconnected
    2003: DISCONNECT,  # CR_CONN_HOST_ERROR: can't connect
    2006: DISCONNECT,  # CR_SERVER_GONE_ERROR
    2013: DISCONNECT,  # CR_SERVER_LOST
    2014: DISCONNECT,  # CR_COMMANDS_OUT_OF_SYNC: the protocol state is lost
    2055: DISCONNECT,  # CR_SERVER_LOST_EXTENDED
    # A server that answers but must not be written to: another host of the
    # URL may take the statement (connect moves past the host that failed).
    1290: DISCONNECT,  # ER_OPTION_PREVENTS_STATEMENT: --read-only
    1792: DISCONNECT,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    # Galera: a node cut off from the Primary Component, or rejoining, keeps
    # its TCP connections and refuses every statement; reconnecting to it does
    # not help, another node does. 1213 above is also a certification conflict.
    1047: DISCONNECT,  # ER_UNKNOWN_COM_ERROR: "WSREP has not yet prepared node for application use"
    1180: DISCONNECT,  # ER_ERROR_DURING_COMMIT: "Not connected to Primary Component"
    # MariaDB's stores refuse an id drawn from a sequence that is another row's
    # (sql/mariadb/results.sql): run again, the store draws a new one. None of
    # rawbackend's statements writes a number out of its column's range otherwise.
    1264: TRANSIENT,  # ER_WARN_DATA_OUT_OF_RANGE (an error in strict mode)
}

# SQLite primary result codes (``exc.sqlite_errorcode & 0xFF``): extended codes
# such as SQLITE_BUSY_SNAPSHOT (517) fold to their primary code.
SQLITE_CODES: dict[int, Verdict] = {
    5: TRANSIENT,  # SQLITE_BUSY: another connection holds the lock
    6: TRANSIENT,  # SQLITE_LOCKED: a conflict within one shared cache
}

# SQLite's documented messages (sqlite3_errstr, https://www.sqlite.org/rescode.html)
# for the same conditions, matched case-insensitively on the start of a codeless
# sqlite3.OperationalError: before Python 3.11 sqlite3 attaches no code at all.
SQLITE_MESSAGES: dict[str, Verdict] = {
    "database is locked": TRANSIENT,  # SQLITE_BUSY
    "database table is locked": TRANSIENT,  # SQLITE_LOCKED (also "...: <table>")
    "database schema is locked": TRANSIENT,  # SQLITE_LOCKED, shared cache ("...: main")
}
