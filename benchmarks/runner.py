"""Run the operations round by round, summarise them, check the targets.

Round r runs every contender of an operation once, in an order rotated by r,
so that a noisy neighbour or a warming cache hits every contender alike. A
contender's value for a round is the median of its calls in that round; a
ratio is computed per round and the median of those per-round ratios is
reported: on a shared, noisy machine ratios within one run are what count.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import tqdm

from . import report
from .floor import Location, set_schema
from .operations import Bench, Operation, Sample, Settings

RESULTS_DIR = Path(__file__).with_name("results")
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
E2E_KEYS = {"idle_waiters", "e2e_delay", "e2e_chord", "e2e_group"}  # endtoend.py


@dataclass
class ContenderResult:
    """One contender of one operation, over all rounds."""

    median: float | None = None
    p99: float | None = None
    n: int = 0
    rounds: list[float | None] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Ratio:
    median: float | None
    per_round: list[float]


@dataclass
class OpResult:
    key: str
    title: str
    kind: str
    unit: str
    higher_is_better: bool
    contenders: dict[str, ContenderResult]
    # rawbackend / floor, in the operation's own unit (time, or stores/s).
    raw_vs_floor: Ratio | None = None
    # How many times faster rawbackend is than Celery's backend.
    speedup_vs_celery: Ratio | None = None


@dataclass
class TargetResult:
    name: str
    limit: str
    measured: float | None
    met: bool | None
    note: str = ""


@dataclass
class DatabaseResult:
    url: str
    dialect: str
    server: str
    notes: list[str]
    operations: list[OpResult]
    targets: list[TargetResult]
    seconds: float


# -- statistics -------------------------------------------------------------
# How an extra measurement is summed up over rounds (default: the median).
EXTRA_AGGREGATES = {"max_store_ms": max, "errors": sum}  # the worst concurrent store; all errors


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def per_round_ratio(a: ContenderResult | None, b: ContenderResult | None) -> Ratio | None:
    """Median over rounds of a's round value divided by b's."""
    if a is None or b is None:
        return None
    # A contender with no values at all has no rounds: it gives no ratios.
    ratios = [x / y for x, y in zip(a.rounds, b.rounds, strict=False) if x is not None and y]
    return Ratio(statistics.median(ratios) if ratios else None, ratios)


def summarise(op: Operation, samples: dict[str, list[Sample | None]],
              errors: dict[str, str]) -> OpResult:
    contenders: dict[str, ContenderResult] = {}
    for name in op.contenders:
        rounds = samples.get(name, [])
        values = [v for s in rounds if s is not None for v in s.values]
        result = ContenderResult(error=errors.get(name))
        if values:
            result.median = statistics.median(values)
            result.p99 = percentile(values, 99)
            result.n = len(values)
            result.rounds = [statistics.median(s.values) if s is not None else None for s in rounds]
            extras: dict[str, list[float]] = {}
            for s in rounds:
                for key, value in (s.extra if s is not None else {}).items():
                    if isinstance(value, (int, float)):
                        extras.setdefault(key, []).append(float(value))
            result.extra = {k: EXTRA_AGGREGATES.get(k, statistics.median)(v) for k, v in extras.items()}
        contenders[name] = result
    res = OpResult(op.key, op.title, op.kind, op.unit, op.higher_is_better, contenders)
    raw, celery, floor = (contenders.get(n) for n in ("rawbackend", "celery", "floor"))
    res.raw_vs_floor = per_round_ratio(raw, floor)
    res.speedup_vs_celery = (per_round_ratio(raw, celery) if op.higher_is_better
                             else per_round_ratio(celery, raw))
    return res


# -- targets ----------------------------------------------------------------
def check(name: str, measured: float | None, op: str, limit: float, note: str = "") -> TargetResult:
    if measured is None:
        return TargetResult(name, f"{op} {limit:g}", None, None, note)
    met = measured <= limit if op == "<=" else measured >= limit
    return TargetResult(name, f"{op} {limit:g}", measured, met, note)


def evaluate_targets(dialect: str, ops: dict[str, OpResult]) -> list[TargetResult]:
    def ratio(key: str, a: str, b: str) -> float | None:
        op = ops.get(key)
        r = per_round_ratio(op.contenders.get(a), op.contenders.get(b)) if op else None
        return r.median if r else None

    floor_limit = 1.5 if dialect == "sqlite" else 1.25
    targets = [check(f"store_result SUCCESS: rawbackend/floor ({dialect})",
                     ratio("store_small", "rawbackend", "floor"), "<=", floor_limit)]
    celery_limit = {"postgresql": 5.0, "mysql": 4.0}.get(dialect)
    if celery_limit:
        targets.append(check(f"store_result SUCCESS: x faster than Celery's pooled backend ({dialect})",
                             ratio("store_small", "celery", "rawbackend"), ">=", celery_limit))
    targets += [
        check("store_result SUCCESS, never-forked client: rawbackend/floor",
              ratio("store_client", "rawbackend", "floor"), "<=", 1.3),
        check("get_task_meta hit: rawbackend/floor (floor decodes too)",
              ratio("get_hit", "rawbackend", "floor"), "<=", 1.5),
        check("join of 100 finished results: rawbackend/floor's one query",
              ratio("join", "rawbackend", "floor"), "<=", 2.0),
        check("2-process prefork throughput: rawbackend/floor",
              ratio("prefork", "rawbackend", "floor"), ">=", 0.8),
        check("cold start, build app + backend: rawbackend/Celery db+",
              ratio("coldstart", "rawbackend", "celery"), "<=", 0.2),
    ]
    cold = ops["coldstart"].contenders if "coldstart" in ops else {}

    def cold_ratio(key: str, a: str, b: str) -> float | None:
        x = cold[a].extra.get(key) if a in cold else None
        y = cold[b].extra.get(key) if b in cold else None
        return x / y if x and y else None

    targets += [
        check("cold start, the backend alone: rawbackend/Celery db+",
              cold_ratio("backend", "rawbackend", "celery"), "<=", 0.2,
              "for information: the app, the same for every backend, left out (ratio of medians)"),
        check("cold start peak RSS: rawbackend/Celery redis",
              cold_ratio("rss_kib", "rawbackend", "redis"), "<=", 1.0,
              "" if "redis" in cold else "Redis not reachable"),
    ]
    cleanup = ops.get("cleanup")
    raw_cleanup = cleanup.contenders.get("rawbackend") if cleanup else None
    targets += [
        check("cleanup(): rawbackend/floor's plain DELETE",
              ratio("cleanup", "rawbackend", "floor"), "<=", 1.5,
              "SQLite's batches leave the write lock free half the time, for waiting stores: "
              "the store wait is the target there" if dialect == "sqlite" else ""),
        check("cleanup(): longest concurrent store meanwhile, ms",
              raw_cleanup.extra.get("max_store_ms") if raw_cleanup else None, "<=", 100.0),
    ]
    return targets + e2e_targets(dialect, ops)


def e2e_targets(dialect: str, ops: dict[str, OpResult]) -> list[TargetResult]:
    """The end-to-end targets, for the operations that ran."""
    def vs_redis(key: str) -> tuple[float | None, str]:
        op = ops[key]
        if "redis" not in op.contenders:
            return None, "n/a (no --redis)"
        r = per_round_ratio(op.contenders.get("rawbackend"), op.contenders.get("redis"))
        return (r.median if r else None), ""

    def raw(key: str, extra: str | None = None) -> float | None:
        c = ops[key].contenders.get("rawbackend")
        if c is None or c.median is None:
            return None
        return c.median if extra is None else c.extra.get(extra)

    targets = []
    if "e2e_delay" in ops:
        if dialect == "postgresql":
            targets.append(check("delay().get() through a worker: rawbackend/redis",
                                 *_swap(vs_redis("e2e_delay"), "<=", 1.5)))
        else:
            ms = raw("e2e_delay")
            targets.append(check("delay().get() through a worker: rawbackend, ms",
                                 None if ms is None else ms * 1000, "<=", 15.0))
    if "e2e_chord" in ops:
        targets.append(check("chord of 20 through a worker: rawbackend/redis",
                             *_swap(vs_redis("e2e_chord"), "<=",
                                    1.2 if dialect == "postgresql" else 2.0)))
    if "idle_waiters" in ops:
        if dialect == "postgresql":
            targets.append(check("100 threads waiting 5 s on PENDING ids: rawbackend queries/s in all",
                                 raw("idle_waiters"), "<=", 5.0,
                                 "with the installed backend's store notification, if it has one"))
        else:
            targets.append(check("100 threads waiting 5 s on PENDING ids: rawbackend queries/s "
                                 "per waiter after the first second",
                                 raw("idle_waiters", "per_waiter_after_1s"), "<=", 2.0))
    return targets


def _swap(measured: tuple[float | None, str], op: str, limit: float) -> tuple:
    """check()'s arguments from (measured, note)."""
    return measured[0], op, limit, measured[1]


