"""The pool against a fake DB-API driver: sizes, timeouts, recycling, threads, and a real fork."""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

import pytest

from rawbackend.dialects import SQLITE
from rawbackend.pool import Pool, PoolTimeout


class FakeConnection:
    """Owns one end of a socketpair; closing it says goodbye over the socket,
    as libpq and PyMySQL do."""

    opened: list[FakeConnection] = []

    def __init__(self, params):
        self.params = params
        self.sock, self.peer = socket.socketpair()
        self.closed = False
        self.in_use = threading.Lock()
        FakeConnection.opened.append(self)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.send(b"GOODBYE")
            except OSError:
                pass
            self.sock.close()


@pytest.fixture
def fake():
    FakeConnection.opened = []
    yield dataclasses.replace(
        SQLITE, connect=FakeConnection, socket_of=lambda conn: conn.sock.fileno()
    )
    for conn in FakeConnection.opened:
        conn.sock.close()
        conn.peer.close()


def test_a_returned_connection_is_reused(fake):
    pool = Pool(fake, {"database": "x"})
    first = pool.getconn()
    assert first.fresh
    pool.putconn(first)
    again = pool.getconn()
    assert again.conn is first.conn and not again.fresh
    assert len(FakeConnection.opened) == 1


def test_size_overflow_and_timeout(fake):
    pool = Pool(fake, {}, pool_size=2, max_overflow=1, pool_timeout=0.05)
    held = [pool.getconn() for _ in range(3)]
    problem = r"no connection .* came free within 0.05s \(pool_size=2, max_overflow=1\)"
    with pytest.raises(PoolTimeout, match=problem):
        pool.getconn()
    for pooled in held:
        pool.putconn(pooled)
    # Only pool_size connections are kept; the overflow one was closed.
    assert pool.status() == {"idle": 2, "checked_out": 0}
    assert sum(c.closed for c in FakeConnection.opened) == 1


def test_a_waiting_checkout_gets_the_connection_given_back(fake):
    pool = Pool(fake, {}, pool_size=1, max_overflow=0, pool_timeout=5)
    held = pool.getconn()
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    time.sleep(0.05)
    pool.putconn(held)
    waiter.join(5)
    assert got and got[0].conn is held.conn


def test_recycle_replaces_old_connections(fake):
    pool = Pool(fake, {}, pool_recycle=0)
    first = pool.getconn()
    pool.putconn(first)
    second = pool.getconn()
    assert second.conn is not first.conn and first.conn.closed


def test_lifo_and_fifo(fake):
    for lifo, expect_last in ((True, True), (False, False)):
        pool = Pool(fake, {}, pool_use_lifo=lifo)
        a, b = pool.getconn(), pool.getconn()
        pool.putconn(a)
        pool.putconn(b)
        assert (pool.getconn().conn is b.conn) is expect_last


def test_dispose_closes_idle_and_later_returns(fake):
    pool = Pool(fake, {})
    idle, out = pool.getconn(), pool.getconn()
    pool.putconn(idle)
    pool.dispose()
    assert idle.conn.closed and not out.conn.closed
    pool.putconn(out)
    assert out.conn.closed, "a connection checked out before dispose() is never reused"
    assert pool.getconn().conn not in (idle.conn, out.conn)


def test_connect_hooks_change_params_of_every_new_connection(fake):
    pool = Pool(fake, {"password": "old"})
    tokens = iter(["t1", "t2"])
    pool.before_connect(lambda params: params.update(password=next(tokens)))
    a, b = pool.getconn(), pool.getconn()
    assert (a.conn.params["password"], b.conn.params["password"]) == ("t1", "t2")
    assert pool.params["password"] == "old", "hooks get a copy"


def test_threads_never_share_a_connection(fake):
    pool = Pool(fake, {}, pool_size=3, max_overflow=2, pool_timeout=10)
    errors = []

    def work():
        for _ in range(300):
            pooled = pool.getconn()
            if not pooled.conn.in_use.acquire(blocking=False):
                errors.append("a connection was handed to two threads at once")
            time.sleep(0)
            pooled.conn.in_use.release()
            pool.putconn(pooled)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(FakeConnection.opened) <= 5


def test_fork_child_never_uses_or_closes_the_parents_connections(fake):
    """In a forked child the parent's connections are dropped without a word
    on their sockets; the child opens its own; the parent's still work."""
    pool = Pool(fake, {})
    parents = pool.getconn()
    pool.putconn(parents)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, then leave at once
        try:
            mine = pool.getconn()
            ok = mine.conn is not parents.conn
            pool.putconn(mine)
            pool.dispose()  # closes the child's own connection
            os.write(write_end, b"ok" if ok else b"shared")
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_end, 10) == b"ok"
    os.close(read_end)
    assert status == 0
    parents.conn.peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        parents.conn.peer.recv(100)  # nothing was said on the parent's socket
    again = pool.getconn()
    assert again.conn is parents.conn and not again.conn.closed


def test_after_a_primary_answered_a_standby_does_not_end_the_wait(fake):
    """A failover through a URL naming both nodes: once a server that takes
    writes answered, the wait after a disconnect goes on past connections to
    a standby (closed) until one takes writes again; where none ever did (a
    reader on a standby), the first connection ends it."""
    from rawbackend.session import SessionManager

    standby = iter([False, True, True, False])  # primary; then the standby twice; then promoted
    made = []

    def connect(params):
        conn = FakeConnection(params)
        conn.read_only = next(standby)
        made.append(conn)
        return conn

    dialect = dataclasses.replace(fake, connect=connect, read_only=lambda conn: conn.read_only)
    manager = SessionManager()
    url = "sqlite:///failover.db"
    pool = manager._engines[url] = Pool(dialect, {})
    pool.putconn(pool.getconn())
    assert pool.answered_writable and manager.has_answered(url, writable=True)
    pool.dispose()  # the primary went away
    assert manager.wait_for_server(url, budget=5)
    assert [c.read_only for c in made] == [False, True, True, False]
    assert [c.closed for c in made] == [True, True, True, False]  # the new primary's is pooled
    assert pool.status()["idle"] == 1

    reader = SessionManager()
    standby = iter([True])  # what connect() reads next: a standby
    pool = reader._engines[url] = Pool(dialect, {})
    assert reader.wait_for_server(url, budget=5)
    assert not reader.has_answered(url, writable=True) and reader.has_answered(url)
