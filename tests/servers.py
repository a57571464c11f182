"""The local servers, restarted and stopped for real (test_restart.py and
tests/reliability/): pid-safe means only, and always brought back.

Only under ``flock -x /tmp/rawbackend-servers.lock`` on a shared machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REQUIRE_SERVERS, raw_connect, server_url, wait_until
from rawbackend.url import parse_url

MARIADBD = "/usr/sbin/mariadbd"




def run(command: list[str], timeout: float = 120) -> None:
    done = subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, timeout=timeout,
    )
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr.decode(errors='replace')}"


class Server:
    """Restart, and bring back, the local server of one dialect."""

    def __init__(self, dialect: str):
        self.dialect = dialect
        self.dialect_row, self.params = parse_url(server_url(dialect))
        self.host = self.params.get("host", "127.0.0.1")
        self.port = self.params.get("port", 5432 if dialect == "postgresql" else 3306)

    def answers(self) -> bool:
        try:
            self.dialect_row.connect({**self.params, "connect_timeout": 2}).close()
            return True
        except Exception:  # refused, starting up, shutting down
            return False

    def writes(self, sql: str) -> bool:
        """Whether a new connection gets ``sql`` (a write) committed now."""
        try:
            conn = self.dialect_row.connect({**self.params, "connect_timeout": 2})
        except Exception:  # refused, starting up, shutting down
            return False
        try:
            conn.cursor().execute(sql)
            return True
        except Exception:  # accepted, but not serving yet
            return False
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def wait_up(self, timeout: float = 120) -> None:
        wait_until(self.answers, f"the {self.dialect} server to answer", timeout)


class PostgreSQL(Server):
    def __init__(self):
        super().__init__("postgresql")
        conn = raw_connect("postgresql")
        try:
            self.cluster = conn.execute("SHOW cluster_name").fetchone()[0]  # "15/main"
        finally:
            conn.close()

    def controllable(self) -> str | None:
        if self.host not in ("127.0.0.1", "localhost") or not shutil.which("pg_ctlcluster"):
            return "the PostgreSQL server is not a local cluster pg_ctlcluster can restart"
        if "/" not in (self.cluster or ""):
            return f"cluster_name {self.cluster!r} does not name a Debian cluster"
        return None

    def ctl(self, action: str) -> None:
        version, name = self.cluster.split("/")
        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action])

    def started(self):
        conn = raw_connect("postgresql")
        try:
            return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        finally:
            conn.close()

    def restart(self) -> None:
        self.ctl("restart")

    def stop(self) -> None:
        self.ctl("stop")

    def start(self) -> None:
        self.ctl("start")

    def ensure_up(self) -> None:
        if not self.answers():
            try:
                self.ctl("start")
            except AssertionError:
                pass  # already starting: wait for it below
        self.wait_up()


class MariaDB(Server):
    def __init__(self):
        super().__init__("mysql")
        # The main server is told apart by its pid file: other mariadbd
        # processes (the Galera nodes of tests/cluster) run the same binary.
        self.pid_file = self._pid_file()

    def _pid_file(self) -> str:
        try:
            conn = raw_connect("mysql")
        except Exception:  # down: Debian's default
            return "/run/mysqld/mysqld.pid"
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT @@pid_file, @@datadir")
            pid_file, datadir = cursor.fetchone()
        finally:
            conn.close()
        return os.path.join(datadir, pid_file)  # a relative pid file is in the datadir

    def controllable(self) -> str | None:
        if self.host not in ("127.0.0.1", "localhost") or not os.access(MARIADBD, os.X_OK):
            return f"the MySQL server is not a local {MARIADBD} this test can restart"
        return None

    def mysqladmin(self, *args: str) -> list[str]:
        return ["mysqladmin", f"-u{self.params.get('user', 'root')}", f"-h{self.host}",
                f"-P{self.port}", *args]

    def daemon(self, action: str, *args: str) -> list[str]:
        return ["start-stop-daemon", action, "--pidfile", self.pid_file, "--exec", MARIADBD, *args]

    def running(self) -> bool:
        return subprocess.run(self.daemon("--status"), timeout=30).returncode == 0

    def started(self):
        try:
            with open(self.pid_file) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def start(self) -> None:
        run(self.daemon("--start", "--oknodo", "--background"))

    def stop(self) -> None:
        run(self.mysqladmin("shutdown"))
        wait_until(lambda: not self.running(), "mariadbd to exit", 120)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_up()

    def ensure_up(self) -> None:
        if not self.answers() and not self.running():
            self.start()
        self.wait_up()


@pytest.fixture
def restartable(server_db):
    """(database, server): a test database whose server the test may restart;
    the server is brought back and answers before the test ends."""
    server = PostgreSQL() if server_db.dialect == "postgresql" else MariaDB()
    problem = server.controllable()
    if problem:
        if REQUIRE_SERVERS:
            pytest.fail(f"{problem} (RAWBACKEND_REQUIRE_SERVERS=1)")
        pytest.skip(problem)
    try:
        yield server_db, server
    finally:
        server.ensure_up()
