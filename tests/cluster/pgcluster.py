"""A PostgreSQL primary with a synchronous standby, of the tests' own.

Two clusters made with ``initdb`` and ``pg_basebackup -R`` under a fresh
directory in /tmp owned by ``postgres``, on free loopback ports, run as the
``postgres`` user, stopped by their data directories (``pg_ctl stop`` signals
that postmaster's pid) and removed at the end. The machine's own servers are
never touched.

``failover()`` is what an operator (or Patroni) does: the primary stops at
once (``pg_ctl stop -m immediate``), the standby is promoted, and the
promoted node stops waiting for a synchronous standby it no longer has
(left as it is, every commit there would hang). ``rebuild()`` then makes a
new standby of the new primary at the old one's address: the next test has
a pair again, and one URL names it throughout.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("RAWBACKEND_PG_BIN", "/usr/lib/postgresql/15/bin"))
DBNAME = "ha"
STANDBY_NAME = "standby1"  # application_name of the synchronous standby
COMMAND_TIMEOUT = 60.0  # seconds any pg_ctl, initdb or pg_basebackup may take

# On top of initdb's defaults. fsync off: what is tested is that a commit
# waits for the standby, not the disk (an immediate stop loses no page cache),
# and the disk is shared with the other tests.
PRIMARY_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
    "synchronous_commit": "on",
    "max_connections": "100",
    "shared_buffers": "'32MB'",
    "fsync": "off",
    "full_page_writes": "off",
    "wal_receiver_status_interval": "'1s'",
    "log_min_messages": "warning",
}


def missing() -> str | None:
    """Why a pair can't be made here, or None."""
    if not os.access(PG_BIN / "initdb", os.X_OK):
        return f"no PostgreSQL server binaries in {PG_BIN} (set RAWBACKEND_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the servers as"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_postgres() -> list[str]:
    """The command prefix that runs a server tool as ``postgres`` (initdb and
    postgres refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def run(*command: str, timeout: float = COMMAND_TIMEOUT) -> str:
    done = subprocess.run(
        [*as_postgres(), *command], check=False, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited with {done.returncode}: "
                             f"{done.stdout}{done.stderr}")
    return done.stdout


class Node:
    """One PostgreSQL cluster: a data directory, a port, a log."""

    def __init__(self, root: Path, name: str, port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.data = root / name
        self.log = root / f"{name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, dbname: str = DBNAME, query: str = "") -> str:
        """A URL of this node alone."""
        return f"postgresql://postgres@{self.address}/{dbname}{query}"

    def ctl(self, *args: str) -> str:
        return run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args)

    def start(self) -> None:
        self.ctl("-w", "-t", str(int(COMMAND_TIMEOUT)), "-l", str(self.log), "start")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("-w", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def connect(self, dbname: str = DBNAME) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def sql(self, statement: str, params=None, dbname: str = DBNAME) -> list[tuple]:
        """Run one statement on a connection of its own; its rows."""
        with closing(self.connect(dbname)) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def configure(self, settings: dict[str, str]) -> None:
        """Settings after those of postgresql.conf, which win (the last one read)."""
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))


class PrimaryAndStandby:
    """A primary and a synchronous standby on loopback; see the module's doc."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="rawbackend-pgha-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.generation = 0  # how many nodes were made: each gets a name of its own
        self.primary = self._new_node()
        run(str(PG_BIN / "initdb"), "-D", str(self.primary.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        self.primary.configure({**PRIMARY_SETTINGS, "port": str(self.primary.port),
                                "unix_socket_directories": f"'{self.root}'"})
        self.primary.start()
        self.primary.sql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
        self.standby = self._new_standby()
        self.addresses = (self.primary.address, self.standby.address)

    def _new_node(self, port: int | None = None) -> Node:
        self.generation += 1
        return Node(self.root, f"node{self.generation}", port)

    def _new_standby(self, port: int | None = None) -> Node:
        """A streaming copy of the primary, and the primary waiting for it on
        every commit from then on."""
        # In postgresql.auto.conf (ALTER SYSTEM), which pg_basebackup copies:
        # the standby keeps it when promoted, as in real life, and ALTER
        # SYSTEM RESET there takes it back. Read by the primary only once the
        # standby runs: until then each commit would wait for it.
        self.primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'",
                         dbname="postgres")
        standby = self._new_node(port)
        run(str(PG_BIN / "pg_basebackup"), "-D", str(standby.data), "-X", "stream", "-R",
            "--no-sync", "-c", "fast",
            "-d", f"host=127.0.0.1 port={self.primary.port} user=postgres "
                  f"application_name={STANDBY_NAME}")
        standby.configure({"port": str(standby.port)})
        standby.start()
        self.primary.sql("SELECT pg_reload_conf()", dbname="postgres")
        self.wait_synchronous()
        return standby

    def wait_synchronous(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.primary.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,), dbname="postgres")
            if rows == [("sync",)]:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"the standby is not synchronous after {timeout:g}s: {rows}")
            time.sleep(0.05)

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the standby has applied everything the primary has written
        (synchronous_commit=on waits for the standby's disk, not its replay)."""
        [(lsn,)] = self.primary.sql("SELECT pg_current_wal_lsn()::text", dbname="postgres")
        deadline = time.monotonic() + timeout
        while not self.standby.sql("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,),
                                   dbname="postgres")[0][0]:
            if time.monotonic() >= deadline:
                raise AssertionError(f"the standby has not replayed {lsn} after {timeout:g}s")
            time.sleep(0.02)

    def url(self, query: str = "?target_session_attrs=read-write", dbname: str = DBNAME) -> str:
        """The URL users write: both addresses, which stay those of the pair
        across failovers (the first is the primary's until the first one)."""
        first, second = self.addresses
        return f"postgresql://postgres@{first},{second}/{dbname}{query}"

    def query_url(self, query: str = "&target_session_attrs=read-write", dbname: str = DBNAME) -> str:
        """The same in SQLAlchemy's form: postgresql://user@/db?host=h1:p1&host=h2:p2."""
        first, second = self.addresses
        return f"postgresql://postgres@/{dbname}?host={first}&host={second}{query}"

    def failover(self, detection: float = 0.0) -> dict[str, float]:
        """Stop the primary at once, promote the standby ``detection`` seconds
        later (what a failure detector such as Patroni's takes), let it commit
        alone. Each step's duration in seconds."""
        began = time.monotonic()
        self.primary.stop("immediate")
        time.sleep(detection)
        stopped = time.monotonic()
        self.standby.ctl("-w", "-t", str(int(COMMAND_TIMEOUT)), "promote")
        promoted = time.monotonic()
        with closing(self.standby.connect("postgres")) as conn:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")
        reset = time.monotonic()
        self.primary, self.standby = self.standby, self.primary
        return {"stop": stopped - began, "promote": promoted - stopped, "reset": reset - promoted}

    def rebuild(self) -> None:
        """After a failover: the old primary's data goes, and a new standby of
        the new primary comes up at its address, synchronous again (the URL
        naming both addresses stays right)."""
        old = self.standby
        if old.running():
            old.stop("immediate")
        shutil.rmtree(old.data, ignore_errors=True)
        self.standby = self._new_standby(old.port)

    def writes(self, url: str, statement: str) -> bool:
        """Whether a new connection through ``url`` gets ``statement`` committed."""
        try:
            with closing(psycopg.connect(url, autocommit=True, connect_timeout=2)) as conn:
                conn.execute(statement)
            return True
        except psycopg.Error:
            return False

    def close(self) -> None:
        for node in (self.primary, self.standby):
            if node.running():
                try:
                    node.stop("immediate")
                except Exception:  # noqa: BLE001 (stopping what is left; the dir goes anyway)
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
