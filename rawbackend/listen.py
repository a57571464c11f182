"""Waking waiters when their results are stored (PostgreSQL LISTEN/NOTIFY).

A store of a ready state also notifies the task table's channel, in the same
statement (``sql/postgresql/notify.sql``), with the task id as payload. In each
process one ``Listener`` per database and channel owns one connection, made
lazily on the first wait: a daemon thread LISTENs on it and sets the event of
every ``Watch`` (one per waiting ``get()`` or join) that waits for that id.

Nothing is ever missed for good:
- a waiter registers its ids before its first read; a read counts as covered
  only when LISTEN was already active (the same listening connection, its
  ``epoch``) when the waiter registered or last re-checked; otherwise the
  waiter re-checks once as soon as LISTEN is active;
- while the connection is down (or not yet up), waiters fall back on the
  adaptive poll (``waiting.pauses``); the listener reconnects with a backoff,
  and each new connection wakes every waiter to re-check;
- the listener re-reads every ``SAFETY_CHECK`` seconds, in one statement, the
  ids being waited for, and wakes those that are ready (a notification lost
  with a connection); and a waiter re-reads on its own after ``WATCHDOG``.
Before trusting a new connection, the listener sends itself a probe from
another connection, on a channel of probes: behind PgBouncer in transaction
mode LISTEN runs on a server connection the listener does not keep, the probe
never arrives, and the process falls back on polling for good (with a
warning). Only once a probe arrived does it LISTEN on the table's channel: a
LISTEN left on a server connection that PgBouncer lends to others would hand
every store's notification to whichever client holds it (and psycopg keeps
them, unread, on pooled connections).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .dialects import replace_socket_with_devnull

__all__ = ("Listener", "Watch", "listener_for", "stop_all")

logger = logging.getLogger(__name__)

SAFETY_CHECK = 5.0  # seconds between the listener's re-reads of all watched ids
WATCHDOG = 60.0  # a waiter re-reads on its own at least this often
PROBE_TIMEOUT = 3.0  # a probe that takes longer: notifications do not arrive here
IDLE_CLOSE = 30.0  # seconds without waiters before the connection is closed
TICK = 1.0  # the thread looks up from its socket this often (stop, idle, checks)
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # reconnect pauses, doubling
CHECK_CHUNK = 1000  # ids per safety-check statement
PROBE_PREFIX = "rawbackend-probe:"


class Watch:
    """One waiter's interest in some task ids, from before its first read
    until it is done (a context manager)."""

    __slots__ = ("listener", "ids", "event", "epoch", "deadline")

    def __init__(self, listener: Listener, ids: Iterable[str], deadline: float | None):
        self.listener = listener
        self.ids = frozenset(ids)
        self.event = threading.Event()
        self.deadline = deadline
        # The listening connection that covers this waiter's next read (None:
        # none yet, re-check once one is active).
        self.epoch: int | None = None

    def wait(self, pause: float) -> None:
        """Wait until a notification for one of the ids, or a reason to
        re-check; ``pause`` is the adaptive poll's, used while not listening."""
        listener = self.listener
        epoch = listener.epoch if listener.active else None
        if epoch is None:
            # Not listening (yet, or the connection is down): poll, woken
            # early when a connection comes up.
            self.epoch = None
            if self.event.wait(pause):
                self.event.clear()
            if listener.active:
                # Listening from now on: the read that follows is covered.
                self.epoch = listener.epoch
            return
        if self.epoch != epoch:
            # LISTEN became active after this waiter's last read: a store in
            # between notified nobody. Re-check now; reads from here on are covered.
            self.epoch = epoch
            self.event.clear()
            return
        timeout = WATCHDOG
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
        if self.event.wait(timeout):
            # Cleared before the caller's read: a notification from here on sets it again.
            self.event.clear()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info) -> None:
        self.listener.unwatch(self)


