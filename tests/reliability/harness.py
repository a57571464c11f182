"""The campaign's machinery: writer and reader processes (forked, each building
its backend from a Celery app after the fork, as a worker does), a pinger that
measures how long a server did not answer, a killer of the backend's
connections, and the exactly-once check with a bare driver.

Every loop has a hard bound and every wait a timeout.
"""
from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery, states
from celery.result import AsyncResult

from conftest import Database, raw_connect, wait_until

CTX = multiprocessing.get_context("fork")
JOIN_TIMEOUT = 300.0  # seconds a process may take to finish once told to stop
READ_PAUSE = 0.002  # readers poll, they do not spin: 2 cores are shared


def task_id(prefix: str, writer: int, thread: int, k: int) -> str:
    return f"{prefix}-{writer}-{thread}-{k}"


def value_of(writer: int, thread: int, k: int) -> dict:
    return {"w": writer, "t": thread, "k": k}


def worker_app(url: str, conf: dict, prefix: str = "rawdb+") -> Celery:
    """What a worker process builds: an app, then its backend on first use."""
    app = Celery("reliability", set_as_current=False)
    app.conf.update(result_backend=prefix + url, **conf)
    return app


class _Counter(logging.Handler):
    """Counts Celery's "Failed operation ... Retrying" warnings and rawbackend's
    "running the statement again": the retries, by code and by Celery's loop."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.celery_retries = 0
        self.statement_reruns = 0
        self.events: list[tuple[float, str, str]] = []  # (when, thread, what): the first 200

    def emit(self, record):
        message = record.getMessage()
        if record.name.startswith("celery") and "Retrying" in message:
            self.celery_retries += 1
            what = f"retry: {record.exc_info[1]!r}" if record.exc_info else message
        elif record.name.startswith("rawbackend") and "again" in message:
            self.statement_reruns += 1
            what = message
        else:
            return
        if len(self.events) < 200:
            self.events.append((time.monotonic(), record.threadName, what[:160]))


def _count_retries() -> _Counter:
    counter = _Counter()
    for name in ("celery.backends.base", "rawbackend"):
        logger = logging.getLogger(name)
        logger.addHandler(counter)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the counts are the report; no stderr noise
    return counter


def _child(target, out: Path, *args) -> None:
    """Run ``target`` in the forked child; its dict (or its traceback) goes to
    ``out`` as JSON, and the exit code says whether it crashed."""
    try:
        report = target(*args)
    except BaseException:
        out.write_text(json.dumps({"crashed": traceback.format_exc()}))
        os._exit(1)
    out.write_text(json.dumps(report))
    os._exit(0)


def _writer(url, conf, prefix, app_prefix, writer, threads, per_thread, progress, stop):
    counter = _count_retries()
    backend = worker_app(url, conf, app_prefix).backend
    results = [None] * threads

    def loop(thread: int) -> None:
        slot = writer * threads + thread
        attempted, failed, timings = 0, [], []
        longest, longest_at = 0.0, None
        first = time.monotonic()
        while attempted < per_thread and not stop.is_set():
            tid = task_id(prefix, writer, thread, attempted)
            began = time.monotonic()
            try:
                backend.store_result(tid, value_of(writer, thread, attempted), states.SUCCESS)
            except Exception as exc:  # counted: the test says what it means
                failed.append(f"{tid}: {exc!r}"[:300])
            took = time.monotonic() - began
            timings.append((began, took))
            if took > longest:
                longest, longest_at = took, began
            attempted += 1
            progress[slot] = attempted
        results[thread] = {
            "attempted": attempted, "failed": failed, "longest": longest,
            "longest_at": longest_at, "first": first, "last": time.monotonic(),
            "timings": timings,
        }

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    backend.session_manager.invalidate(backend.url)
    return {"threads": results, "celery_retries": counter.celery_retries,
            "statement_reruns": counter.statement_reruns, "events": counter.events}


def _reader(url, conf, prefix, app_prefix, seed, writers, threads, progress, stop):
    counter = _count_retries()
    app = worker_app(url, conf, app_prefix)
    backend = app.backend
    rng = random.Random(seed)
    reads, errors, wrong, longest = 0, [], [], 0.0
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        writer, thread = rng.randrange(writers), rng.randrange(threads)
        done = progress[writer * threads + thread]
        if not done:
            time.sleep(READ_PAUSE)
            continue
        k = rng.randrange(done)  # stored already: must read back as SUCCESS
        tid = task_id(prefix, writer, thread, k)
        began = time.monotonic()
        try:
            if reads % 2:
                state = AsyncResult(tid, app=app).state
                meta = {"status": state, "result": value_of(writer, thread, k)}
            else:
                meta = backend.get_task_meta(tid, cache=False)
        except Exception as exc:
            errors.append(f"{tid}: {exc!r}"[:300])
        else:
            if meta["status"] != states.SUCCESS or meta["result"] != value_of(writer, thread, k):
                wrong.append(f"{tid}: {meta['status']} {meta['result']!r}"[:300])
        longest = max(longest, time.monotonic() - began)
        reads += 1
        time.sleep(READ_PAUSE)
    backend.session_manager.invalidate(backend.url)
    return {"reads": reads, "errors": errors, "wrong": wrong, "longest": longest,
            "celery_retries": counter.celery_retries}


@dataclass
class Outcome:
    """What the processes reported, summed up."""

    stores: int
    failed: list[str]
    longest: float  # the slowest single store, seconds
    longest_at: float | None  # when it began (time.monotonic, shared by all processes)
    wall: float  # first store began .. last store ended, seconds
    celery_retries: int
    statement_reruns: int
    reads: int
    read_errors: list[str]
    wrong_reads: list[str]
    longest_read: float
    exit_codes: list[int]
    crashes: list[str]
    expected: set[str] = field(repr=False)
    hung: list[str] = field(default_factory=list)  # killed after the join timeout
    window: tuple[float, float] | None = None  # the outage, when one was measured
    events: list = field(default_factory=list, repr=False)  # the writers' retries, in time order
    timings: list = field(default_factory=list, repr=False)  # (began, seconds) of every store

    @property
    def throughput(self) -> float:
        return self.stores / self.wall if self.wall > 0 else 0.0


class Load:
    """``writers`` processes x ``threads`` threads storing results, each under
    its own task ids, while ``readers`` processes poll the stored ones."""

    def __init__(self, db: Database, out: Path, prefix: str, per_thread: int, *,
                 writers: int = 4, threads: int = 2, readers: int = 2,
                 app_prefix: str = "rawdb+", **conf):
        self.db, self.out, self.prefix = db, out, prefix
        self.writers, self.threads, self.readers = writers, threads, readers
        self.per_thread = per_thread
        self.url, self.app_prefix = db.url, app_prefix
        if app_prefix == "db+":  # Celery's own backend wants the SQLAlchemy driver names
            self.url = self.url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
                "mysql://", "mysql+pymysql://", 1)
        self.conf = db.conf(**conf)
        self.progress = CTX.Array("q", writers * threads, lock=False)
        self.stop_writers = CTX.Event()
        self.stop_readers = CTX.Event()
        self.processes: list = []
        out.mkdir(parents=True, exist_ok=True)

    def stored(self) -> int:
        return sum(self.progress)

    def writers_alive(self) -> bool:
        return any(p.is_alive() for p in self.processes[: self.writers])

    def start(self) -> Load:
        if self.app_prefix == "rawdb+":
            # The tables first, from the parent: workers racing to create them
            # on a fresh MariaDB can fail a first store (CREATE SEQUENCE IF NOT
            # EXISTS returns before the other session's sequence is usable:
            # 1146), a set-up race that is not what this campaign measures.
            backend = worker_app(self.url, self.conf).backend
            backend.store_result(f"warm.{self.prefix}", None, states.SUCCESS)
            backend.session_manager.invalidate(backend.url)
        common = (self.url, self.conf, self.prefix, self.app_prefix)
        for w in range(self.writers):
            self._spawn(_writer, f"writer{w}", *common, w, self.threads, self.per_thread,
                        self.progress, self.stop_writers)
        for r in range(self.readers):
            self._spawn(_reader, f"reader{r}", *common, r, self.writers, self.threads,
                        self.progress, self.stop_readers)
        return self

    def _spawn(self, target, name, *args):
        process = CTX.Process(target=_child, args=(target, self.out / f"{name}.json", *args),
                              name=name, daemon=True)
        process.start()
        self.processes.append(process)

    def wait_stored(self, count: int, what: str, timeout: float = 120) -> None:
        wait_until(lambda: self.stored() >= count or not self.writers_alive(), what, timeout)

    def finish(self, stop: bool = False, timeout: float = JOIN_TIMEOUT,
               check: bool = True) -> Outcome:
        """Wait for the writers (told to stop first if ``stop``), then stop the
        readers; kill whatever outlives ``timeout`` and (``check``) say so."""
        if stop:
            self.stop_writers.set()
        deadline = time.monotonic() + timeout
        try:
            for p in self.processes[: self.writers]:
                p.join(max(0.1, deadline - time.monotonic()))
        finally:
            self.stop_readers.set()
            for p in self.processes:
                p.join(max(0.1, deadline - time.monotonic()))
            hung = [p.name for p in self.processes if p.is_alive()]
            for p in self.processes:
                if p.is_alive():
                    p.kill()
                    p.join(10)
        assert not (check and hung), f"processes still running after {timeout:g}s: {hung}"
        outcome = self._outcome()
        outcome.hung = hung
        return outcome

    def _outcome(self) -> Outcome:
        reports = {}
        for p in self.processes:
            path = self.out / f"{p.name}.json"
            reports[p.name] = json.loads(path.read_text()) if path.exists() else {"crashed": "no report"}
        crashes = [f"{name}: {r['crashed']}" for name, r in reports.items() if "crashed" in r]
        threads = [(w, t, r) for w in range(self.writers)
                   for t, r in enumerate(reports[f"writer{w}"].get("threads") or [])]
        readers = [reports[f"reader{r}"] for r in range(self.readers)]
        readers = [r for r in readers if "crashed" not in r]
        slowest = max((r for _, _, r in threads), key=lambda r: r["longest"], default=None)
        writers = [reports[f"writer{w}"] for w in range(self.writers)]
        return Outcome(
            stores=sum(r["attempted"] for _, _, r in threads),
            failed=[f for _, _, r in threads for f in r["failed"]],
            longest=slowest["longest"] if slowest else 0.0,
            longest_at=slowest["longest_at"] if slowest else None,
            wall=(max((r["last"] for _, _, r in threads), default=0.0)
                  - min((r["first"] for _, _, r in threads), default=0.0)),
            celery_retries=sum(w.get("celery_retries", 0) for w in writers),
            statement_reruns=sum(w.get("statement_reruns", 0) for w in writers),
            reads=sum(r["reads"] for r in readers),
            read_errors=[e for r in readers for e in r["errors"]],
            wrong_reads=[e for r in readers for e in r["wrong"]],
            longest_read=max((r["longest"] for r in readers), default=0.0),
            exit_codes=[p.exitcode for p in self.processes],
            crashes=crashes,
            events=sorted(tuple(e) for w in writers for e in w.get("events", ())),
            timings=sorted(tuple(t) for _, _, r in threads for t in r.get("timings", ())),
            expected={task_id(self.prefix, w, t, k)
                      for w, t, r in threads for k in range(r["attempted"])},
        )


def check_stored_exactly_once(db: Database, prefix: str, outcome: Outcome) -> None:
    """Every attempted store is in the table once, SUCCESS with its value: a
    bare-driver look, with COUNT and COUNT(DISTINCT)."""
    mark = "?" if db.dialect == "sqlite" else "%s"
    table = db.qualified(db.task_table)
    pattern = (f"{prefix}-%",)
    [(count, distinct)] = db.query(
        f"SELECT COUNT(*), COUNT(DISTINCT task_id) FROM {table} WHERE task_id LIKE {mark}", pattern)
    assert (count, distinct) == (len(outcome.expected),) * 2, \
        f"{count} rows, {distinct} distinct task ids, {len(outcome.expected)} stores attempted"
    rows = db.query(f"SELECT task_id, status, result FROM {table} WHERE task_id LIKE {mark}", pattern)
    assert {row[0] for row in rows} == outcome.expected
    bad = []
    for tid, status, result in rows:
        writer, thread, k = (int(part) for part in tid.rsplit("-", 3)[1:])
        if status != states.SUCCESS or json.loads(bytes(result)) != value_of(writer, thread, k):
            bad.append((tid, status, result))
    assert not bad, f"{len(bad)} rows with a wrong state or value, e.g. {bad[:3]}"


def lost(db: Database, prefix: str, outcome: Outcome) -> set[str]:
    """Stores that raised and never reached the table."""
    mark = "?" if db.dialect == "sqlite" else "%s"
    rows = db.query(f"SELECT task_id FROM {db.qualified(db.task_table)} "
                    f"WHERE task_id LIKE {mark}", (f"{prefix}-%",))
    raised = {failure.split(":", 1)[0] for failure in outcome.failed}
    return raised - {row[0] for row in rows}


def check_no_harm(outcome: Outcome) -> None:
    """0 raised to a caller, 0 crashed, 0 read errors or wrong reads."""
    assert outcome.crashes == [], outcome.crashes[:2]
    assert outcome.exit_codes == [0] * len(outcome.exit_codes), outcome.exit_codes
    assert outcome.failed == [], f"{len(outcome.failed)} stores raised, e.g. {outcome.failed[:3]}"
    assert outcome.read_errors == [], \
        f"{len(outcome.read_errors)} reads raised, e.g. {outcome.read_errors[:3]}"
    assert outcome.wrong_reads == [], \
        f"{len(outcome.wrong_reads)} wrong reads, e.g. {outcome.wrong_reads[:3]}"


PING_TABLE = "reliability_ping"


class Pinger(threading.Thread):
    """Writes a row on a new connection every ``interval`` seconds, as a store
    does. The outage is the longest gap between two answers: a refused
    connect, one that hangs (MariaDB listens before it is ready to serve) and
    a write that fails all count as no answer. An upper bound of the outage,
    by one interval and one connect."""

    def __init__(self, server, interval: float = 0.02, bound: float = 600):
        super().__init__(daemon=True)
        self.server, self.interval, self.bound = server, interval, bound
        self.halt = threading.Event()
        self.answered: list[float] = []  # when each answer came (time.monotonic)

    def run(self):
        self.answered.append(time.monotonic())  # it answered the load just before
        deadline = time.monotonic() + self.bound
        while not self.halt.is_set() and time.monotonic() < deadline:
            if self.server.writes(f"INSERT INTO {PING_TABLE} (n) VALUES (1)"):
                self.answered.append(time.monotonic())
            self.halt.wait(self.interval)

    @property
    def window(self) -> tuple[float, float] | None:
        """(an answer, the next one) around the longest gap."""
        gaps = list(itertools.pairwise(self.answered))
        return max(gaps, key=lambda gap: gap[1] - gap[0], default=None)

    @property
    def longest(self) -> float:
        window = self.window
        return window[1] - window[0] if window else 0.0

    def __enter__(self) -> Pinger:
        assert self.server.writes(f"CREATE TABLE IF NOT EXISTS {PING_TABLE} (n INTEGER)")
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(30)
        self.server.wait_up()
        self.server.writes(f"DROP TABLE IF EXISTS {PING_TABLE}")


# The backend's connections on the test database, from a connection of our own.
_CONNECTIONS = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    "mysql": "SELECT id FROM information_schema.processlist "
             "WHERE db = DATABASE() AND id <> CONNECTION_ID()",
}
_KILL = {"postgresql": "SELECT pg_terminate_backend(%s)", "mysql": "KILL %s"}


class Killer(threading.Thread):
    """Kills one of the backend's connections at random moments, ``kills``
    times at most (a pause of ``pause`` seconds, random, between two)."""

    def __init__(self, db: Database, kills: int, pause=(0.05, 0.3), seed: int = 7):
        super().__init__(daemon=True)
        self.db, self.kills, self.pause = db, kills, pause
        self.rng = random.Random(seed)
        self.killed = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        conn = raw_connect(self.db.dialect, self.db.url)
        try:
            cursor = conn.cursor()
            for _ in range(self.kills * 20):  # bounded: rounds with nothing to kill count too
                if self.killed >= self.kills or self.halt.wait(self.rng.uniform(*self.pause)):
                    break
                cursor.execute(_CONNECTIONS[self.db.dialect])
                ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    continue
                try:
                    cursor.execute(_KILL[self.db.dialect], (self.rng.choice(ids),))
                    cursor.fetchall()
                    self.killed += 1
                except Exception as exc:  # gone already (MariaDB: unknown thread id)
                    if "Unknown thread" not in str(exc):
                        raise
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()
