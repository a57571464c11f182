"""The operations the benchmark measures, each for every contender.

Contenders, on one database:

- ``rawbackend``: ``rawdb+URL`` through Celery's entry point, as users reach it.
- ``celery``: Celery 5.7.0's SQLAlchemy backend (``db+URL``) with its pool on,
  as in a prefork worker child (``session_manager.forked = True``): its best case.
- ``celery`` in the never-forked client operation: the same backend left as
  Celery builds it in a process that never forked (NullPool: a new connection
  per call), as in a web app or the solo/threads pools.
- ``floor``: the one statement the operation needs, on a kept-open connection
  of the bare driver (see ``floor.py``).
- ``redis``: Celery's Redis backend, only with ``--redis URL`` (and for cold start).

An operation measures one contender for one round and returns a `Sample`.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.util
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from celery import Celery, states
from celery.result import AsyncResult, GroupResult
from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads

from . import floor as floor_module
from .floor import Floor, Location, table_conf

SMALL_RESULT: dict[str, Any] = {"user_id": 1234, "status": "ok", "items": 3}
# About 10 KB once encoded as JSON.
LARGE_RESULT: dict[str, Any] = {
    "rows": [{"id": i, "name": f"row-{i:04d}", "value": i * 1.5} for i in range(210)]}
STARTED_META: dict[str, Any] = {"pid": 4242, "hostname": "celery@bench"}

PREPARED_ROWS = 200  # rows read by the get/exists benchmarks
GROUP_SIZE = 10
JOIN_SIZE = 100

COLDSTART_SCRIPT = Path(__file__).with_name("coldstart.py")


@dataclass
class Settings:
    """How long and how hard to measure (``--quick`` shrinks every number)."""

    rounds: int = 10           # rounds of the latency operations
    heavy_rounds: int = 5      # rounds of cleanup, prefork and cold start
    budget: float = 0.2        # seconds per contender per round of a latency operation
    min_calls: int = 3
    max_calls: int = 2000
    cleanup_rows: int = 100_000
    prefork_procs: int = 2
    prefork_stores: int = 1000  # stores per child...
    prefork_seconds: float = 2.0  # ...or fewer, if the child has stored this long
    client_pause: float = 0.002  # between the stores of the concurrent storer
    e2e: bool = True            # the end-to-end operations (endtoend.py)
    e2e_rounds: int = 3
    e2e_budget: float = 1.0     # seconds per contender per round (at least 3 calls)
    waiters: int = 100          # threads of idle_waiters...
    wait_seconds: float = 5.0   # ...and how long each waits

    @classmethod
    def quick(cls) -> Settings:
        # No end-to-end operations unless --only names them (workers, a broker).
        return cls(rounds=3, heavy_rounds=1, budget=0.05, cleanup_rows=10_000, prefork_stores=100,
                   e2e=False, e2e_rounds=2)


@dataclass
class Sample:
    """One contender in one round: per-call seconds, or one measured value."""

    values: list[float]
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Operation:
    key: str
    title: str
    kind: str                   # latency | throughput | cleanup | coldstart
    unit: str                   # what `Sample.values` holds
    contenders: list[str]
    measure: Callable[[str], Sample]
    heavy: bool = False
    rounds: int | None = None     # instead of Settings.rounds / heavy_rounds
    warmup: bool | None = None    # default: a warm-up round unless heavy

    @property
    def warms_up(self) -> bool:
        return not self.heavy if self.warmup is None else self.warmup

    def round_count(self, settings: Settings) -> int:
        if self.rounds is not None:
            return self.rounds
        return settings.heavy_rounds if self.heavy else settings.rounds

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "throughput"


def new_id() -> str:
    return str(uuid.uuid4())


def make_app(backend_url: str, dialect: str, **conf: Any) -> Celery:
    """A Celery app for one contender, pointed at the benchmark's tables."""
    app = Celery("bench", backend=backend_url, set_as_current=False)
    app.conf.update(
        result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        result_cache_max=-1,  # no result cache: every get goes to the database
        **table_conf(dialect), **conf)
    return app


