"""End-to-end operations: through a real ``celery worker`` and a real broker.

Each contender (rawbackend ``rawdb+URL``, Celery's ``db+URL``, Celery's Redis
backend with ``--redis``) gets a worker of its own (prefork, 2 processes),
started on first use, all on one broker: RabbitMQ (``--broker``,
$RAWBACKEND_BENCH_BROKER), or kombu's ``filesystem://`` in a temp folder when
no broker answers. Every worker consumes a queue of this run's own (a unique
name, deleted at the end) and runs in its own process group, always stopped.

- ``e2e_delay``: ``add.delay(1, 1).get()``;
- ``e2e_chord``: ``chord(add.s(i, i) for i in range(20))(tsum.s()).get()``;
- ``e2e_group``: ``group(add.s(i, i) for i in range(100))().get()``;
- ``idle_waiters``: 100 threads of this process each wait 5 s
  (``AsyncResult(id).get(timeout=5)``) on ids that never complete: how many
  queries they cause. No worker is needed for it.

The clients use Celery's defaults (``get()``'s interval, chord_unlock's
retry interval); Celery's db+ client is pooled as in a worker child, so that
100 waiting threads hold 15 connections at most, as rawbackend's pool does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery, chord, group
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from .floor import TASK_TABLE, Floor, mask, table_conf

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
BROKER_ENV = "RAWBACKEND_BENCH_BROKER"
START_TIMEOUT = 60.0  # seconds for a worker to run its first task
GET_TIMEOUT = 60.0  # seconds for one end-to-end call
CHORD_SIZE = 20
GROUP_SIZE = 100

TASKS_MODULE = textwrap.dedent('''
    """The benchmark's tasks; the app's conf comes from conf.json beside this file."""
    import json
    import os

    from celery import Celery

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf.json")) as f:
        CONF = json.load(f)

    app = Celery("benche2e")
    app.conf.update(CONF)


    @app.task
    def add(x, y):
        return x + y


    @app.task
    def tsum(values):
        return sum(values)
''')


def broker_answers(url: str, timeout: float = 2.0) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False


class Worker:
    """One ``celery worker`` subprocess (prefork, 2 processes) for one contender."""

    def __init__(self, workdir: Path, conf: dict[str, Any], name: str):
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "conf.json").write_text(json.dumps(conf))
        (workdir / "tasksmod.py").write_text(TASKS_MODULE)
        self.log_path = workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.workdir), PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasksmod", "worker", "--pool", "prefork",
                 "--concurrency", "2", "--loglevel", "WARNING", "-n", f"{self.name}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)  # its group: the pool too

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the {self.name} worker exited with {self.proc.returncode}: "
                               f"{self.log()[-2000:]}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()  # warm shutdown
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its pool
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class QueryCounter:
    """Statements this process sends to the database, with their times.

    rawbackend: its ``echo`` engine option logs each statement to
    ``rawbackend.echo``; Celery's db+: SQLAlchemy's ``before_cursor_execute``.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()

    def hit(self, *_: Any, **__: Any) -> None:
        now = time.perf_counter()
        with self._lock:
            self.times.append(now)

    def between(self, t0: float, t1: float) -> int:
        return sum(1 for t in self.times if t0 <= t <= t1)


class _CountingHandler(logging.Handler):
    def __init__(self, counter: QueryCounter):
        super().__init__(logging.INFO)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.hit()