# -- running ----------------------------------------------------------------
def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def run_database(loc: Location, settings: Settings, redis_url: str | None,
                 coldstart_redis: str | None, only: set[str] | None,
                 broker_url: str | None = None) -> DatabaseResult:
    started = time.perf_counter()
    bench = Bench(loc, settings, redis_url, coldstart_redis, broker_url)
    results: list[OpResult] = []
    try:
        try:
            bench.setup()
        except Exception as exc:  # this database is reported as failed; the others still run
            traceback.print_exc()
            bench.notes.append(f"set-up failed: {type(exc).__name__}: {exc}")
            return DatabaseResult(loc.masked, loc.dialect, bench.server, bench.notes, [],
                                  [], time.perf_counter() - started)
        ops = [op for op in bench.operations() if op.key in only] if only else [
            op for op in bench.operations() if settings.e2e or op.key not in E2E_KEYS]
        unknown = sorted((only or set()) - {op.key for op in ops})
        if unknown:
            bench.notes.append(f"unknown operations in --only: {', '.join(unknown)}")
        steps = sum(op.round_count(settings) + op.warms_up for op in ops)
        with tqdm.tqdm(total=steps, desc=loc.dialect, unit="round", file=sys.stderr,
                       dynamic_ncols=True) as bar:
            for op in ops:
                bar.set_postfix_str(op.key)
                results.append(run_operation(op, settings, bar))
    finally:
        try:
            bench.teardown()
        except Exception as exc:  # never lose the measurements to a failed clean-up
            bench.notes.append(f"tear-down failed: {type(exc).__name__}: {exc}")
    by_key = {op.key: op for op in results}
    return DatabaseResult(loc.masked, loc.dialect, bench.server, bench.notes, results,
                          evaluate_targets(loc.dialect, by_key), time.perf_counter() - started)


