"""What LISTEN/NOTIFY costs stores and buys waiters, on PostgreSQL.

    .venv/bin/python -m benchmarks.notify --url postgresql://postgres@127.0.0.1:5432/test

- stores/s with 8 concurrent writer processes, notification on and off
  (``database_notify``), in alternating rounds: NOTIFY takes a database-wide
  lock at commit, which serializes the commits of notifying transactions;
- the latency from a store in another process to ``AsyncResult.get()``
  returning (median), with notification on (poll interval 30 s, so only a
  notification can wake it) and off (the adaptive poll, interval 0.5 s).

Works in a schema of its own, ``rawbackend_bench_notify``, dropped at the end.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import uuid

SCHEMA = "rawbackend_bench_notify"


def _app(url: str, notify: bool):
    from celery import Celery

    app = Celery("bench-notify", set_as_current=False)
    app.conf.update(
        result_backend="rawdb+" + url,
        result_serializer="json",
        database_table_schemas={"task": SCHEMA, "group": SCHEMA},
        database_table_names={"task": "notify_taskmeta", "group": "notify_tasksetmeta"},
        database_notify=notify,
    )
    return app


def _writer(url: str, notify: bool, seconds: float, start, counts) -> None:
    from celery import states

    backend = _app(url, notify).backend
    backend.store_result(f"warm-{uuid.uuid4().hex}", 0, states.SUCCESS)
    start.wait()
    n, prefix = 0, uuid.uuid4().hex
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        backend.store_result(f"{prefix}-{n}", {"n": n}, states.SUCCESS)
        n += 1
    counts.put(n)


def stores_per_second(url: str, notify: bool, writers: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    start, counts = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, notify, seconds, start, counts)) for _ in range(writers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every writer connected and warm
    start.set()
    total = sum(counts.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(30)
    return total / seconds


def _storer(url: str, task_ids, go, stored) -> None:
    from celery import states

    backend = _app(url, True).backend
    backend.store_result(f"warm-{uuid.uuid4().hex}", 0, states.SUCCESS)
    for task_id in task_ids:
        go.get()
        stored.put(time.time())
        backend.store_result(task_id, 42, states.SUCCESS)


def wake_latency(url: str, notify: bool, rounds: int) -> float:
    """Median seconds from a store (another process) to get() returning."""
    import threading

    from celery.result import AsyncResult

    app = _app(url, notify)
    backend = app.backend
    ids = [uuid.uuid4().hex for _ in range(rounds)]
    ctx = multiprocessing.get_context("spawn")
    go, stored = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_storer, args=(url, ids, go, stored))
    proc.start()
    latencies = []
    for task_id in ids:
        done = {}

        def wait(task_id=task_id, done=done):
            AsyncResult(task_id, app=app, backend=backend).get(timeout=60, interval=30 if notify else 0.5)
            done["at"] = time.time()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)  # the waiter is past its quick re-checks
        go.put(1)
        waiter.join(60)
        latencies.append(done["at"] - stored.get(timeout=60))
    proc.join(30)
    return statistics.median(latencies)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.notify", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="a postgresql:// URL")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each, alternating")
    args = parser.parse_args(argv)

    from rawbackend.dialects import POSTGRESQL
    from rawbackend.url import parse_url

    _, params = parse_url(args.url)
    admin = POSTGRESQL.connect(params)
    admin.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    admin.execute(f'CREATE SCHEMA "{SCHEMA}"')
    try:
        _app(args.url, True).backend._create_tables()
        rates: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for notify in (False, True):
                rate = stores_per_second(args.url, notify, args.writers, args.seconds)
                rates[notify].append(rate)
                print(f"  {args.writers} writers, notify={notify}: {rate:,.0f} stores/s", flush=True)
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"stores/s, {args.writers} writer processes, median of {args.rounds} rounds of "
              f"{args.seconds:g}s: notify off {off:,.0f}, on {on:,.0f} ({(on - off) / off:+.1%})")
        for notify in (True, False):
            latency = wake_latency(args.url, notify, 20)
            print(f"store -> get() returns, median of 20: notify={notify}: {latency * 1000:.1f} ms")
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        admin.close()


if __name__ == "__main__":
    main()