class EndToEnd:
    """The end-to-end operations of one database, and what they start."""

    def __init__(self, bench: Any, broker_url: str | None):
        self.bench = bench
        self.loc = bench.loc
        self.settings = bench.settings
        self.run_id = uuid.uuid4().hex[:10]
        self.queue = f"rawbackend-bench-{self.run_id}"
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rawbackend-e2e-"))
        self.broker_url = broker_url or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
        self.redis_prefix = f"rawbackend-bench-{self.run_id}-"
        self.workers: dict[str, Worker] = {}
        self.clients: dict[str, Celery] = {}
        self._broker_checked = False

    # -- contenders, broker, workers -----------------------------------------
    @property
    def contenders(self) -> list[str]:
        names = [n for n in ("rawbackend", "celery") if n in self.bench.backends]
        return names + (["redis"] if "redis" in self.bench.backends else [])

    def backend_url(self, name: str) -> str:
        return {"rawbackend": self.loc.rawdb_url, "celery": self.loc.celery_url,
                "redis": self.bench.redis_url}[name]

    def _broker_conf(self) -> dict[str, Any]:
        if not self._broker_checked:
            self._broker_checked = True
            if not self.broker_url.startswith("filesystem:") and not broker_answers(self.broker_url):
                self.bench.notes.append(f"e2e: no broker answers at {mask(self.broker_url)}; "
                                        "using kombu's filesystem:// instead")
                self.broker_url = "filesystem://"
            else:
                self.bench.notes.append(f"e2e: broker {mask(self.broker_url)}, "
                                        f"queue {self.queue}")
        if not self.broker_url.startswith("filesystem:"):
            return {"broker_url": self.broker_url}
        folder = self.tmpdir / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {"broker_url": "filesystem://", "broker_transport_options": {
            "data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"), "store_processed": False,
            "polling_interval": 0.05, "control_folder": str(folder / "control")}}

    def conf(self, name: str) -> dict[str, Any]:
        conf: dict[str, Any] = {
            **self._broker_conf(),
            "result_backend": self.backend_url(name),
            "task_default_queue": f"{self.queue}-{name}",
            "result_serializer": "json", "accept_content": ["json"],
            "result_accept_content": ["json"],
            "worker_enable_remote_control": False,
            "broker_connection_retry_on_startup": True,
        }
        if name == "redis":  # only our keys, deleted at the end
            conf["result_backend_transport_options"] = {"global_keyprefix": self.redis_prefix}
        else:
            conf.update(table_conf(self.loc.dialect))
        return conf

    def client(self, name: str) -> Celery:
        app = self.clients.get(name)
        if app is None:
            app = Celery("bench-e2e", set_as_current=False)
            app.conf.update(self.conf(name))
            if name == "celery":
                app.backend.session_manager.forked = True  # pooled, see the module's doc
            self.clients[name] = app
        return app

    def worker(self, name: str) -> Worker:
        """The contender's worker, started (and its first task run) on first use."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.check()
            return worker
        worker = self.workers[name] = Worker(self.tmpdir / name, self.conf(name), f"bench-{name}")
        worker.start()
        app = self.client(name)
        result = app.send_task("tasksmod.add", (0, 0))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            worker.check()
            try:
                result.get(timeout=1)
                return worker
            except CeleryTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} worker ran no task within {START_TIMEOUT:g}s: "
                                       f"{worker.log()[-2000:]}") from None

    def close(self) -> None:
        """Stop the workers, delete the queues (and Redis keys) of this run."""
        problems = []
        for worker in self.workers.values():
            try:
                worker.stop()
            except Exception as exc:
                problems.append(f"stopping {worker.name}: {exc}")
        if self.workers and not self.broker_url.startswith("filesystem:"):
            try:
                app = next(iter(self.clients.values()))
                with app.connection_for_write() as conn:
                    channel = conn.default_channel
                    for name in self.workers:
                        channel.queue_delete(f"{self.queue}-{name}")
                        channel.exchange_delete(f"{self.queue}-{name}")
            except Exception as exc:
                problems.append(f"deleting the queues {self.queue}-*: {exc}")
        if "redis" in self.clients:
            try:
                client = self.clients["redis"].backend.client
                keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
                for start in range(0, len(keys), 1000):
                    client.delete(*keys[start:start + 1000])
            except Exception as exc:
                problems.append(f"deleting the Redis keys {self.redis_prefix}*: {exc}")
        for name, app in self.clients.items():
            try:
                if name != "redis":
                    app.backend.session_manager.invalidate(app.backend.url)
                app.close()
            except Exception as exc:
                problems.append(f"closing the {name} client: {exc}")
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.bench.notes.extend(f"e2e: {p}" for p in problems)

    # -- the operations ------------------------------------------------------
    def operations(self) -> list[Any]:
        from .operations import Call, Operation, timed_batch

        s = self.settings
        batch = dataclasses.replace(s, budget=s.e2e_budget, min_calls=3, max_calls=200)

        def latency(key: str, title: str, run: Any) -> Operation:
            def measure(name: str) -> Any:
                self.worker(name)
                app = self.client(name)
                return timed_batch(Call(lambda: app, run), batch)
            return Operation(key, title, "latency", "s", self.contenders, measure,
                             rounds=s.e2e_rounds)

        ops = [
            # First: it needs no worker, and no worker's queries are in its counts.
            Operation("idle_waiters", f"{s.waiters} threads waiting {s.wait_seconds:g} s on PENDING ids",
                      "rate", "queries/s", [n for n in self.contenders if n != "redis"],
                      self._waiters_round, rounds=s.e2e_rounds, warmup=False),
            latency("e2e_delay", "add.delay(1, 1).get() through a worker", _delay_get),
            latency("e2e_chord", f"chord of {CHORD_SIZE} adds + tsum, .get(), through a worker",
                    _chord_get),
            latency("e2e_group", f"group of {GROUP_SIZE} adds, .get(), through a worker", _group_get),
        ]
        return ops

    def _waiters_round(self, name: str) -> Any:
        from .operations import Sample

        s = self.settings
        app = Celery("bench-waiters", set_as_current=False)
        conf = {k: v for k, v in self.conf(name).items() if not k.startswith("broker")}
        if name == "rawbackend":
            conf["database_engine_options"] = {"echo": True}
            # The target is for waiters woken by notifications (PostgreSQL;
            # ignored elsewhere), which users turn on where many wait.
            conf["database_notify"] = True
        app.conf.update(conf)
        backend = app.backend
        counter = QueryCounter()
        undo = self._count_queries(name, backend, counter)
        server0 = self._server_count()
        start = threading.Barrier(s.waiters + 1)
        errors: list[str] = []

        def wait() -> None:
            result = AsyncResult(str(uuid.uuid4()), app=app, backend=backend)
            start.wait(30)
            try:
                result.get(timeout=s.wait_seconds)
                errors.append("a PENDING id completed")
            except CeleryTimeoutError:
                pass
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=wait, daemon=True) for _ in range(s.waiters)]
        try:
            for thread in threads:
                thread.start()
            start.wait(30)
            t0 = time.perf_counter()
            for thread in threads:
                thread.join(s.wait_seconds + 60)
            t1 = time.perf_counter()
        finally:
            undo()
            if name == "celery":
                backend.session_manager.forked = False
                for engine in backend.session_manager._engines.values():
                    engine.dispose()
            else:
                backend.session_manager.invalidate(backend.url)
            app.close()
        if errors:
            raise RuntimeError(f"{len(errors)} waiters failed: {errors[0]}")
        elapsed = t1 - t0
        total = counter.between(t0, t1)
        later = counter.between(t0 + 1.0, t0 + s.wait_seconds)
        extra = {"per_waiter_after_1s": later / (s.waiters * (s.wait_seconds - 1.0)),
                 "seconds": elapsed, "queries": float(total)}
        server = self._server_count(after=True)
        if server is not None and server0 is not None:
            extra["server_qps"] = (server - server0) / elapsed
        return Sample([total / elapsed], extra)

    def _count_queries(self, name: str, backend: Any, counter: QueryCounter) -> Any:
        if name == "rawbackend":
            echo = logging.getLogger("rawbackend.echo")
            handler = _CountingHandler(counter)
            saved = echo.level, echo.propagate
            echo.setLevel(logging.INFO)
            echo.propagate = False  # counted, not printed
            echo.addHandler(handler)

            def undo() -> None:
                echo.removeHandler(handler)
                echo.setLevel(saved[0])
                echo.propagate = saved[1]
            return undo
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        backend.session_manager.forked = True  # pooled: see the module's doc
        event.listen(Engine, "before_cursor_execute", counter.hit)
        return lambda: event.remove(Engine, "before_cursor_execute", counter.hit)

    def _server_count(self, after: bool = False) -> float | None:
        """What the server counted: PostgreSQL, scans of the task table
        (flushed when a connection closes: read after the waiters' pools are
        closed, and a moment for their server processes to end); MySQL,
        Com_select of the whole server (other sessions' selects included)."""
        if self.loc.dialect == "sqlite":
            return None
        if after and self.loc.dialect == "postgresql":
            time.sleep(0.5)
        floor = Floor(self.loc)
        try:
            if self.loc.dialect == "postgresql":
                from . import floor as floor_module  # the schema in force (--schema)

                floor.cur.execute(
                    "SELECT COALESCE(SUM(COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0)), 0)"
                    " FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                    (floor_module.SCHEMA, TASK_TABLE))
            else:
                floor.cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            row = floor.cur.fetchone()
            return float(row[-1])
        finally:
            floor.close()


def _delay_get(app: Celery) -> Any:
    return app.send_task("tasksmod.add", (1, 1)).get(timeout=GET_TIMEOUT)


def _chord_get(app: Celery) -> Any:
    header = [app.signature("tasksmod.add", (i, i)) for i in range(CHORD_SIZE)]
    return chord(header)(app.signature("tasksmod.tsum")).get(timeout=GET_TIMEOUT)


def _group_get(app: Celery) -> Any:
    return group(app.signature("tasksmod.add", (i, i)) for i in range(GROUP_SIZE))().get(
        timeout=GET_TIMEOUT)