def run_operation(op: Operation, settings: Settings, bar: tqdm.tqdm) -> OpResult:
    samples: dict[str, list[Sample | None]] = {name: [] for name in op.contenders}
    errors: dict[str, str] = {}

    def measure(name: str) -> Sample | None:
        if name in errors:
            return None
        try:
            return op.measure(name)
        except Exception as exc:  # reported, and the other contenders go on
            errors[name] = f"{type(exc).__name__}: {exc}"
            tqdm.tqdm.write(f"{op.key} / {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            return None

    if op.warms_up:  # one round of warm-up (connections, caches, imports, workers), not recorded
        for name in op.contenders:
            measure(name)
        bar.update(1)
    for r in range(op.round_count(settings)):
        for name in rotated(op.contenders, r):
            samples[name].append(measure(name))
        bar.update(1)
    return summarise(op, samples, errors)


def versions() -> dict[str, str]:
    found = {}
    for dist in ("celery", "kombu", "sqlalchemy", "psycopg", "pymysql", "redis", "rawbackend"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    import sqlite3

    found["sqlite"] = sqlite3.sqlite_version
    found["python"] = platform.python_version()
    return found


def redis_reachable(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
        return True
    except Exception:
        return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rawbackend vs Celery's DatabaseBackend vs the bare-driver floor.")
    parser.add_argument("--url", action="extend", nargs="+", default=[], metavar="URL",
                        help="plain database URL(s): postgresql://..., mysql://..., sqlite:///path "
                             "(also $RAWBACKEND_BENCH_URLS, space-separated; default: a temp SQLite file)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the latency operations (default 10, --quick 3); "
                             "cleanup, prefork and cold start run half as many")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--redis", metavar="URL",
                        help="add Celery's Redis backend as a contender for store/get/join")
    parser.add_argument("--schema", metavar="NAME",
                        help="the schema (PostgreSQL) or database (MySQL) the benchmark creates and "
                             "drops (also $RAWBACKEND_BENCH_SCHEMA; default rawbackend_bench)")
    parser.add_argument("--broker", metavar="URL",
                        help="broker of the end-to-end operations (also $RAWBACKEND_BENCH_BROKER; "
                             "default amqp://guest:guest@127.0.0.1:5672//, else filesystem://)")
    parser.add_argument("--no-e2e", action="store_true",
                        help="leave out the end-to-end operations (workers; left out with --quick "
                             "unless --only names them)")
    parser.add_argument("--only", metavar="OPS", help="comma-separated operation keys to run")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="where to write report.md, results.json, chart.png "
                             "(default: benchmarks/results/<timestamp>)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.schema is not None:
        try:
            set_schema(args.schema)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.rounds:
        settings.rounds = args.rounds
        settings.heavy_rounds = max(1, round(args.rounds / 2))
        settings.e2e_rounds = max(1, round(args.rounds / 3))
    if args.no_e2e:
        settings.e2e = False
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: the benchmark forks

    urls = args.url or os.environ.get("RAWBACKEND_BENCH_URLS", "").split()
    tmpdir = None
    if not urls:
        tmpdir = tempfile.mkdtemp(prefix="rawbackend-bench-")
        urls = [f"sqlite:///{tmpdir}/bench.db"]
    try:
        locations = [Location.parse(url) for url in urls]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    coldstart_redis = args.redis or DEFAULT_REDIS
    if not redis_reachable(coldstart_redis):
        coldstart_redis = None
    only = set(args.only.split(",")) if args.only else None

    started = datetime.now(timezone.utc)
    databases = []
    try:
        for loc in locations:
            databases.append(run_database(loc, settings, args.redis, coldstart_redis, only,
                                          args.broker))
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    meta = {
        "started": started.isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "versions": versions(),
        "settings": asdict(settings),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "redis_coldstart": coldstart_redis or "not reachable",
    }
    out = args.out or RESULTS_DIR / started.strftime("%Y%m%d-%H%M%S")
    print(report.render_text(meta, databases))
    paths = report.write(out, meta, databases)
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0
