"""Store latency through PgBouncer (transaction mode) vs a direct connection.

    .venv/bin/python -m benchmarks.pgbouncer --url postgresql://postgres@127.0.0.1:5432/test

Starts a PgBouncer of its own (the installed ``pgbouncer``, on a free
loopback port, files in a temp folder): transaction pooling,
``default_pool_size`` and ``max_db_connections`` 10, in front of ``--url``.
16 spawned processes x 4 threads (64 clients; each thread has a backend and a
pool of its own, as in Celery's threads pool) store back to back, with
rawbackend's default settings, in rounds that alternate direct and through
PgBouncer, in the same processes; one round of each first, not recorded,
warms the pools (and lets them meet PgBouncer's 26000/42P05 and stop
preparing).
Each store is timed where it is made; errors are stores that raised.

Printed per round and in all: median and p99 store latency, stores/s,
errors, and the ratio PgBouncer/direct (median of the per-round ratios of
medians; target <= 1.5x). Also one client alone, interleaved: direct, direct without prepared
statements (``?prepare_threshold=none``), and through PgBouncer.
PgBouncer's admin console (``SHOW POOLS``) counts the server connections it
held and the clients it served at most.

Works in a schema of its own, ``rawbackend_bench_pgbouncer``, dropped at the end.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

SCHEMA = "rawbackend_bench_pgbouncer"
MODES = ("direct", "pgbouncer")
# One client alone also runs "unprepared": direct without psycopg's prepared
# statements, as the pools behind PgBouncer (before 1.21) run, which tells the
# hop's cost apart from theirs. (Not with 64 clients: a third set of 64
# connections would not fit a default max_connections beside the direct ones.)
ALONE = ("direct", "unprepared", "pgbouncer")


# -- PgBouncer ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_pgbouncer(params: dict, server_connections: int, max_clients: int):
    """A PgBouncer in front of the server of ``params`` (psycopg keywords):
    its client URL for that database."""
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(exe, os.X_OK):
        sys.exit("pgbouncer is not installed (apt-get install pgbouncer)")
    user, dbname = params.get("user", "postgres"), params.get("dbname", "postgres")
    target = f"host={params.get('host', '127.0.0.1')} port={params.get('port', 5432)} dbname={dbname}"
    if params.get("password"):
        target += f" password={params['password']}"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="rawbackend-pgbouncer-") as directory:
        folder = Path(directory)
        os.chmod(folder, 0o755)  # PgBouncer drops to nobody as root, after reading its config
        (folder / "userlist.txt").write_text(f'"{user}" ""\n')
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
        major, minor = (int(x) for x in version.split()[1].split(".")[:2])
        settings = {
            "listen_addr": "127.0.0.1", "listen_port": port, "unix_socket_dir": "",
            "auth_type": "trust", "auth_file": folder / "userlist.txt", "admin_users": user,
            "pool_mode": "transaction", "default_pool_size": server_connections,
            "max_db_connections": server_connections, "max_client_conn": max_clients,
        }
        if (major, minor) >= (1, 21):
            settings["max_prepared_statements"] = 0  # as 1.18-1.20: psycopg's preparation breaks
        (folder / "pgbouncer.ini").write_text(
            f"[databases]\n{dbname} = {target}\n[pgbouncer]\n"
            + "".join(f"{key} = {value}\n" for key, value in settings.items()))
        command = [exe, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(folder / "pgbouncer.ini")]
        log = folder / "pgbouncer.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"postgresql://{user}@127.0.0.1:{port}/{dbname}"
            _wait_ready(process, url, log)
            yield url, f"PgBouncer {major}.{minor}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_ready(process, url: str, log: Path, timeout: float = 15.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            sys.exit(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                sys.exit(f"pgbouncer did not answer in {timeout:g}s: {log.read_text()}")
            time.sleep(0.05)


class PoolWatch(threading.Thread):
    """Every 50 ms, PgBouncer's SHOW POOLS for the database: the most server
    connections and clients it had at once."""

    def __init__(self, bouncer_url: str):
        super().__init__(daemon=True)
        self.admin_url = bouncer_url.rsplit("/", 1)[0] + "/pgbouncer"
        self.dbname = bouncer_url.rsplit("/", 1)[1]
        self.servers = self.clients = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg

        # The admin console speaks the simple query protocol only: never prepare.
        with psycopg.connect(self.admin_url, autocommit=True, prepare_threshold=None) as admin:
            while not self.stop.wait(0.05):
                cursor = admin.cursor()
                cursor.execute("SHOW POOLS")
                names = [d.name for d in cursor.description]
                for row in cursor.fetchall():
                    pool = dict(zip(names, row, strict=True))
                    if pool["database"] == self.dbname:
                        states = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
                        servers = sum(pool[state] for state in states)
                        self.servers = max(self.servers, servers)
                        self.clients = max(self.clients, pool["cl_active"] + pool["cl_waiting"])


# -- the stores -------------------------------------------------------------------


def _app(url: str):
    from celery import Celery

    app = Celery("bench-pgbouncer", set_as_current=False)
    app.conf.update(
        result_backend="rawdb+" + url,
        result_serializer="json",
        database_table_schemas={"task": SCHEMA, "group": SCHEMA},
        database_table_names={"task": "pgb_taskmeta", "group": "pgb_tasksetmeta"},
    )
    return app


def _store_for(backend, seconds: float, prefix: str, latencies: list, errors: list) -> None:
    from celery import states

    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            backend.store_result(f"{prefix}-{n}", {"n": n}, states.SUCCESS)
        except Exception as exc:  # counted: a store that failed
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            latencies.append(time.perf_counter() - started)
        n += 1


def _process(urls: dict, threads: int, commands, results) -> None:
    """``threads`` threads, each with a backend of its own per mode (kept for
    every round, as a worker's threads keep theirs), run each (mode, seconds)
    command together; report (mode, latencies, errors)."""
    import queue

    apps = {mode: _app(url) for mode, url in urls.items()}
    inboxes = [queue.SimpleQueue() for _ in range(threads)]
    done = threading.Barrier(threads + 1)
    latencies: list[float] = []
    errors: list[str] = []

    def thread(inbox) -> None:
        backends = {mode: app.backend for mode, app in apps.items()}  # this thread's own
        while (command := inbox.get()) is not None:
            mode, seconds = command
            _store_for(backends[mode], seconds, uuid.uuid4().hex, latencies, errors)
            done.wait()

    workers = [threading.Thread(target=thread, args=(inbox,), daemon=True) for inbox in inboxes]
    for worker in workers:
        worker.start()
    results.put(("ready", [], []))
    while (command := commands.get()) is not None:
        latencies.clear()
        errors.clear()
        for inbox in inboxes:
            inbox.put(command)
        done.wait()
        results.put((command[0], list(latencies), list(errors)))
    for inbox in inboxes:
        inbox.put(None)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


def one_client(urls: dict, stores: int) -> dict[str, float]:
    """One client alone, each of ``urls`` in turn, interleaved: median store latency."""
    from celery import states

    backends = {mode: _app(url).backend for mode, url in urls.items()}
    times: dict[str, list[float]] = {mode: [] for mode in urls}
    for mode, backend in backends.items():  # warm: tables known, preparation learnt
        for i in range(20):
            backend.store_result(f"warm-{mode}-{i}-{uuid.uuid4().hex}", i, states.SUCCESS)
    prefix = uuid.uuid4().hex
    for i in range(stores):
        for mode, backend in backends.items():
            started = time.perf_counter()
            backend.store_result(f"{prefix}-{mode}-{i}", {"n": i}, states.SUCCESS)
            times[mode].append(time.perf_counter() - started)
    return {mode: statistics.median(values) for mode, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pgbouncer",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True,
                        help="a postgresql:// URL (the server; PgBouncer goes in front)")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="per process")
    parser.add_argument("--server-connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and mode")
    parser.add_argument("--rounds", type=int, default=3, help="recorded rounds of each mode")
    args = parser.parse_args(argv)

    from rawbackend.dialects import POSTGRESQL
    from rawbackend.url import parse_url, sanitize_url

    _, params = parse_url(args.url)
    clients = args.processes * args.threads
    admin = POSTGRESQL.connect(params)
    (limit,), = admin.execute("SELECT current_setting('max_connections')::int").fetchall()
    (used,), = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchall()
    needed = clients + args.server_connections + 5  # the direct clients, PgBouncer's, a few of ours
    if used + needed > limit:
        admin.close()
        sys.exit(f"the server has max_connections = {limit} and {used} in use: the direct rounds "
                 f"need {needed} more; use fewer --processes/--threads")
    admin.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    admin.execute(f'CREATE SCHEMA "{SCHEMA}"')
    try:
        # Each thread's pool may hold a few connections: room for all of them.
        bouncing = running_pgbouncer(params, args.server_connections, max_clients=clients * 4 + 50)
        with bouncing as (bouncer, version):
            unprepared = args.url + ("&" if "?" in args.url else "?") + "prepare_threshold=none"
            urls = {"direct": args.url, "pgbouncer": bouncer}
            _app(args.url).backend._create_tables()
            print(f"{version} (transaction mode, {args.server_connections} server connections) in "
                  f"front of {sanitize_url(args.url)}; {args.processes} processes x {args.threads} "
                  f"threads = {clients} clients", flush=True)
            watch = PoolWatch(bouncer)
            watch.start()
            ctx = multiprocessing.get_context("spawn")
            commands = [ctx.Queue() for _ in range(args.processes)]
            results = ctx.Queue()
            procs = [ctx.Process(target=_process, args=(urls, args.threads, commands[n], results))
                     for n in range(args.processes)]
            for proc in procs:
                proc.start()
            try:
                for _ in procs:
                    results.get(timeout=120)  # ready
                summary = run_rounds(args, commands, results)
            finally:
                for queue in commands:
                    queue.put(None)
                for proc in procs:
                    proc.join(30)
            watch.stop.set()
            watch.join(5)
            alone = one_client({**urls, "unprepared": unprepared}, 300)
        report(args, summary, alone, watch)
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        admin.close()


def run_rounds(args, commands, results) -> dict[str, list[dict]]:
    """Warm-up (not recorded), then ``rounds`` rounds, each mode once per
    round, in an order rotated by the round."""
    summary: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for r in range(args.rounds + 1):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
        for mode in order:
            for queue in commands:
                queue.put((mode, args.seconds))
            latencies: list[float] = []
            errors: list[str] = []
            for _ in commands:
                _, lat, err = results.get(timeout=args.seconds + 120)
                latencies += lat
                errors += err
            if r == 0:
                print(f"  warm-up {mode}: {len(latencies)} stores, {len(errors)} errors", flush=True)
                continue
            row = {
                "median": statistics.median(latencies), "p99": percentile(latencies, 99),
                "rate": len(latencies) / args.seconds, "errors": len(errors),
                "first_error": errors[0] if errors else None,
            }
            summary[mode].append(row)
            print(f"  round {r} {mode:>10}: median {row['median'] * 1000:.2f} ms, "
                  f"p99 {row['p99'] * 1000:.2f} ms, "
                  f"{row['rate']:,.0f} stores/s, {row['errors']} errors", flush=True)
    return summary


def report(args, summary: dict[str, list[dict]], alone: dict[str, float], watch: PoolWatch) -> None:
    clients = args.processes * args.threads
    def ratios(over: str, under: str) -> list[float]:
        return [o["median"] / u["median"] for o, u in zip(summary[over], summary[under], strict=True)]

    per_round = ratios("pgbouncer", "direct")
    ratio = statistics.median(per_round)
    print(f"\nstore latency, {clients} clients, {args.rounds} rounds of {args.seconds:g}s each way:")
    for mode in MODES:
        rows = summary[mode]
        print(f"  {mode:>10}: median {statistics.median(r['median'] for r in rows) * 1000:.2f} ms, "
              f"p99 {statistics.median(r['p99'] for r in rows) * 1000:.2f} ms, "
              f"{statistics.median(r['rate'] for r in rows):,.0f} stores/s, "
              f"{sum(r['errors'] for r in rows)} errors")
    errors = sum(r["errors"] for rows in summary.values() for r in rows)
    first = next((r["first_error"] for rows in summary.values() for r in rows if r["first_error"]), None)
    print(f"  pgbouncer/direct: {ratio:.2f}x (per round: {', '.join(f'{x:.2f}' for x in per_round)}); "
          f"target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'}")
    print(f"  errors: {errors}{f' (first: {first})' if first else ''}; target 0: "
          f"{'met' if errors == 0 else 'NOT met'}")
    print(f"  PgBouncer held at most {watch.servers} server connections for {watch.clients} clients "
          f"(SHOW POOLS)")
    print("one client alone, median of 300: " + ", ".join(
        f"{mode} {alone[mode] * 1000:.3f} ms" for mode in ALONE)
        + f" (pgbouncer/direct {alone['pgbouncer'] / alone['direct']:.2f}x, "
        f"unprepared/direct {alone['unprepared'] / alone['direct']:.2f}x)")


if __name__ == "__main__":
    main()
