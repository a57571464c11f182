"""A 3-node MariaDB Galera cluster on loopback, for the cluster tests.

Each node is a ``mariadbd`` of its own (run as user ``mysql``: rsync state
transfer refuses root), with its data directory under one fresh /tmp
directory and four free loopback ports: SQL, group communication, IST and
SST. Node 1 bootstraps the cluster, 2 and 3 join it by rsync state transfer.
Nodes are stopped by pid (SIGTERM, then SIGKILL after a bound), never by
name, and the directory is removed after. The machine's own servers are never
touched.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MARIADBD = "/usr/sbin/mariadbd"
PROVIDER = "/usr/lib/galera/libgalera_smm.so"
INSTALL_DB = "/usr/bin/mariadb-install-db"
USER = "mysql"
START_TIMEOUT = 90.0  # seconds a node may take to be Synced
STOP_TIMEOUT = 30.0  # seconds a node may take to exit on SIGTERM


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for path in (MARIADBD, PROVIDER, INSTALL_DB, shutil.which("rsync") or "/nonexistent/rsync"):
        if not os.access(path, os.X_OK if not path.endswith(".so") else os.R_OK):
            return f"{path} is missing"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no user {USER!r} to run mariadbd as"
    if os.geteuid() != 0:
        return "starting mariadbd as user mysql needs root"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _connect(port: int, timeout: float = 5, **params):
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=port, user="root", autocommit=True,
                           connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
                           **params)


class Node:
    """One ``mariadbd`` of the cluster."""

    def __init__(self, cluster: Cluster, index: int, ports: list[int]):
        self.cluster, self.index = cluster, index
        self.port, self.gcomm_port, self.ist_port, self.sst_port = ports
        self.dir = cluster.dir / f"node{index}"
        self.datadir = self.dir / "data"
        self.log = self.dir / "error.log"
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self, bootstrap: bool) -> Path:
        gcomm = ",".join(f"127.0.0.1:{n.gcomm_port}" for n in self.cluster.nodes)
        options = ";".join((
            f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm_port}",
            f"ist.recv_addr=127.0.0.1:{self.ist_port}",
            "gcache.size=64M",
            *self.cluster.provider_options,
        ))
        config = self.dir / "my.cnf"
        lines = [
            "[mysqld]",
            f"datadir={self.datadir}",
            f"socket={self.dir / 'mysqld.sock'}",
            f"pid-file={self.dir / 'mysqld.pid'}",
            f"log-error={self.log}",
            f"port={self.port}",
            "bind-address=127.0.0.1",
            "skip-name-resolve",
            "performance_schema=OFF",
            "innodb_buffer_pool_size=64M",
            "innodb_log_file_size=48M",
            "max_connections=300",
            "binlog_format=ROW",
            "innodb_autoinc_lock_mode=2",
            "wsrep_on=ON",
            f"wsrep_provider={PROVIDER}",
            f"wsrep_cluster_address=gcomm://{'' if bootstrap else gcomm}",
            "wsrep_cluster_name=rawbackend_test",
            f"wsrep_node_name={self.name}",
            "wsrep_node_address=127.0.0.1",
            f"wsrep_node_incoming_address=127.0.0.1:{self.port}",
            f"wsrep_provider_options={options}",
            "wsrep_sst_method=rsync",
            f"wsrep_sst_receive_address=127.0.0.1:{self.sst_port}",
            "wsrep_slave_threads=2",
        ]
        config.write_text("\n".join(lines) + "\n")
        shutil.chown(config, USER, USER)
        return config

    def start(self, bootstrap: bool = False, attempts: int = 3) -> None:
        """Start the node (the first: a new cluster) and wait until it is
        Synced. A joiner whose state transfer fails (now and then on this
        machine the donor answers "No message of desired type" and the joiner
        aborts) starts again from an empty data directory: a full SST."""
        for attempt in range(attempts):
            try:
                return self._start(bootstrap)
            except AssertionError:
                if bootstrap or attempt == attempts - 1 or self.process.poll() is None:
                    raise
                self.log.rename(self.log.with_suffix(f".failed{attempt}"))
                self._empty_datadir()

    def _empty_datadir(self) -> None:
        """Remove the data directory's contents; the SST script's rsync daemon
        (its pid in the directory) may still be writing there: stopped first."""
        pid_file = self.datadir / "rsync_sst.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ValueError, IndexError, ProcessLookupError):
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.datadir.exists() and time.monotonic() < deadline:
            shutil.rmtree(self.datadir, ignore_errors=True)
            time.sleep(0.2)
        self.datadir.mkdir()
        shutil.chown(self.datadir, USER, USER)

    def _start(self, bootstrap: bool) -> None:
        assert self.process is None or self.process.poll() is not None, f"{self.name} runs already"
        config = self._config(bootstrap)
        self.process = subprocess.Popen(
            [MARIADBD, f"--defaults-file={config}", *self._recovered_position(config)],
            user=USER, group=USER,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_synced()

    def _recovered_position(self, config: Path) -> list[str]:
        """After a crash (seqno -1 in grastate.dat), the position InnoDB holds,
        as the galera_recovery script finds it: the node then catches up by
        IST from the others' gcache, instead of a full rsync SST that would
        block its donor for the transfer."""
        grastate = self.datadir / "grastate.dat"
        if not grastate.exists() or "seqno:   -1" not in grastate.read_text():
            return []
        log = self.dir / "recover.log"
        subprocess.run(
            [MARIADBD, f"--defaults-file={config}", "--wsrep-recover", f"--log-error={log}"],
            user=USER, group=USER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=START_TIMEOUT,
        )
        for line in (log.read_text(errors="replace") if log.exists() else "").splitlines():
            if "WSREP: Recovered position:" in line:
                return [f"--wsrep_start_position={line.rsplit(' ', 1)[-1]}"]
        return []

    def status(self, variable: str) -> str | None:
        """A global status variable, or None when the node does not answer."""
        try:
            conn = _connect(self.port, timeout=2)
        except Exception:  # not listening yet, or going down
            return None
        try:
            cur = conn.cursor()
            cur.execute("SHOW GLOBAL STATUS LIKE %s", (variable,))
            row = cur.fetchone()
            return row[1] if row else None
        except Exception:
            return None
        finally:
            conn.close()

    def synced(self) -> bool:
        return self.status("wsrep_local_state_comment") == "Synced" and \
            self.status("wsrep_ready") == "ON"

    def wait_synced(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.synced():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} not Synced after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        """The error log's [ERROR] lines and its last ``lines`` lines."""
        try:
            log = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no error log)"
        errors = [line for line in log[:-lines] if "[ERROR]" in line][-20:]
        return "\n".join([*errors, "...", *log[-lines:]])

    def execute(self, sql: str, params=None) -> list[tuple]:
        """Run ``sql`` on this node with a bare connection of its own (no database)."""
        conn = _connect(self.port)
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def isolate(self, on: bool = True) -> None:
        """Cut the node off the cluster's group communication (or let it back):
        it stays up, its clients' connections too, but it is no longer part of
        the Primary Component (galera-4's gmcast.isolate)."""
        conn = _connect(self.port)
        try:
            conn.cursor().execute(
                "SET GLOBAL wsrep_provider_options = %s", (f"gmcast.isolate={1 if on else 0}",))
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the other nodes can tell."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after STOP_TIMEOUT."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