class Listener:
    """One listening connection and the waiters it wakes (one per process,
    database and task table)."""

    def __init__(self, connect: Callable[[], Any], sql: dict[str, str],
                 probe: Callable[[str], None], name: str = ""):
        self._connect = connect  # a new autocommit driver connection
        self._listen_sql = sql["notify_listen"]
        self._listen_probe_sql = sql["notify_listen_probe"]
        self._unlisten_probe_sql = sql["notify_unlisten_probe"]
        self._ready_sql = sql["notify_ready_ids"]
        self._probe = probe  # sends a payload on the channel from another connection
        self.name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._watches: dict[str, set[Watch]] = {}
        self._thread: threading.Thread | None = None
        self._conn = None
        self._stopped = False
        self.active = False
        self.epoch = 0  # one more for each listening connection made active
        self.unusable: str | None = None  # why notifications never arrive here

    # -- waiters ------------------------------------------------------------

    def watch(self, ids: Iterable[str], deadline: float | None = None) -> Watch:
        """Register a waiter for ``ids`` (before its first read); starts the
        listener's thread the first time."""
        watch = Watch(self, ids, deadline)
        with self._cond:
            watch.epoch = self.epoch if self.active else None
            for task_id in watch.ids:
                self._watches.setdefault(task_id, set()).add(watch)
            if self._thread is None and self.unusable is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"rawbackend-listener {self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()  # an idle thread connects again
        return watch

    def unwatch(self, watch: Watch) -> None:
        with self._lock:
            for task_id in watch.ids:
                watchers = self._watches.get(task_id)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._watches[task_id]

    def stop(self) -> None:
        """End the thread and close its connection (within ``TICK``)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _wake(self, task_id: str) -> None:
        with self._lock:
            for watch in self._watches.get(task_id, ()):
                watch.event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for watchers in self._watches.values():
                for watch in watchers:
                    watch.event.set()

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            with self._cond:
                # No waiters: no connection either, until one comes.
                while not self._watches and not self._stopped:
                    self._cond.wait()
            if self._stopped:
                break
            try:
                conn = self._conn = self._connect()
            except Exception as exc:
                logger.info("rawbackend: listener %s: cannot connect (%s); waiters poll", self.name, exc)
            else:
                try:
                    if self._listen(conn):
                        backoff = BACKOFF_FIRST
                        if self._serve(conn):
                            continue  # idle (the finally closes the connection)
                except Exception as exc:  # a lost connection, mostly
                    logger.info("rawbackend: listener %s: %s; waiters poll until it is back",
                                self.name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
                finally:
                    self.active = False
                    self._conn = None
                    self._close(conn)
                if self.unusable is not None:
                    break
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        self.active = False
        self._wake_all()  # waiters poll from here

    def _listen(self, conn) -> bool:
        """Check with a probe that notifications arrive here, then LISTEN."""
        conn.prepare_threshold = None  # nothing server-side to lose (PgBouncer)
        conn.execute(self._listen_probe_sql)
        token = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        self._probe(token)
        arrived = False
        notifies = conn.notifies(timeout=PROBE_TIMEOUT)
        try:
            for notify in notifies:
                if notify.payload == token:  # not another listener's probe
                    arrived = True
                    break
        finally:
            notifies.close()  # it holds the connection's lock until closed
        if not arrived:
            self.unusable = (
                f"a probe notification sent to {self.name} did not arrive within "
                f"{PROBE_TIMEOUT:g}s (PgBouncer in transaction mode?)"
            )
            logger.warning(
                "rawbackend: %s: waiters poll for results in this process. Behind PgBouncer "
                "in transaction mode, set database_notify = False", self.unusable)
            return False
        # The probe came back on this session: it is ours, LISTEN holds on it.
        conn.execute(self._listen_sql)
        conn.execute(self._unlisten_probe_sql)
        with self._lock:
            self.epoch += 1
            self.active = True
        self._wake_all()  # every waiter re-checks: stores before now notified nobody
        return True

    def _serve(self, conn) -> bool:
        """Dispatch notifications until stopped (False) or idle (True)."""
        next_check = time.monotonic() + SAFETY_CHECK
        idle_since = None
        while not self._stopped:
            for notify in conn.notifies(timeout=TICK):
                self._wake(notify.payload)
            now = time.monotonic()
            if now >= next_check:
                self._check(conn)
                next_check = now + SAFETY_CHECK
            if self._watches:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= IDLE_CLOSE:
                return True
        return False

    def _check(self, conn) -> None:
        """Wake the waiters of ids already ready: one statement per
        ``CHECK_CHUNK`` watched ids, none when nobody waits."""
        with self._lock:
            ids = list(self._watches)
        for start in range(0, len(ids), CHECK_CHUNK):
            cursor = conn.execute(self._ready_sql, {"task_ids": ids[start:start + CHECK_CHUNK]})
            for (task_id,) in cursor.fetchall():
                self._wake(task_id)

    def _close(self, conn) -> None:
        try:
            conn.close()
        except Exception:
            logger.debug("closing the listener's connection failed", exc_info=True)

    def _after_fork_in_child(self) -> None:
        # The thread is the parent's and does not run here; its socket is the
        # parent's too: point ours at /dev/null so that nothing (not even
        # garbage collection) can end the parent's session.
        self._stopped = True
        self.active = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                fd = conn.pgconn.socket
            except Exception:  # closed already
                fd = None
            replace_socket_with_devnull(fd)
            _ABANDONED.append(conn)  # never closed: closing takes locks the parent's thread held


# Listeners of this process by (URL, channel).
_LISTENERS: dict[tuple[str, str], Listener] = {}
_LISTENERS_LOCK = threading.Lock()
# Connections inherited in a forked child: kept, their sockets on /dev/null.
_ABANDONED: list = []


def listener_for(key: tuple[str, str], make: Callable[[], Listener]) -> Listener:
    """The process's listener for ``key``, made by ``make()`` the first time."""
    listener = _LISTENERS.get(key)
    if listener is None:
        with _LISTENERS_LOCK:
            listener = _LISTENERS.get(key)
            if listener is None:
                listener = _LISTENERS[key] = make()
    return listener


def stop_all() -> None:
    """Stop every listener of this process (their connections close within ``TICK``)."""
    with _LISTENERS_LOCK:
        listeners = list(_LISTENERS.values())
        _LISTENERS.clear()
    for listener in listeners:
        listener.stop()


def _after_fork_in_child() -> None:
    global _LISTENERS_LOCK
    _LISTENERS_LOCK = threading.Lock()  # may have been held by a parent's thread
    listeners = list(_LISTENERS.values())
    _LISTENERS.clear()
    for listener in listeners:
        listener._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
