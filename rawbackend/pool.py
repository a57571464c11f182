"""A small thread-safe, fork-safe connection pool: the "engine" of one URL."""
from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .dialects import Dialect, replace_socket_with_devnull
from .errors import ConnectFailed, classify

__all__ = ("Pool", "PoolTimeout", "PooledConnection")

logger = logging.getLogger(__name__)


class PoolTimeout(TimeoutError):
    """No connection came free within ``pool_timeout`` seconds."""


class PooledConnection:
    """A driver connection and what the pool knows of it."""

    __slots__ = ("conn", "cursor", "cursor_of", "born", "expires", "generation", "fresh", "pid")

    def __init__(self, conn: Any, expires: float, generation: int):
        self.conn = conn
        # A cursor kept for the next statement (Dialect.keep_cursor), and the
        # connection object it came from: used only while that is still .conn.
        self.cursor: Any = None
        self.cursor_of: Any = None
        self.pid = os.getpid()
        self.born = time.monotonic()
        self.expires = expires
        self.generation = generation
        # Opened for this checkout: it cannot have gone stale while idle.
        self.fresh = True


# Every pool of this process, to be reset in a forked child.
_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()
# Generations are unique in the process and its children, so that a connection
# checked out before a dispose() or a fork is never taken back.
_GENERATIONS = itertools.count()