class Cluster:
    """Three Galera nodes on loopback; ``start()`` then ``stop()``."""

    def __init__(self, size: int = 3, database: str = "test", provider_options=()):
        self.dir = Path(tempfile.mkdtemp(prefix="rawbackend-galera-"))
        self.database = database
        self.provider_options = tuple(provider_options)
        ports = free_ports(4 * size)
        self.nodes: list[Node] = []
        for i in range(size):
            self.nodes.append(Node(self, i + 1, ports[4 * i:4 * i + 4]))

    def url(self, *nodes: Node, database: str | None = None) -> str:
        """A mysql:// URL naming ``nodes`` (all, in order, by default)."""
        hosts = ",".join(node.address for node in nodes or self.nodes)
        return f"mysql://root@{hosts}/{database or self.database}"

    def start(self) -> Cluster:
        shutil.chown(self.dir, USER, USER)
        os.chmod(self.dir, 0o755)
        for node in self.nodes:
            node.dir.mkdir()
            shutil.chown(node.dir, USER, USER)
        first = self.nodes[0]
        done = subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--user={USER}", f"--datadir={first.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, f"mariadb-install-db: {done.stdout}\n{done.stderr}"
        first.start(bootstrap=True)
        conn = _connect(first.port)
        try:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        finally:
            conn.close()
        for node in self.nodes[1:]:
            node.datadir.mkdir()
            shutil.chown(node.datadir, USER, USER)
            node.start()
        return self

    def size(self) -> int:
        return int(self.nodes[0].status("wsrep_cluster_size") or 0)

    def stop(self) -> None:
        try:
            for node in reversed(self.nodes):
                node.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

