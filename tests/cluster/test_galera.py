"""rawbackend on a 3-node MariaDB Galera cluster (galera.py starts it): reads
through one node see stores through another, two nodes storing the same ids
raise nothing, a node killed or cut off under load costs a stall and no
result, groups and chords work, fresh backends on three nodes create the
tables at once, and Celery's own tables (sequences made by hand) are used.

The figures (latencies, stalls, the sequence choice) go to the run's
"rawbackend figures" section.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery, states
from celery.app.task import Context

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reliability"))

from conftest import MYSQL_URL, REQUIRE_SERVERS, Database, require_server  # noqa: E402
from galera import Cluster, _connect, missing  # noqa: E402
from harness import (  # noqa: E402
    CTX,
    Load,
    _child,
    _count_retries,
    check_no_harm,
    check_stored_exactly_once,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONF = {"result_serializer": "json", "accept_content": ["json"]}
# Seconds a store may stall beyond the cluster's own outage (the target).
STALL_MARGIN = 1.0
# A node cut off learns it is alone only after the others have moved on (its
# writers wait for its 1180, then reconnect elsewhere): its stores stalled up to
# 1.0-1.4 s past the cluster's outage here, with the 2 cores busy.
CUT_OFF_MARGIN = 2.5
BEFORE, AFTER = 300, 300  # stores before a fault, and after the cluster is back


@pytest.fixture(scope="module")
def galera():
    """The cluster, started once for this module's tests and stopped after
    them (not at the session's end: the rest of a run needs the cores)."""
    problem = missing()
    if problem:
        if REQUIRE_SERVERS:
            pytest.fail(f"no Galera cluster can be started here: {problem} (RAWBACKEND_REQUIRE_SERVERS=1)")
        pytest.skip(f"no Galera cluster can be started here: {problem}")
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def galera_db(galera):
    """A database of the test's own on the cluster, dropped after; its URL
    names the three nodes in order."""
    name = f"g_{uuid.uuid4().hex[:10]}"
    galera.nodes[0].execute(f"CREATE DATABASE `{name}`")
    db = Database("mysql", galera.url(database=name), "celery_taskmeta", "celery_tasksetmeta")
    db.name = name  # type: ignore[attr-defined]
    try:
        yield db
    finally:
        for app in db.apps:
            backend = getattr(app, "_backend", None)
            if backend is not None:
                backend.session_manager.invalidate(backend.url)
        for node in galera.nodes:  # any node of the Primary Component drops it for all
            try:
                node.execute(f"DROP DATABASE IF EXISTS `{name}`")
                break
            except Exception:  # down or cut off: the next one
                continue


def node_url(cluster: Cluster, db: Database, *indexes: int) -> str:
    """``db``'s URL naming the nodes of ``indexes`` (1-based), in that order."""
    return cluster.url(*(cluster.nodes[i - 1] for i in indexes), database=db.name)  # type: ignore[attr-defined]


def app_on(url: str, **conf) -> Celery:
    app = Celery(f"galera-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend="rawdb+" + url, **CONF, **conf)
    return app


def backend_on(cluster, db: Database, *nodes: int, **conf):
    app = app_on(node_url(cluster, db, *nodes), **conf)
    db.apps.append(app)  # its pools are closed after the test
    return app.backend


def rows(node, db, sql: str, params=None) -> list[tuple]:
    return node.execute(sql.replace("{db}", f"`{db.name}`"), params)


def test_a_galera_node_is_told_apart_and_reads_see_stores_through_another_node(
        galera, galera_db, figures):
    writer = backend_on(galera, galera_db, 1)
    reader = backend_on(galera, galera_db, 2)
    writer.store_result("warm", None, states.SUCCESS)
    assert reader.get_task_meta("warm")["status"] == states.SUCCESS
    assert writer.tables.variant == reader.tables.variant == "galera"
    bare = _connect(galera.nodes[1].port, database=galera_db.name)  # wsrep_sync_wait=0
    stale = 0
    try:
        for i in range(50):
            writer.store_result(f"r-{i}", i, states.SUCCESS)
            meta = reader.get_task_meta(f"r-{i}", cache=False)
            assert (meta["status"], meta["result"]) == (states.SUCCESS, i), f"read {i} through node 2"
            writer.store_result(f"b-{i}", i, states.SUCCESS)
            cur = bare.cursor()
            cur.execute("SELECT status FROM celery_taskmeta WHERE task_id = %s", (f"b-{i}",))
            stale += cur.fetchone() is None
    finally:
        bare.close()
    figures(f"reads through node 2 right after a store through node 1: 0 of 50 PENDING with "
            f"the causality check, {stale} of 50 without it (wsrep_sync_wait=0)")


def _same_ids(url, ids, barrier, rounds):
    counter = _count_retries()
    app = app_on(url)
    backend = app.backend
    failed = []
    barrier.wait()
    for _ in range(rounds):
        for task_id in ids:
            for state in (states.STARTED, states.SUCCESS):
                try:
                    backend.store_result(task_id, {"id": task_id}, state)
                except Exception as exc:  # counted: the test says none
                    failed.append(f"{task_id}: {exc!r}"[:300])
    return {"failed": failed, "retries": counter.celery_retries, "reruns": counter.statement_reruns}


def test_two_nodes_storing_the_same_ids_at_once_raise_nothing(galera, galera_db, tmp_path, figures):
    """Two processes, one on node 1 and one on node 2, store STARTED then
    SUCCESS under the same 300 ids at the same moment: certification
    conflicts (1213 on commit) are retried, none reaches the caller, and
    every id ends SUCCESS, once."""
    backend_on(galera, galera_db, 1).store_result("warm", None, states.SUCCESS)  # the tables
    ids = [f"same-{i}" for i in range(300)]
    barrier = CTX.Barrier(2, timeout=60)
    processes = []
    for k, nodes in enumerate(((1, 2, 3), (2, 3, 1))):
        out = tmp_path / f"same{k}.json"
        p = CTX.Process(target=_child, args=(_same_ids, out, node_url(galera, galera_db, *nodes),
                                             ids, barrier, 1), daemon=True)
        p.start()
        processes.append((p, out))
    began = time.monotonic()
    reports = []
    for p, out in processes:
        p.join(180)
        assert not p.is_alive(), "a storing process hung"
        reports.append(json.loads(out.read_text()))
    took = time.monotonic() - began
    assert [p.exitcode for p, _ in processes] == [0, 0], reports
    failed = [f for r in reports for f in r["failed"]]
    assert failed == [], f"{len(failed)} stores raised, e.g. {failed[:3]}"
    found = rows(galera.nodes[2], galera_db,
                 "SELECT status, COUNT(*) FROM {db}.celery_taskmeta WHERE task_id LIKE 'same-%' "
                 "GROUP BY status")
    assert found == [(states.SUCCESS, len(ids))]
    figures(f"two nodes storing the same {len(ids)} ids (STARTED, SUCCESS) at once: 0 raised, "
            f"{sum(r['retries'] for r in reports)} conflicts retried by Celery's loop, "
            f"{4 * len(ids) / took:.0f} stores/s in all")


class NodePinger(threading.Thread):
    """Commits a row through one node every 20 ms on a new connection: the
    cluster's outage is the longest gap between two commits (a write that
    blocks while the cluster changes its membership counts as no answer)."""

    def __init__(self, node, database: str, bound: float = 120):
        super().__init__(daemon=True)
        self.node, self.database, self.bound = node, database, bound
        self.halt = threading.Event()
        self.answered: list[float] = []

    def run(self):
        self.answered.append(time.monotonic())
        deadline = time.monotonic() + self.bound
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                conn = _connect(self.node.port, timeout=30, database=self.database)
                try:
                    conn.cursor().execute("INSERT INTO ping (n) VALUES (1)")
                finally:
                    conn.close()
                self.answered.append(time.monotonic())
            except Exception:  # not answering: the gap grows
                pass
            self.halt.wait(0.02)

    def answered_since(self, moment: float) -> bool:
        return bool(self.answered) and self.answered[-1] > moment

    @property
    def longest(self) -> float:
        gaps = [b - a for a, b in zip(self.answered, self.answered[1:], strict=False)]
        return max(gaps, default=0.0)


def under_load(galera, db, tmp_path, prefix, fault, recover):
    """The reliability campaign's load (3 writers x 2 threads, 1 reader) on
    the cluster's URL (node 1 first), ``fault(node1)`` in its middle with a
    pinger committing through node 2; ``recover(node1)`` after the load."""
    node1 = galera.nodes[0]
    backend_on(galera, db, 2).store_result("warm", None, states.SUCCESS)
    rows(galera.nodes[1], db, "CREATE TABLE {db}.ping (n INTEGER)")
    load = Load(db, tmp_path / prefix, prefix, 5_000, writers=3, threads=2, readers=1).start()
    pinger = NodePinger(galera.nodes[1], db.name)
    try:
        load.wait_stored(BEFORE, "the first stores")
        pinger.start()
        time.sleep(0.3)
        at = time.monotonic()
        fault(node1)
        deadline = time.monotonic() + 60
        while not pinger.answered_since(at + 0.5) and time.monotonic() < deadline:
            time.sleep(0.05)
        back = load.stored()
        load.wait_stored(back + AFTER, "stores after the cluster came back")
        time.sleep(0.3)
    finally:
        pinger.halt.set()
        outcome = load.finish(stop=True)
        pinger.join(60)
        recover(node1)
    return outcome, pinger.longest


def missing_rows(galera, db, prefix, outcome) -> dict[str, set[str]]:
    """Per node, the stores that returned and whose row the node lacks."""
    missing = {}
    for node in galera.nodes:
        found = {row[0] for row in node.execute(
            f"SELECT task_id FROM `{db.name}`.celery_taskmeta WHERE task_id LIKE %s", (f"{prefix}-%",))}
        if outcome.expected - found:
            missing[node.name] = outcome.expected - found
    return missing


# Results a SIGKILLed node may take with it: those it committed in its last
# instant, whose writesets never left it (Galera acknowledges a commit once it
# is ordered, not once the other nodes hold it). Seen: 0 or 1 per kill, on the
# killed node's own disk alone when it rejoined by IST, nowhere after an SST.
LOST_PER_KILL = 2


def check_and_report(galera, db, prefix, outcome, outage, figures, what, killed=(),
                     margin=STALL_MARGIN):
    """0 raised, 0 read errors, the stall within the outage + 1 s, and every
    stored result on every node but for the killed nodes' last commits (at
    most LOST_PER_KILL each, and none where no node was killed)."""
    missing = missing_rows(galera, db, prefix, outcome)
    gone = set().union(*missing.values()) if missing else set()
    kept_by = {task_id: [n.name for n in galera.nodes if task_id not in missing.get(n.name, ())]
               for task_id in gone}
    figures(
        f"{what}: cluster outage {outage:.2f}s (commits through another node), slowest store "
        f"{outcome.longest:.2f}s, slowest read {outcome.longest_read:.2f}s; {outcome.stores} stores, "
        f"{len(outcome.failed)} raised, {outcome.reads} reads, {len(outcome.read_errors)} raised; "
        f"retries: {outcome.celery_retries} by Celery's loop, {outcome.statement_reruns} by rawbackend; "
        f"{len(gone)} missing from the cluster (a killed node's last commits; nodes that kept "
        f"them: {kept_by or 'none'})"
    )
    # A reader that saw one of those rows PENDING saw the same loss, counted above.
    check_no_harm(dataclasses.replace(outcome, wrong_reads=[
        read for read in outcome.wrong_reads if read.partition(":")[0] not in gone
    ]))
    killed_names = {node.name for node in killed}
    assert len(gone) <= LOST_PER_KILL * len(killed) and \
        all(set(nodes) <= killed_names and len(nodes) <= 1 for nodes in kept_by.values()), \
        f"results missing from the cluster other than a killed node's last commits: {kept_by}"
    assert outcome.longest <= outage + margin, \
        f"a store stalled {outcome.longest:.2f}s, the cluster's outage was {outage:.2f}s"
    # Once, with their values, on a node that keeps none of the lone rows.
    keepers = {name for nodes in kept_by.values() for name in nodes}
    judge = next(node for node in galera.nodes if node.name not in keepers)
    check_stored_exactly_once(dataclasses.replace(db, url=galera.url(judge, database=db.name)),
                              prefix, dataclasses.replace(outcome, expected=outcome.expected - gone))


def test_node_killed_under_load(galera, galera_db, tmp_path, figures):
    """SIGKILL the node every writer is connected to: the survivors block
    commits while they notice (about 6 s), the writers move to node 2, and
    nothing is raised nor lost but the killed node's last commits (counted).
    The node restarts and rejoins after."""
    def recover(node):
        node.start()

    outcome, outage = under_load(galera, galera_db, tmp_path, "kill", lambda node: node.kill(), recover)
    check_and_report(galera, galera_db, "kill", outcome, outage, figures, "node 1 killed under load",
                     killed=galera.nodes[:1])


def test_node_cut_off_under_load(galera, galera_db, tmp_path, figures):
    """Cut the writers' node off the cluster (gmcast.isolate): it keeps the
    TCP connections and answers 1180, then 1047, to every statement; the
    writers move to another node, nothing is lost or raised. It rejoins after."""
    def recover(node):
        node.isolate(False)
        node.wait_synced()

    outcome, outage = under_load(galera, galera_db, tmp_path, "isolate", lambda node: node.isolate(),
                                 recover)
    check_and_report(galera, galera_db, "isolate", outcome, outage, figures, "node 1 cut off under load",
                     margin=CUT_OFF_MARGIN)


@pytest.mark.heavy
def test_every_node_killed_and_rejoined_under_load(galera, galera_db, tmp_path, figures):
    """Node 1, then 2, then 3: each killed while the writers use it, then
    restarted under the load (it catches up by IST and answers 1047 while it
    rejoins); the writers follow from node to node, nothing is raised nor lost
    but the killed nodes' last commits (counted), and no store stalls longer
    than the longest outage + 1 s."""
    db = galera_db
    backend_on(galera, db, 2).store_result("warm", None, states.SUCCESS)
    rows(galera.nodes[1], db, "CREATE TABLE {db}.ping (n INTEGER)")
    load = Load(db, tmp_path / "rolling", "rolling", 20_000, writers=3, threads=2, readers=1).start()
    outages = []
    try:
        load.wait_stored(BEFORE, "the first stores")
        for k, node in enumerate(galera.nodes):
            pinger = NodePinger(galera.nodes[(k + 1) % len(galera.nodes)], db.name)
            pinger.start()
            try:
                time.sleep(0.3)
                at = time.monotonic()
                node.kill()
                deadline = time.monotonic() + 60
                while not pinger.answered_since(at + 0.5) and time.monotonic() < deadline:
                    time.sleep(0.05)
                node.start()  # under the load
                back = load.stored()
                load.wait_stored(back + AFTER, f"stores after node {k + 1} rejoined")
            finally:
                pinger.halt.set()
                pinger.join(60)
            outages.append(pinger.longest)
    finally:
        outcome = load.finish(stop=True)
        for node in galera.nodes:
            if node.process is None or node.process.poll() is not None:
                node.start()
    check_and_report(galera, db, "rolling", outcome, max(outages), figures,
                     "each node killed and rejoined under load (outages "
                     + ", ".join(f"{o:.2f}s" for o in outages) + ")", killed=galera.nodes)


def test_read_only_server_sends_writes_to_the_next_host(galera, galera_db):
    """A server in read_only answers 1290 to a user without READ ONLY ADMIN:
    the connection is dropped and the store goes to the next host, which is
    then the first one tried."""
    user, password = f"ro_{uuid.uuid4().hex[:6]}", "Pw-" + uuid.uuid4().hex[:12]
    node1, node2 = galera.nodes[0], galera.nodes[1]
    node1.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
    node1.execute(f"GRANT ALL ON `{galera_db.name}`.* TO '{user}'@'%'")
    backend_on(galera, galera_db, 1).store_result("warm", None, states.SUCCESS)  # the tables
    node1.execute("SET GLOBAL read_only = ON")
    try:
        url = f"mysql://{user}:{password}@{node1.address},{node2.address}/{galera_db.name}"
        app = app_on(url)
        galera_db.apps.append(app)
        for i in range(20):
            app.backend.store_result(f"ro-{i}", i, states.SUCCESS)
        assert app.backend.get_task_meta("ro-19")["result"] == 19
        count = node2.execute(
            f"SELECT COUNT(*) FROM `{galera_db.name}`.celery_taskmeta WHERE task_id LIKE 'ro-%'")
        assert count == [(20,)]
    finally:
        node1.execute("SET GLOBAL read_only = OFF")
        node1.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def _record_body(app, backend):
    @app.task(name="galeratest.record", shared=False)
    def record(values):
        backend.store_result(f"fired-{uuid.uuid4().hex}", values, states.SUCCESS)
    return record


def test_groups_and_chords_across_nodes(galera, galera_db, tmp_path):
    """A group saved through node 1 is restored through node 2; a chord
    started through node 1 whose parts are reported through nodes 2 and 3
    fires its body once, also when its last two parts return at the same
    moment through two nodes (ten rounds)."""
    from test_concurrency import _errdir, fork_children, wait_children

    b1 = backend_on(galera, galera_db, 1, task_always_eager=True, task_store_eager_result=True)
    others = [backend_on(galera, galera_db, n, task_always_eager=True, task_store_eager_result=True)
              for n in (2, 3)]
    app1 = b1.app
    parts = [app1.AsyncResult(f"gp-{i}") for i in range(3)]
    for i, part in enumerate(parts):
        b1.store_result(part.id, i, states.SUCCESS)
    group = app1.GroupResult("grp-1", parts)
    b1.save_group(group.id, group)
    restored = others[0].restore_group(group.id)
    assert [r.id for r in restored.results] == [p.id for p in parts]

    for backend in (b1, *others):
        _record_body(backend.app, backend)
    errdir = _errdir(tmp_path)
    for round_ in range(10):
        group_id = f"chord-{round_}-{uuid.uuid4().hex[:8]}"
        part_ids = [f"{group_id}-{i}" for i in range(3)]
        body = app1.signature("galeratest.record", options={"task_id": f"body-{group_id}"})
        b1.apply_chord((group_id, [app1.AsyncResult(p) for p in part_ids]), body)
        requests = [Context(id=p, group=group_id, chord=dict(body)) for p in part_ids]
        b1.mark_as_done(part_ids[0], 0, request=requests[0])
        barrier = CTX.Barrier(2, timeout=30)

        def child(i, requests=requests, part_ids=part_ids, barrier=barrier):
            backend = others[i]  # part 1 through node 2, part 2 through node 3
            backend.store_result(part_ids[i + 1], i + 1, states.SUCCESS)
            barrier.wait()
            backend.on_chord_part_return(requests[i + 1], states.SUCCESS, i + 1)

        wait_children(fork_children(2, child, errdir), errdir)
        fired = rows(galera.nodes[0], galera_db,
                     "SELECT result FROM {db}.celery_taskmeta WHERE task_id LIKE 'fired-%'")
        assert len(fired) == 1, f"round {round_}: the body fired {len(fired)} times"
        assert json.loads(bytes(fired[0][0])) == [0, 1, 2]
        rows(galera.nodes[0], galera_db, "DELETE FROM {db}.celery_taskmeta WHERE task_id LIKE 'fired-%'")


def _create_and_store(url, barrier):
    backend = app_on(url).backend
    barrier.wait()
    backend.store_result(f"fresh-{uuid.uuid4().hex}", 1, states.SUCCESS)
    return {}


def test_fresh_backends_on_three_nodes_create_the_tables_at_once(galera, tmp_path):
    """Three processes, each with a fresh backend on another node, create the
    tables (sequences first) and store at the same moment: none raises."""
    for round_ in range(3):
        name = f"fresh_{uuid.uuid4().hex[:8]}"
        galera.nodes[0].execute(f"CREATE DATABASE `{name}`")
        try:
            barrier = CTX.Barrier(3, timeout=60)
            processes = []
            for n, node in enumerate(galera.nodes):
                out = tmp_path / f"fresh{round_}-{n}.json"
                p = CTX.Process(target=_child, daemon=True, args=(
                    _create_and_store, out, galera.url(node, database=name), barrier))
                p.start()
                processes.append((p, out))
            for p, out in processes:
                p.join(120)
                assert p.exitcode == 0, f"round {round_}: {out.read_text() if out.exists() else 'hung'}"
            assert galera.nodes[1].execute(f"SELECT COUNT(*) FROM `{name}`.celery_taskmeta") == [(3,)]
        finally:
            galera.nodes[0].execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_celerys_tables_with_sequences_made_by_hand(galera, galera_db):
    """Celery's backend cannot create its sequences on Galera (1235); made by
    hand with INCREMENT BY 0, Celery creates its tables and both backends
    read and write each other's rows, through different nodes."""
    import sqlalchemy.exc

    node1 = galera.nodes[0]
    db_url = f"mysql+pymysql://root@{node1.address}/{galera_db.name}"
    celery_app = Celery("celery-own", set_as_current=False)
    celery_app.conf.update(result_backend="db+" + db_url, **CONF)
    with pytest.raises(sqlalchemy.exc.NotSupportedError, match="INCREMENT BY 0 in Galera"):
        celery_app.backend.store_result("celery-0", 0, states.SUCCESS)
    for sequence in ("task_id_sequence", "taskset_id_sequence"):
        node1.execute(f"CREATE SEQUENCE `{galera_db.name}`.{sequence} INCREMENT BY 0")
    celery_app = Celery("celery-own", set_as_current=False)
    celery_app.conf.update(result_backend="db+" + db_url, **CONF)
    celery = celery_app.backend
    celery.store_result("celery-1", "from celery", states.SUCCESS)
    raw = backend_on(galera, galera_db, 2)
    assert raw.get_task_meta("celery-1")["result"] == "from celery"
    raw.store_result("raw-1", "from rawbackend", states.SUCCESS)
    assert celery.get_task_meta("raw-1")["result"] == "from rawbackend"
    celery.ResultSession().get_bind().dispose()


def test_a_sequence_missing_next_to_its_tables_is_made_past_their_ids(galera, galera_db):
    """Tables whose sequence went missing (a create that failed half-way):
    the next backend makes it, starting past the table's ids, so no store
    writes over another task's row."""
    first = backend_on(galera, galera_db, 1)
    for i in range(5):
        first.store_result(f"old-{i}", i, states.SUCCESS)
    first.session_manager.invalidate(first.url)
    node1 = galera.nodes[0]
    node1.execute(f"DROP SEQUENCE `{galera_db.name}`.task_id_sequence")
    second = backend_on(galera, galera_db, 2)
    second.store_result("new-1", "new", states.SUCCESS)
    found = dict(node1.execute(f"SELECT task_id, id FROM `{galera_db.name}`.celery_taskmeta"))
    assert {k: second.get_task_meta(k)["result"] for k in found if k.startswith("old-")} == \
        {f"old-{i}": i for i in range(5)}
    assert found["new-1"] > max(v for k, v in found.items() if k != "new-1")


# -- figures -------------------------------------------------------------------

def _interleaved(operations: dict, count: int) -> dict[str, float]:
    """Each operation's median in ms, run in turn ``count`` times (interleaved:
    a busy moment of a shared machine falls on all of them alike)."""
    took: dict[str, list[float]] = {name: [] for name in operations}
    for i in range(count):
        for name, operation in operations.items():
            began = time.perf_counter()
            operation(i)
            took[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) * 1000 for name, values in took.items()}


def test_figures_store_latency_against_a_single_mariadb(galera, galera_db, figures):
    """Reported, not asserted: a store through the cluster against one on the
    machine's single MariaDB."""
    require_server("mysql")
    count = 300
    single_db = Database("mysql", MYSQL_URL, f"t_{uuid.uuid4().hex[:8]}", f"g_{uuid.uuid4().hex[:8]}",
                         chord_table=f"c_{uuid.uuid4().hex[:8]}")
    single = single_db.backend()
    cluster = backend_on(galera, galera_db, 1)
    try:
        single.store_result("warm", None, states.SUCCESS)
        cluster.store_result("warm", None, states.SUCCESS)
        medians = _interleaved({
            "single": lambda i: single.store_result(f"s-{i}", i, states.SUCCESS),
            "cluster": lambda i: cluster.store_result(f"c-{i}", i, states.SUCCESS),
        }, count)
    finally:
        single.session_manager.invalidate(single.url)
        single_db.query(f"DROP TABLE IF EXISTS `{single_db.task_table}`, `{single_db.group_table}`, "
                        f"`{single_db.chord_table}`")
    single_ms, cluster_ms = medians["single"], medians["cluster"]
    figures(f"store latency (median of {count}): single MariaDB {single_ms:.2f} ms, through the "
            f"cluster {cluster_ms:.2f} ms: {cluster_ms / single_ms:.2f}x (target <= 3x)")


def test_figures_what_the_causality_check_costs_a_read(galera, galera_db, figures):
    """Reported, not asserted: reads through node 2 of results stored through
    node 1, with and without wsrep_sync_wait, per statement or per connection."""
    count = 300
    cluster = backend_on(galera, galera_db, 1)
    for i in range(count):
        cluster.store_result(f"c-{i}", i, states.SUCCESS)
    checked = backend_on(galera, galera_db, 2)
    plain = backend_on(galera, galera_db, 2)
    checked.get_task_meta("c-0")
    plain.get_task_meta("c-0")
    plain.tables.use_variant("mariadb")  # the same reads without the check
    select = ("SELECT id, task_id, status, result, date_done, traceback, children "
              "FROM celery_taskmeta WHERE task_id = %s")
    bare = _connect(galera.nodes[1].port, database=galera_db.name)
    session = _connect(galera.nodes[1].port, database=galera_db.name)
    try:
        session.cursor().execute("SET SESSION wsrep_sync_wait = 1")

        def read(conn, sql):
            def run(i):
                cur = conn.cursor()
                cur.execute(sql, (f"c-{i}",))
                cur.fetchall()
            return run

        ms = _interleaved({
            "plain": lambda i: plain.get_task_meta(f"c-{i}", cache=False),
            "checked": lambda i: checked.get_task_meta(f"c-{i}", cache=False),
            "bare": read(bare, select),
            "statement": read(bare, "SET STATEMENT wsrep_sync_wait = 1 FOR " + select),
            "session": read(session, select),
        }, count)
    finally:
        bare.close()
        session.close()
    figures(f"read latency through node 2 (medians of {count}, interleaved): get_task_meta "
            f"{ms['plain']:.2f} ms without the causality check, {ms['checked']:.2f} ms with it "
            f"(SET STATEMENT, rawbackend's); the bare driver's SELECT {ms['bare']:.2f} ms, with SET "
            f"STATEMENT {ms['statement']:.2f} ms, on a connection with SET SESSION wsrep_sync_wait=1 "
            f"{ms['session']:.2f} ms")


def _store_for(url, seconds, prefix):
    counter = _count_retries()
    backend = app_on(url).backend
    backend.store_result(f"{prefix}-warm-{uuid.uuid4().hex}", None, states.SUCCESS)
    stored, failed = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            backend.store_result(f"{prefix}-{uuid.uuid4().hex}", stored, states.SUCCESS)
            stored += 1
        except Exception:
            failed += 1
    return {"stored": stored, "failed": failed, "retries": counter.celery_retries}


def test_figures_sequence_increment_by_0_against_nocache(galera, tmp_path, figures):
    """Reported, not asserted: stores/s of two processes on two nodes with the
    sequences INCREMENT BY 0 (rawbackend's choice) and NOCACHE (every id a
    replicated write of the sequence's row)."""
    seconds = 4.0
    lines = []
    for option in ("INCREMENT BY 0", "NOCACHE"):
        name = f"seq_{uuid.uuid4().hex[:8]}"
        node1 = galera.nodes[0]
        node1.execute(f"CREATE DATABASE `{name}`")
        try:
            for sequence in ("task_id_sequence", "taskset_id_sequence"):
                node1.execute(f"CREATE SEQUENCE `{name}`.{sequence} {option}")
            processes = []
            for k, node in enumerate(galera.nodes[:2]):
                out = tmp_path / f"{name}-{k}.json"
                p = CTX.Process(target=_child, daemon=True, args=(
                    _store_for, out, galera.url(node, database=name), seconds, f"p{k}"))
                p.start()
                processes.append((p, out))
            reports = []
            for p, out in processes:
                p.join(120)
                reports.append(json.loads(out.read_text()))
            stored = sum(r["stored"] for r in reports)
            lines.append(f"{option}: {stored / seconds:.0f} stores/s, "
                         f"{sum(r['retries'] for r in reports)} conflicts retried, "
                         f"{sum(r['failed'] for r in reports)} raised")
        finally:
            galera.nodes[0].execute(f"DROP DATABASE IF EXISTS `{name}`")
    figures("sequences, two processes on two nodes, distinct ids: " + "; ".join(lines))
