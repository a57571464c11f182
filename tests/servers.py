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
    """The machine's main server, known by the pid in its own pid file: other
    mariadbd processes (a test's Galera nodes) are never taken for it."""

    def __init__(self):
        super().__init__("mysql")
        conn = raw_connect("mysql")
        try:
            cur = conn.cursor()
            cur.execute("SELECT @@pid_file")
            self.pid_file = cur.fetchone()[0]
        finally:
            conn.close()

    def controllable(self) -> str | None:
        if self.host not in ("127.0.0.1", "localhost") or not os.access(MARIADBD, os.X_OK):
            return f"the MySQL server is not a local {MARIADBD} this test can restart"
        if not os.path.isabs(self.pid_file or ""):
            return f"the server's pid file {self.pid_file!r} is not an absolute path"
        return None

    def mysqladmin(self, *args: str) -> list[str]:
        return ["mysqladmin", f"-u{self.params.get('user', 'root')}", f"-h{self.host}",
                f"-P{self.port}", *args]

    def pid(self) -> int | None:
        """The main server's pid while it runs, else None."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().split()[0])
            exe = os.readlink(f"/proc/{pid}/exe")
        except (OSError, ValueError, IndexError):
            return None
        return pid if os.path.basename(exe).startswith("mariadbd") else None

    def running(self) -> bool:
        return self.pid() is not None

    def started(self):
        return self.pid()

    def start(self) -> None:
        # --pidfile: "already running" means this server, not any mariadbd.
        run(["start-stop-daemon", "--start", "--oknodo", "--background",
             "--pidfile", self.pid_file, "--exec", MARIADBD])

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