def encode(value: Any) -> bytes:
    """What Celery's JSON serializer writes for ``value``."""
    return json_dumps(value).encode("utf-8")


class Bench:
    """All contenders for one database, and the operations run on them."""

    def __init__(self, loc: Location, settings: Settings, redis_url: str | None = None,
                 coldstart_redis_url: str | None = None, broker_url: str | None = None) -> None:
        self.loc = loc
        self.settings = settings
        self.redis_url = redis_url
        self.coldstart_redis_url = coldstart_redis_url
        self.notes: list[str] = []
        self.backends: dict[str, Any] = {}
        self.apps: dict[str, Celery] = {}
        self.floor: Floor | None = None
        self.storer: Storer | None = None
        self.ids: list[str] = []  # stored rows that get/exists/group/join read
        self.redis_ids: list[str] = []
        self.server = ""
        self.broker_url = broker_url
        self.e2e: Any = None  # endtoend.EndToEnd, made with the operations

    # -- set up and tear down ------------------------------------------------
    def setup(self) -> None:
        floor = self.floor = Floor(self.loc)
        self.server = floor.server_version()
        floor.drop_tables()
        floor.create_schema()
        # Celery's backend creates the tables (database_create_tables_at_setup).
        self._add("celery", self.loc.celery_url)
        self.backends["celery"].session_manager.forked = True  # pooled, as in a worker child
        floor.bind()
        self._add("celery_client", self.loc.celery_url)  # NullPool, as Celery leaves it
        try:
            self._add("rawbackend", self.loc.rawdb_url)
        except Exception as exc:  # reported, and the other contenders still run
            self.notes.append(f"rawbackend not measured: {type(exc).__name__}: {exc}")
        if self.redis_url:
            try:
                self._add("redis", self.redis_url)
                self.backends["redis"].client.ping()
            except Exception as exc:
                self.notes.append(f"redis not measured: {type(exc).__name__}: {exc}")
                self.backends.pop("redis", None)
        self.notes.extend(f"SQLite {k} = {v}" for k, v in floor.pragmas().items())

        # Rows read by get/exists/join, written by the floor (Celery's encoding).
        self.ids = [new_id() for _ in range(PREPARED_ROWS)]
        small = encode(SMALL_RESULT)
        for task_id in self.ids:
            floor.store(task_id, states.SUCCESS, small)
        if "redis" in self.backends:
            for task_id in self.ids:
                self._redis_store(task_id, SMALL_RESULT)
        self._check()

    def _add(self, name: str, url: str) -> None:
        app = make_app(url, self.loc.dialect)
        self.apps[name] = app
        self.backends[name] = app.backend

    def _redis_store(self, task_id: str, result: Any, state: str = states.SUCCESS) -> None:
        self.redis_ids.append(task_id)
        self.backends["redis"].store_result(task_id, result, state)

    def _check(self) -> None:
        """Both backends read what the floor wrote, and write the floor's bytes.

        A contender that fails here is left out of this database's run (and
        the reason is reported); one that reads or writes something else is
        measured, with a note.
        """
        for name in ("rawbackend", "celery"):
            backend = self.backends.get(name)
            if backend is None:
                continue
            try:
                meta = backend.get_task_meta(self.ids[0], cache=False)
                task_id = new_id()
                backend.store_result(task_id, SMALL_RESULT, states.SUCCESS)
            except Exception as exc:
                self.notes.append(f"{name} not measured: {type(exc).__name__}: {exc}")
                del self.backends[name]
                continue
            if meta["status"] != states.SUCCESS or meta["result"] != SMALL_RESULT:
                self.notes.append(f"{name} read {meta!r} for a row the floor wrote")
            row = self.floor.get(task_id) if self.floor else None
            if row is None or bytes(row[2]) != encode(SMALL_RESULT):
                self.notes.append(f"{name} stored {row!r}, not the floor's bytes")

    def teardown(self) -> None:
        """Close every connection and drop the tables; problems become notes."""
        if self.e2e is not None:
            self.e2e.close()
        if self.storer is not None:
            self.storer.close()
        for name, backend in self.backends.items():
            try:
                if name == "redis":
                    for start in range(0, len(self.redis_ids), 1000):
                        keys = [backend.get_key_for_task(i) for i in self.redis_ids[start:start + 1000]]
                        backend.client.delete(*keys)
                else:
                    backend.session_manager.invalidate(backend.url)  # close pooled connections
            except Exception as exc:
                self.notes.append(f"closing {name}: {type(exc).__name__}: {exc}")
        if self.floor is None:
            return
        self.floor.close()
        try:  # on a new connection: the kept-open one may have died with a server restart
            floor = Floor(self.loc)
            floor.drop_tables()
            floor.close()
        except Exception as exc:
            self.notes.append(f"dropping the benchmark's tables failed ({type(exc).__name__}: {exc}): "
                              f"drop {floor_module.SCHEMA!r} (or the bench_* tables on SQLite) by hand")

    @property
    def contenders(self) -> list[str]:
        """The contenders of the latency operations, in their first-round order."""
        names = [n for n in ("rawbackend", "celery") if n in self.backends] + ["floor"]
        return names + (["redis"] if "redis" in self.backends else [])

    # -- the operations ------------------------------------------------------
    def operations(self) -> list[Operation]:
        s = self.settings
        db_contenders = [n for n in self.contenders if n != "redis"]
        ops = [
            self._latency("store_small", "store_result SUCCESS, small result",
                          self._store_calls(SMALL_RESULT, "celery")),
            self._latency("store_10kb", "store_result SUCCESS, ~10 KB result",
                          self._store_calls(LARGE_RESULT, "celery")),
            self._latency("started_success", "store_result STARTED then SUCCESS, one id",
                          self._started_success_calls()),
            self._latency("store_client",
                          "store_result SUCCESS, never-forked client (Celery: NullPool)",
                          self._store_calls(SMALL_RESULT, "celery_client")),
            self._latency("get_hit", "get_task_meta hit (cache off)", self._get_calls(hit=True)),
            self._latency("get_miss", "get_task_meta miss (cache off)", self._get_calls(hit=False)),
            self._latency("exists", "task_result_exists (hit)", self._exists_calls()),
            self._latency("group", f"save_group + restore_group, {GROUP_SIZE} results",
                          self._group_calls()),
            self._latency("join", f"GroupResult.get() (join) of {JOIN_SIZE} finished results",
                          self._join_calls()),
            Operation("cleanup", f"cleanup() of {s.cleanup_rows:,} expired rows", "cleanup", "s",
                      db_contenders, self._cleanup_round, heavy=True),
            Operation("prefork", f"{s.prefork_procs}-process prefork throughput", "throughput",
                      "stores/s", db_contenders, self._prefork_round, heavy=True),
        ]
        cold = [n for n in ("rawbackend", "celery") if n in self.backends]
        if self.coldstart_redis_url:
            cold.append("redis")
        ops.append(Operation("coldstart", "cold start: build app + backend", "coldstart", "s",
                             cold, self._coldstart_round, heavy=True))
        from .endtoend import EndToEnd

        self.e2e = EndToEnd(self, self.broker_url)
        return ops + self.e2e.operations()

    def _latency(self, key: str, title: str, calls: dict[str, Call]) -> Operation:
        def measure(name: str) -> Sample:
            return timed_batch(calls[name], self.settings)
        return Operation(key, title, "latency", "s", [n for n in self.contenders if n in calls],
                         measure)

    def _store_calls(self, result: Any, celery_name: str) -> dict[str, Call]:
        calls: dict[str, Call] = {}
        for name, backend_name in (("rawbackend", "rawbackend"), ("celery", celery_name)):
            if backend_name in self.backends:
                calls[name] = Call(new_id, _storer(self.backends[backend_name], result))
        floor = self.floor
        calls["floor"] = Call(new_id, lambda task_id: floor.store(task_id, states.SUCCESS, encode(result)))
        if "redis" in self.backends:
            def redis_store(task_id: str) -> None:
                self._redis_store(task_id, result)
            calls["redis"] = Call(new_id, redis_store)
        return calls

    def _started_success_calls(self) -> dict[str, Call]:
        def backend_call(backend: Any) -> Callable[[str], None]:
            def run(task_id: str) -> None:
                backend.store_result(task_id, STARTED_META, states.STARTED)
                backend.store_result(task_id, SMALL_RESULT, states.SUCCESS)
            return run

        def floor_call(task_id: str) -> None:
            self.floor.store(task_id, states.STARTED, encode(STARTED_META))
            self.floor.store(task_id, states.SUCCESS, encode(SMALL_RESULT))

        calls = {name: Call(new_id, backend_call(self.backends[name]))
                 for name in ("rawbackend", "celery") if name in self.backends}
        calls["floor"] = Call(new_id, floor_call)
        return calls

    def _get_calls(self, hit: bool) -> dict[str, Call]:
        prepare = itertools.cycle(self.ids).__next__ if hit else new_id

        def backend_call(backend: Any) -> Callable[[str], Any]:
            return lambda task_id: backend.get_task_meta(task_id, cache=False)

        def floor_call(task_id: str) -> Any:
            row = self.floor.get(task_id)
            return None if row is None else json_loads(row[2])

        calls = {name: Call(prepare, backend_call(b)) for name, b in self.backends.items()
                 if name in ("rawbackend", "celery", "redis")}
        calls["floor"] = Call(prepare, floor_call)
        return calls

    def _exists_calls(self) -> dict[str, Call]:
        prepare = itertools.cycle(self.ids).__next__
        calls = {name: Call(prepare, self.backends[name].task_result_exists)
                 for name in ("rawbackend", "celery") if name in self.backends}
        calls["floor"] = Call(prepare, self.floor.exists)
        return calls

    def _group_calls(self) -> dict[str, Call]:
        members = self.ids[:GROUP_SIZE]

        def backend_call(name: str) -> Call:
            app, backend = self.apps[name], self.backends[name]

            def prepare() -> GroupResult:
                return GroupResult(new_id(), [AsyncResult(i, app=app) for i in members], app=app)

            def run(group: GroupResult) -> Any:
                backend.save_group(group.id, group)
                return backend.restore_group(group.id, cache=False)
            return Call(prepare, run)

        def floor_prepare() -> tuple[str, Any]:
            group_id = new_id()
            return group_id, ((group_id, None), [((i, None), None) for i in members])

        def floor_run(arg: tuple[str, Any]) -> Any:
            group_id, value = arg
            self.floor.save_group(group_id, encode(value))
            return json_loads(self.floor.restore_group(group_id)[1])

        calls = {name: backend_call(name) for name in ("rawbackend", "celery") if name in self.backends}
        calls["floor"] = Call(floor_prepare, floor_run)
        return calls

    def _join_calls(self) -> dict[str, Call]:
        members = self.ids[:JOIN_SIZE]

        def backend_call(name: str) -> Call:
            app, backend = self.apps[name], self.backends[name]

            def prepare() -> GroupResult:
                # Fresh AsyncResults: a finished one caches its meta.
                return GroupResult(new_id(), [AsyncResult(i, app=app, backend=backend) for i in members],
                                   app=app)
            # As GroupResult.get() chooses: the native join (get_many) where the
            # backend has one (rawbackend, redis), one query per task (Celery's db+).
            if backend.supports_native_join:
                return Call(prepare, lambda group: group.join_native(propagate=True))
            return Call(prepare, lambda group: group.join(propagate=True))

        def floor_run(task_ids: list[str]) -> list[Any]:
            rows = {row[0]: row for row in self.floor.get_many(task_ids)}
            return [json_loads(rows[i][2]) for i in task_ids]

        calls = {name: backend_call(name) for name in self.backends
                 if name in ("rawbackend", "celery", "redis")}
        calls["floor"] = Call(lambda: members, floor_run)
        return calls

    # -- cleanup, with a concurrent store in another process ----------------
    def _cleanup_round(self, name: str) -> Sample:
        floor = self.floor
        floor.fill_expired(self.settings.cleanup_rows, f"expired-{new_id()}-", encode(SMALL_RESULT))
        if self.storer is None:
            self.storer = Storer(self.loc, floor, self.settings.client_pause)
        self.storer.start(name)
        t0 = time.perf_counter()
        try:
            if name == "floor":
                # Celery's cutoff: result_expires (1 day) before now.
                floor.delete_expired(datetime.now(timezone.utc) - timedelta(days=1))
            else:
                self.backends[name].cleanup()
        finally:
            t1 = time.perf_counter()
            stats = self.storer.stop(t0, t1)
        return Sample([t1 - t0], stats)

    # -- prefork: the backend is built before os.fork() ---------------------
    def _prefork_round(self, name: str) -> Sample:
        # Celery's own backend is taken as a prefork parent leaves it: never
        # forked (NullPool), switched to pooling by the after-fork hook.
        backend = {"rawbackend": self.backends.get("rawbackend"),
                   "celery": self.backends.get("celery_client")}.get(name)
        if backend is not None:
            backend.store_result(new_id(), SMALL_RESULT, states.SUCCESS)  # used in the parent first
        s = self.settings
        total, seconds = prefork_stores(backend, self.floor, s.prefork_procs, s.prefork_stores,
                                        s.prefork_seconds)
        return Sample([total / seconds], {"seconds": seconds, "stores": total})

    # -- cold start: a fresh interpreter per sample -------------------------
    def _coldstart_round(self, name: str) -> Sample:
        if name == "redis":
            url, conf = self.coldstart_redis_url, {}
        else:
            url = self.loc.rawdb_url if name == "rawbackend" else self.loc.celery_url
            conf = table_conf(self.loc.dialect)
        return coldstart(url, conf)