class Pool:
    """Connections to one database, shared by the threads of one process.

    Options follow SQLAlchemy's names: ``pool_size`` connections are kept,
    ``max_overflow`` more may be opened under load (-1: no limit), a checkout
    waits at most ``pool_timeout`` seconds, a connection older than
    ``pool_recycle`` seconds (-1: never) is closed instead of reused, and
    ``pool_use_lifo`` hands out the most recently used one first.
    """

    def __init__(
        self,
        dialect: Dialect,
        params: dict[str, Any],
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        pool_recycle: float = -1,
        pool_use_lifo: bool = False,
        echo: bool = False,
        name: str = "",
    ):
        self.dialect = dialect
        self.params = params  # the driver's connect keywords
        self.size = int(pool_size)
        self.max_overflow = int(max_overflow)
        self.timeout = float(pool_timeout)
        self.recycle = float(pool_recycle if pool_recycle is not None else -1)
        self.lifo = bool(pool_use_lifo)
        self.echo = bool(echo)
        self.name = name  # the URL without its password, for logs
        # Called with a copy of the connect keywords before every new
        # connection, e.g. to put in a freshly minted password.
        self.connect_hooks: list[Callable[[dict], None]] = []
        # Whether the server ever accepted a connection from this pool, and
        # whether one that takes writes did (not a standby).
        self.answered = False
        self.answered_writable = False
        # Called with each new driver connection before it is used, e.g. to
        # set a session variable once instead of on every checkout.
        self.on_connect: list[Callable[[Any], None]] = []
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._idle: deque[PooledConnection] = deque()
        self._checked_out = 0
        self._generation = next(_GENERATIONS)
        self._cond = threading.Condition(threading.Lock())
        self._pid = os.getpid()

    # -- what users of the pool call --------------------------------------

    def before_connect(self, hook: Callable[[dict], None]) -> Callable[[dict], None]:
        """Register ``hook(params)`` to run before each new connection (a decorator too)."""
        self.connect_hooks.append(hook)
        return hook

    def getconn(self) -> PooledConnection:
        """Check a connection out: an idle one, else a new one, else wait."""
        deadline = None
        with self._cond:
            while True:
                while self._idle:
                    pooled = self._idle.pop() if self.lifo else self._idle.popleft()
                    if self.recycle >= 0 and time.monotonic() >= pooled.expires:
                        self._close(pooled)
                        continue
                    self._checked_out += 1
                    pooled.fresh = False
                    return pooled
                if self.max_overflow < 0 or self._checked_out < self.size + self.max_overflow:
                    self._checked_out += 1
                    generation = self._generation
                    break
                if deadline is None:
                    deadline = time.monotonic() + self.timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining) and time.monotonic() >= deadline:
                    raise PoolTimeout(
                        f"rawbackend: no connection to {self.name} came free within "
                        f"{self.timeout:g}s (pool_size={self.size}, max_overflow={self.max_overflow})"
                    )
        # Connect outside the lock: it takes a round trip or more.
        try:
            conn = self.connect()
        except BaseException:
            with self._cond:
                self._checked_out -= 1
                self._cond.notify()
            raise
        return PooledConnection(conn, self._expiry(), generation)

    def putconn(self, pooled: PooledConnection, discard: bool = False) -> None:
        """Check a connection back in; ``discard`` closes it instead."""
        with self._cond:
            if pooled.generation != self._generation:
                # Checked out before a fork or a dispose(): never reuse it. Its
                # slot was already given back when the generation changed.
                discard = True
            else:
                self._checked_out -= 1
                self._cond.notify()
            if not discard and len(self._idle) < self.size:
                self._idle.append(pooled)
                return
        self._close(pooled)

    def connect(self):
        """Open one new driver connection, running the connect hooks first."""
        params = dict(self.params)
        for hook in self.connect_hooks:
            hook(params)
        try:
            conn = self.dialect.connect(params)
        except Exception as exc:
            raise ConnectFailed(
                f"rawbackend: could not connect to {self.dialect.describe(params)}: {exc}"
                f"{self.dialect.connect_hint(exc)}",
                classify(self.dialect.errors, exc),
            ) from exc
        self.answered = True
        if not self.dialect.read_only(conn):
            self.answered_writable = True
        try:
            for hook in self.on_connect:
                hook(conn)
        except BaseException as exc:
            verdict = classify(self.dialect.errors, exc) if isinstance(exc, Exception) else None
            if verdict is not None and verdict.disconnect:
                self.dialect.server_failed(conn)  # the next connect tries another host
            conn.close()
            raise
        return conn

    def dispose(self) -> None:
        """Close every idle connection; those checked out are closed on return."""
        with self._cond:
            idle, self._idle = list(self._idle), deque()
            self._generation = next(_GENERATIONS)
            self._checked_out = 0
            self._cond.notify_all()
        for pooled in idle:
            self._close(pooled)

    def disable_prepare(self) -> None:
        """Stop server-side prepared statements on this pool (psycopg's
        ``prepare_threshold=None``), replacing the connections that have them."""
        self.params["prepare_threshold"] = None
        self.dispose()

    def status(self) -> dict[str, int]:
        with self._cond:
            return {"idle": len(self._idle), "checked_out": self._checked_out}

    # -- internals ------------------------------------------------------------

    def _expiry(self) -> float:
        if self.recycle < 0:
            return float("inf")
        # A little jitter, so a fleet of workers doesn't reconnect all at once.
        return time.monotonic() + self.recycle * random.uniform(0.9, 1.0)

    def _close(self, pooled: PooledConnection) -> None:
        if pooled.pid != os.getpid():
            # Inherited from the parent: its socket is the parent's. Point ours
            # at /dev/null first, so that closing reaches no server.
            replace_socket_with_devnull(self.dialect.socket_of(pooled.conn))
        try:
            pooled.conn.close()
        except Exception:  # already broken: nothing more to release
            logger.debug("closing a connection to %s failed", self.name, exc_info=True)

    def _after_fork_in_child(self) -> None:
        # The parent's connections stay the parent's: _close() points their
        # sockets at /dev/null here before closing. The lock may have been held
        # by a thread that does not exist in the child: take a new one.
        inherited = list(self._idle)
        self._reset()
        for pooled in inherited:
            self._close(pooled)

    def __repr__(self) -> str:
        return f"<rawbackend.Pool {self.name} size={self.size} overflow={self.max_overflow}>"


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