@dataclass
class Call:
    """An untimed ``prepare()`` then a timed ``run(prepared)``."""

    prepare: Callable[[], Any]
    run: Callable[[Any], Any]


def _storer(backend: Any, result: Any) -> Callable[[str], Any]:
    return lambda task_id: backend.store_result(task_id, result, states.SUCCESS)


def _floor_storer(floor: Floor) -> Callable[[str], Any]:
    small = encode(SMALL_RESULT)
    return lambda task_id: floor.store(task_id, states.SUCCESS, small)


def timed_batch(call: Call, settings: Settings) -> Sample:
    """Call repeatedly for the time budget (within min/max calls); per-call seconds."""
    values: list[float] = []
    clock = time.perf_counter
    deadline = clock() + settings.budget
    while len(values) < settings.max_calls and (len(values) < settings.min_calls or clock() < deadline):
        arg = call.prepare()
        t0 = clock()
        call.run(arg)
        values.append(clock() - t0)
    return Sample(values)


def prefork_stores(backend: Any, parent_floor: Floor, procs: int, stores: int, seconds: float,
                   timeout: float = 300.0) -> tuple[int, float]:
    """Fork ``procs`` children that each store ``stores`` results (or as many
    as they can in ``seconds``); (total stored, seconds).

    multiprocessing's fork start method does what billiard's prefork pool
    does: ``os.fork()``, then the after-fork hooks, which is where Celery's
    SessionManager turns its pool on. ``backend`` None means the floor: each
    child opens its own connection. The clock runs from the first child's
    start to the last child's end (perf_counter is CLOCK_MONOTONIC, the same
    in every process).
    """
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    spans: Any = ctx.Queue()

    def child() -> None:
        try:
            ready.release()
            go.wait(timeout)
            t0 = time.perf_counter()
            deadline = t0 + seconds
            if backend is None:
                floor = Floor(parent_floor.loc)
                floor.bind(like=parent_floor)
                store = _floor_storer(floor)
            else:
                store = _storer(backend, SMALL_RESULT)
            done = 0
            while done < stores and time.perf_counter() < deadline:
                store(new_id())
                done += 1
            spans.put((t0, time.perf_counter(), done, ""))
        except Exception as exc:
            spans.put((0.0, 0.0, 0, f"{type(exc).__name__}: {exc}"))

    children = [ctx.Process(target=child, daemon=True) for _ in range(procs)]
    for proc in children:
        proc.start()
    try:
        for _ in range(procs):
            if not ready.acquire(timeout=60):
                raise RuntimeError("a prefork child did not start")
        go.set()
        results = [spans.get(timeout=timeout) for _ in range(procs)]
    finally:
        for proc in children:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
    errors = [error for *_, error in results if error]
    if errors:
        raise RuntimeError(f"prefork child failed: {errors[0]}")
    return sum(r[2] for r in results), max(r[1] for r in results) - min(r[0] for r in results)


def coldstart(url: str, conf: dict[str, Any]) -> Sample:
    """Run coldstart.py in a fresh interpreter; the build time plus the rest as extras."""
    # Through a small /bin/sh: on Linux a child's ru_maxrss starts at the RSS
    # of the process that forked it (it survives exec), so a direct child of
    # this benchmark would report the benchmark's own size. sh's child starts
    # from sh's size, a few MiB.
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh",
               sys.executable, str(COLDSTART_SCRIPT), url, json.dumps(conf)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"cold start failed: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall"] = wall
    return Sample([out["build"]], out)


class Storer:
    """A separate process that stores results back to back while ``cleanup()`` runs.

    It is spawned once per database (a fresh interpreter, not a fork) and keeps
    one backend per contender, pooled as in a worker child.
    """

    def __init__(self, loc: Location, floor: Floor, pause: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=storer_main, args=(child, loc.url, floor.sql, pause),
                                daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(120):
            raise RuntimeError("the concurrent storer did not start")
        self.conn.recv()

    def start(self, name: str) -> None:
        self.conn.send(("store", name))
        if not self.conn.poll(60):
            raise RuntimeError("the concurrent storer did not answer")
        reply = self.conn.recv()
        if reply[0] != "started":
            self.stop(0.0, 0.0)
            raise RuntimeError(f"the concurrent storer failed: {reply[1]}")

    def stop(self, t0: float, t1: float) -> dict[str, float]:
        self.conn.send(("stop", t0, t1))
        if not self.conn.poll(180):
            raise RuntimeError("the concurrent storer did not stop")
        return self.conn.recv()

    def close(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()


def storer_main(conn: Any, url: str, sql: dict[str, str], pause: float,
                max_seconds: float = 300) -> None:
    """The concurrent storer's loop (runs in the spawned process)."""
    loc = Location.parse(url)
    stores: dict[str, Callable[[str], Any]] = {}
    floor = Floor(loc)
    floor.sql = sql
    stores["floor"] = _floor_storer(floor)
    for name, backend_url in (("celery", loc.celery_url), ("rawbackend", loc.rawdb_url)):
        try:
            backend = make_app(backend_url, loc.dialect).backend
        except Exception:
            continue  # the parent already reported it
        if name == "celery":
            backend.session_manager.forked = True
        stores[name] = _storer(backend, SMALL_RESULT)
    conn.send(("ready",))
    while True:
        msg = conn.recv()
        if msg[0] == "quit":
            return
        store = stores.get(msg[1])
        spans: list[tuple[float, float]] = []
        errors: list[str] = []
        end = time.perf_counter() + max_seconds
        window = None
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                if store is None:
                    raise RuntimeError(f"no {msg[1]} backend in the storer")
                store(new_id())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            spans.append((t0, time.perf_counter()))
            if len(spans) == 1:
                conn.send(("started",) if not errors else ("error", errors[0]))
                if errors:
                    break  # and wait for the stop
            if conn.poll(pause):
                window = conn.recv()[1:]
                break
        if window is None:  # ran out of time: wait for the stop all the same
            window = conn.recv()[1:]
        w0, w1 = window
        during = [b - a for a, b in spans if b >= w0 and a <= w1]
        conn.send({"max_store_ms": 1000 * max(during, default=0.0), "stores": float(len(during)),
                   "errors": float(len(errors))})
