"""``rawbackend check`` and ``rawbackend migrate`` on every dialect, through the
installed console script (a subprocess), as an operator runs them.

The tables come from the places they come from in real life: Celery 5.7.0's
own backend, SQL shaped as Celery 5.5's models made them (no children, no
extended columns, no stamps, no date_done index), rawbackend itself with
parts taken away. Afterwards rawbackend and Celery's ``db+`` backend must both
read the rows written before and after.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import states
from celery.app.task import Context
from celery.result import AsyncResult, GroupResult

from conftest import Database, _drop, raw_connect, run_command, server_url

OLD_DATE = "2026-11-30 12:00:00.000000"
EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue", "stamps")


@contextmanager
def namespace_of_its_own(db: Database):
    """``db`` in a namespace of its own: on MySQL a database, where MariaDB's
    sequences live under Celery's fixed names (PostgreSQL: ``db``'s schema;
    SQLite: its file)."""
    if db.dialect != "mysql":
        yield db
        return
    name = f"m_{uuid.uuid4().hex[:10]}"
    db.query(f"CREATE DATABASE `{name}`")
    own = dataclasses.replace(db, schema=name, apps=[])
    try:
        yield own
    finally:
        _drop(own)
        db.query(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def spot(db) -> Database:
    with namespace_of_its_own(db) as own:
        yield own


def cli(db: Database, tmp_path, *args: str, **conf):
    """``rawbackend -A proj ARGS``: the app names the database, tables and
    schemas (and has ``conf``, given the first time)."""
    proj = tmp_path / "proj.py"
    if not proj.exists():
        proj.write_text(textwrap.dedent(f"""
            from celery import Celery
            app = Celery("proj")
            app.conf.result_backend = {"rawdb+" + db.url!r}
            app.conf.update({db.conf(**conf)!r})
        """))
    return run_command("-A", "proj", *args, cwd=tmp_path)


def cli_process(tmp_path, *args: str) -> subprocess.Popen:
    """``rawbackend -A proj ARGS`` running, its output read as it comes (``cli`` wrote proj.py)."""
    command = [str(Path(sys.executable).with_name("rawbackend")), "-A", "proj", *args]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def names(db: Database) -> dict[str, str]:
    """The tables as rawbackend's SQL (and so its output) names them."""
    tables = db.backend(database_create_tables_at_setup=False).tables
    return {kind: tables.slot(f"{kind}_table") for kind in ("task", "group", "chord")}


def is_mariadb(db: Database) -> bool:
    return db.dialect == "mysql" and "MariaDB" in db.query("SELECT VERSION()")[0][0]


# -- Celery 5.5's tables, as its models made them on each server ------------------


def create_celery_55_tables(db: Database) -> None:
    q = db.qualified
    blob, text, when = "BLOB", "TEXT", "DATETIME"
    if db.dialect == "sqlite":
        ident, key = "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT", ""
    elif db.dialect == "postgresql":
        ident, key = "id INTEGER NOT NULL", "PRIMARY KEY (id), "
        blob, when = "BYTEA", "TIMESTAMP WITHOUT TIME ZONE"
    elif is_mariadb(db):  # SQLAlchemy's MariaDB dialect: ids from sequences
        ident, key = "id INTEGER NOT NULL", "PRIMARY KEY (id), "
    else:
        ident, key = "id INTEGER NOT NULL AUTO_INCREMENT", "PRIMARY KEY (id), "
    if sequences(db):
        db.query(f"CREATE SEQUENCE {q('task_id_sequence')}")
        db.query(f"CREATE SEQUENCE {q('taskset_id_sequence')}")
    db.query(f"""CREATE TABLE {q(db.task_table)} ({ident}, task_id VARCHAR(155),
        status VARCHAR(50), result {blob}, date_done {when}, traceback {text},
        {key}UNIQUE (task_id))""")
    db.query(f"""CREATE TABLE {q(db.group_table)} ({ident}, taskset_id VARCHAR(155),
        result {blob}, date_done {when}, {key}UNIQUE (taskset_id))""")


def sequences(db: Database) -> bool:
    return db.dialect == "postgresql" or is_mariadb(db)


def next_id(db: Database, sequence: str) -> tuple[str, str]:
    """The id column and the expression of a new row's id, as Celery 5.5 inserted."""
    if db.dialect == "postgresql":
        return "id, ", f"nextval('{db.qualified(sequence)}'), "
    if is_mariadb(db):
        return "id, ", f"NEXTVAL({db.qualified(sequence)}), "
    return "", ""


def old_task_insert(db: Database) -> str:
    column, value = next_id(db, "task_id_sequence")
    mark = "?" if db.dialect == "sqlite" else "%s"
    return (f"INSERT INTO {db.qualified(db.task_table)} ({column}task_id, status, result, "
            f"date_done, traceback) VALUES ({value}{mark}, 'SUCCESS', {mark}, '{OLD_DATE}', NULL)")


def write_old_rows(db: Database, codec) -> None:
    """Rows as Celery 5.5's backend wrote them: three tasks and a group of them."""
    for n in range(3):
        db.query(old_task_insert(db), (f"old-{n}", json.dumps({"old": n}).encode()))
    group = GroupResult("old-group", [AsyncResult(f"old-{n}") for n in range(3)])
    payload = codec.encode(codec.prepare_value(group))
    column, value = next_id(db, "taskset_id_sequence")
    mark = "?" if db.dialect == "sqlite" else "%s"
    db.query(f"INSERT INTO {db.qualified(db.group_table)} ({column}taskset_id, result, date_done) "
             f"VALUES ({value}{mark}, {mark}, '{OLD_DATE}')",
             ("old-group", payload.encode() if isinstance(payload, str) else payload))


def request(**overrides) -> Context:
    fields = dict(
        args=[1, "two"], kwargs={"k": "v"}, task="proj.tasks.add", retries=1,
        hostname="celery@worker-1", delivery_info={"routing_key": "q"},
        stamped_headers=["on_duty"], stamps={"on_duty": "alice"},
    )
    fields.update(overrides)
    req = Context(**fields)
    req.children.append(AsyncResult("a-child"))
    return req


def both_read_everything(db: Database) -> None:
    """rawbackend and Celery's backend, on the migrated tables, each write new
    rows; both read the old rows and every new one."""
    raw = db.backend(result_extended=True, database_create_tables_at_setup=False)
    celery = db.app(prefix="db+", result_extended=True).backend
    raw.store_result("new-raw", {"by": "raw"}, states.SUCCESS, request=request())
    celery.store_result("new-celery", {"by": "celery"}, states.SUCCESS, request=request())
    raw.save_group("new-group", GroupResult("new-group", [AsyncResult("new-raw")]))
    for backend in (raw, celery):
        for n in range(3):
            meta = backend.get_task_meta(f"old-{n}", cache=False)
            assert (meta["status"], meta["result"]) == (states.SUCCESS, {"old": n})
        for task_id, by in (("new-raw", "raw"), ("new-celery", "celery")):
            meta = backend.get_task_meta(task_id, cache=False)
            assert meta["result"] == {"by": by}
            assert (meta["name"], meta["args"], meta["worker"]) == (
                "proj.tasks.add", [1, "two"], "celery@worker-1")
            assert [c[0][0] for c in meta["children"]] == ["a-child"]
            assert meta["on_duty"] == "alice"  # the stamps
        assert [r.id for r in backend.restore_group("old-group", cache=False)] == [
            "old-0", "old-1", "old-2"]
        assert [r.id for r in backend.restore_group("new-group", cache=False)] == ["new-raw"]


def plan_changes_nothing(db: Database, tmp_path, expected_steps: list[str]) -> None:
    """The plan lists each step; the tables are as before it (check says the same)."""
    before = cli(db, tmp_path, "check")
    plan = cli(db, tmp_path, "migrate")
    after = cli(db, tmp_path, "check")
    assert plan.returncode == 0, plan.stderr
    for step in expected_steps:
        assert step in plan.stdout, (step, plan.stdout)
    assert "Nothing was changed: run again with --apply" in plan.stdout
    assert before.returncode == after.returncode == 1
    assert before.stdout == after.stdout


def apply_twice(db: Database, tmp_path) -> None:
    first = cli(db, tmp_path, "migrate", "--apply", "--rewrite-tables")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Done:" in first.stdout and "step 1/" in first.stdout
    second = cli(db, tmp_path, "migrate", "--apply", "--rewrite-tables")
    assert second.returncode == 0, second.stderr
    assert "The tables are up to date: nothing to do." in second.stdout
    assert "step 1/" not in second.stdout
    check = cli(db, tmp_path, "check")
    assert check.returncode == 0, check.stdout
    assert "the tables are as this version needs them" in check.stdout


# -- migrate ----------------------------------------------------------------------


def test_migrate_tables_made_by_celery_5_7(spot, tmp_path):
    celery = spot.app(prefix="db+", result_extended=True).backend
    celery.ResultSession().close()  # Celery makes its tables
    for n in range(3):
        celery.store_result(f"old-{n}", {"old": n}, states.SUCCESS)
    celery.save_group("old-group", GroupResult("old-group", [AsyncResult(f"old-{n}") for n in range(3)]))
    table = names(spot)
    steps = [f"create table {table['chord']}"]
    if spot.dialect == "mysql":  # Celery's BLOB and TEXT: 64 KB
        steps += [f"widen columns of {table['task']}: result, traceback, children, args, "
                  "kwargs, stamps", f"widen column {table['group']}.result",
                  "rewrites the table (about", "(not run without --rewrite-tables)"]
    plan_changes_nothing(spot, tmp_path, steps)
    apply_twice(spot, tmp_path)
    both_read_everything(spot)


def test_migrate_tables_shaped_like_celery_5_5(spot, tmp_path):
    create_celery_55_tables(spot)
    write_old_rows(spot, spot.backend(database_create_tables_at_setup=False))
    table = names(spot)
    steps = [f"add column {table['task']}.{c}" for c in ("children", *EXTENDED)]
    steps += [f"create the index on {table['task']} (date_done)",
              f"create the index on {table['group']} (date_done)",
              f"create table {table['chord']}"]
    if spot.dialect == "mysql":
        steps += [f"widen columns of {table['task']}: result, traceback"]
    plan_changes_nothing(spot, tmp_path, steps)
    apply_twice(spot, tmp_path)
    both_read_everything(spot)


def test_rewrites_wait_for_their_flag(mysql_db, tmp_path):
    celery = mysql_db.app(prefix="db+").backend
    celery.ResultSession().close()
    done = cli(mysql_db, tmp_path, "migrate", "--apply")
    assert done.returncode == 0, done.stderr
    assert "Not run: 2 steps that rewrite a table; run again with --apply --rewrite-tables" in done.stdout
    check = cli(mysql_db, tmp_path, "check")
    assert check.returncode == 1
    assert "too small column" in check.stdout and "missing table" not in check.stdout
    ddl = mysql_db.query(f"SHOW CREATE TABLE `{mysql_db.task_table}`")[0][1].lower()
    assert "`result` blob" in ddl


def fill_old_rows(db: Database, rows: int) -> None:
    """``rows`` task rows as Celery 5.5 wrote them, in one INSERT ... SELECT:
    enough for each index build and table copy to take a while."""
    column, value = next_id(db, "task_id_sequence")
    task_id = "CONCAT('bulk-', i)" if db.dialect == "mysql" else "'bulk-' || i"
    # Digits crossed five times: no recursion (MariaDB may bound it at 1,000).
    assert rows <= 100_000
    digits = " UNION ALL ".join(f"SELECT {n}" for n in range(10))
    db.query(f"""INSERT INTO {db.qualified(db.task_table)}
                   ({column}task_id, status, result, date_done, traceback)
                 WITH d(i) AS ({digits}),
                      n(i) AS (SELECT a.i + 10 * b.i + 100 * c.i + 1000 * e.i + 10000 * f.i
                               FROM d a, d b, d c, d e, d f)
                 SELECT {value}{task_id}, 'SUCCESS', '"done"', '{OLD_DATE}', NULL
                 FROM n WHERE i < {rows}""")


def test_migrate_while_workers_write(spot, tmp_path, figures):
    """Celery 5.5 workers keep inserting task rows, and a rawbackend worker
    starts while migrate runs and keeps saving groups, while migrate adds
    columns, builds indexes (online) and, on MySQL, rewrites the tables: no
    write fails, every row is there after."""
    create_celery_55_tables(spot)
    fill_old_rows(spot, 50_000)
    stop = threading.Event()
    errors: list[BaseException] = []
    written: dict[str, list[str]] = {"task": [], "group": []}

    def old_worker():
        conn = (sqlite3.connect(spot.url[len("sqlite:///"):], timeout=60, isolation_level=None)
                if spot.dialect == "sqlite" else raw_connect(spot.dialect, spot.url))
        sql = old_task_insert(spot)
        try:
            while not stop.is_set():
                task_id = f"w-{uuid.uuid4().hex[:8]}"
                conn.cursor().execute(sql, (task_id, b'"done"'))
                written["task"].append(task_id)
                time.sleep(0.001)  # a worker between two tasks: SQLite's other writers get in
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    # Made here (Celery keeps an app's backend per thread), it sets up at its
    # first save, while migrate runs: it adds what its tables lack too.
    raw = spot.backend(database_create_tables_at_setup=False)

    def rawbackend_worker():
        try:
            while not stop.is_set():
                group_id = f"g-{uuid.uuid4().hex[:8]}"
                raw.save_group(group_id, GroupResult(group_id, [AsyncResult("x")]))
                written["group"].append(group_id)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=old_worker), threading.Thread(target=rawbackend_worker)]
    workers[0].start()
    cli(spot, tmp_path, "--help")  # writes proj.py
    writes_at_step = []  # how many rows the old worker had written as each step ended
    try:
        with cli_process(tmp_path, "migrate", "--apply", "--rewrite-tables") as migrate:
            output = []
            for line in migrate.stdout:
                output.append(line)
                if line.startswith("step "):
                    writes_at_step.append(len(written["task"]))
                    if len(writes_at_step) == 1:
                        workers[1].start()
            stderr = migrate.stderr.read()
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.join(60)
    assert not errors, errors
    assert migrate.returncode == 0, "".join(output) + stderr
    assert "Done:" in output[-1]
    if spot.dialect != "sqlite":
        # The old worker wrote while the steps ran, not only before and after
        # (SQLite has one writer at a time: its writes wait for the steps).
        assert writes_at_step[-1] > writes_at_step[0], output
    figures(f"{spot.dialect}: {writes_at_step[-1] - writes_at_step[0]} old-worker writes and "
            f"{len(written['group'])} rawbackend group saves during the migration's "
            f"{len(writes_at_step)} steps, none failed")
    check = cli(spot, tmp_path, "check")
    assert check.returncode == 0, "".join(output) + check.stdout
    tasks = {r[0] for r in spot.query(f"SELECT task_id FROM {spot.qualified(spot.task_table)}")}
    assert set(written["task"]) <= tasks and len(tasks) == 50_000 + len(written["task"])
    reader = spot.backend(database_create_tables_at_setup=False)
    for group_id in written["group"]:
        assert reader.restore_group(group_id, cache=False).id == group_id


# -- check ------------------------------------------------------------------------


def test_check_reports_each_kind_of_difference(spot, tmp_path):
    raw = spot.backend(result_extended=True)
    raw.store_result("before", 1, states.SUCCESS)  # rawbackend made its tables
    q, table = spot.qualified, names(spot)
    index = f"ix_{spot.task_table}_date_done"
    spot.query(f"DROP INDEX {q(index)}" if spot.dialect != "mysql"
               else f"DROP INDEX {index} ON {q(spot.task_table)}")
    spot.query(f"ALTER TABLE {q(spot.task_table)} DROP COLUMN stamps")
    spot.query(f"DROP TABLE {q(spot.chord_table)}")
    if spot.dialect == "mysql":
        spot.query(f"ALTER TABLE {q(spot.group_table)} MODIFY result BLOB")
    done = cli(spot, tmp_path, "check")
    assert done.returncode == 1
    expected = [
        f"missing table {table['chord']}: chords fail",
        f"missing column {table['task']}.stamps: every store with result_extended writes it",
        f"missing index {table['task']} (date_done): cleanup() reads the whole table",
        "fix: ",
    ]
    if spot.dialect == "mysql":
        expected.append(f"too small column {table['group']}.result: it holds at most 65,535 "
                        "bytes (blob), rawbackend's has no limit: a larger value is refused")
    for line in expected:
        assert line in done.stdout, (line, done.stdout)
    assert done.stdout.count("\nmissing ") + done.stdout.count("\ntoo small ") == len(expected) - 1
    apply_twice(spot, tmp_path)
    assert raw.get_task_meta("before", cache=False)["result"] == 1


def test_check_of_an_empty_database_then_migrate_creates_everything(spot, tmp_path):
    done = cli(spot, tmp_path, "check")
    assert done.returncode == 1
    assert done.stdout.count("missing table") == 3
    apply_twice(spot, tmp_path)
    raw = spot.backend(database_create_tables_at_setup=False)
    raw.store_result("t", 2, states.SUCCESS)
    assert raw.get_task_meta("t")["result"] == 2


def test_what_migrate_cannot_fix_is_said(pg_db, tmp_path):
    pg_db.backend().ResultSession().close()
    task = names(pg_db)["task"]
    pg_db.query(f'ALTER TABLE {pg_db.qualified(pg_db.task_table)} ALTER COLUMN worker TYPE VARCHAR(20)')
    pg_db.query(f'ALTER TABLE {pg_db.qualified(pg_db.task_table)} ALTER COLUMN date_done TYPE TIMESTAMPTZ')
    check = cli(pg_db, tmp_path, "check")
    assert check.returncode == 1
    assert (f"too small column {task}.worker: it holds at most 20 characters (character "
            "varying(20)), rawbackend's holds 155 characters: a larger value is left out") in check.stdout
    assert (f"wrong type {task}.date_done: it is timestamp with time zone, rawbackend reads "
            "and writes datetime there") in check.stdout
    assert check.stdout.count("fix: none that rawbackend migrate runs") == 2
    migrate = cli(pg_db, tmp_path, "migrate", "--apply")
    assert migrate.returncode == 1
    assert "No automatic fix: too small column" in migrate.stdout
    assert "2 differences left to fix by hand." in migrate.stdout


def test_a_step_that_times_out_on_a_lock_is_tried_again(pg_db, tmp_path):
    """A long transaction holds the table: the index build's lock wait times
    out (database_lock_timeout, 2 s here), and the step is tried again, and
    succeeds once the transaction ends (after 3 s)."""
    pg_db.backend().ResultSession().close()
    table = pg_db.qualified(pg_db.group_table)
    pg_db.query(f"DROP INDEX {pg_db.qualified(f'ix_{pg_db.group_table}_date_done')}")
    cli(pg_db, tmp_path, "--help", database_lock_timeout=2)  # writes proj.py
    holder = raw_connect("postgresql", pg_db.url)
    holder.execute("BEGIN")
    holder.execute(f"LOCK TABLE {table} IN SHARE MODE")  # blocks CREATE INDEX CONCURRENTLY
    release = threading.Timer(3.0, holder.rollback)
    try:
        with cli_process(tmp_path, "migrate", "--apply") as migrate:
            output = []
            for line in migrate.stdout:
                output.append(line)
                if line.strip().startswith("CREATE INDEX CONCURRENTLY"):  # the plan's last line
                    release.start()
            stderr = migrate.stderr.read()
    finally:
        release.cancel()
        if release.ident is not None:
            release.join()
        holder.close()
    assert migrate.returncode == 0, "".join(output) + stderr
    assert ", 2 tries)" in output[-2], output
    assert cli(pg_db, tmp_path, "check").returncode == 0


def test_an_invalid_index_is_rebuilt(pg_db, tmp_path):
    """A CREATE INDEX CONCURRENTLY that failed (a lock timeout, a cancel)
    leaves its index invalid: check says so, migrate drops and rebuilds it."""
    pg_db.backend().ResultSession().close()
    index = f"ix_{pg_db.task_table}_date_done"
    # What a failed concurrent build leaves behind (we are superuser here).
    pg_db.query(f"UPDATE pg_index SET indisvalid = false "
                f"WHERE indexrelid = '{pg_db.schema}.{index}'::regclass")
    check = cli(pg_db, tmp_path, "check")
    assert check.returncode == 1
    assert f"invalid index {names(pg_db)['task']} (date_done): {index} is marked invalid" in check.stdout
    assert "DROP INDEX CONCURRENTLY IF EXISTS" in check.stdout
    apply_twice(pg_db, tmp_path)
    assert pg_db.query(f"SELECT indisvalid FROM pg_index "
                       f"WHERE indexrelid = '{pg_db.schema}.{index}'::regclass") == [(True,)]


def test_a_missing_sequence_restarts_after_the_rows(server_db, tmp_path):
    if not sequences(server_db):
        pytest.skip("MySQL draws ids from AUTO_INCREMENT, not from sequences")
    with namespace_of_its_own(server_db) as spot:
        missing_sequence_restarts(spot, tmp_path)


def missing_sequence_restarts(spot: Database, tmp_path) -> None:
    raw = spot.backend()
    for n in range(5):
        raw.store_result(f"t-{n}", n, states.SUCCESS)
    sequence = spot.qualified("task_id_sequence")
    spot.query(f"DROP SEQUENCE {sequence}")
    check = cli(spot, tmp_path, "check")
    assert check.returncode == 1 and "missing sequence" in check.stdout
    apply_twice(spot, tmp_path)
    fresh = spot.backend(database_create_tables_at_setup=False)
    fresh.store_result("t-new", "new", states.SUCCESS)  # no id taken twice
    ids = [r[0] for r in spot.query(f"SELECT id FROM {spot.qualified(spot.task_table)} ORDER BY id")]
    assert len(ids) == 6 and ids[-1] > ids[-2]


# -- failures and exit codes --------------------------------------------------------


def test_a_failing_step_is_named_with_what_was_done(sqlite_db, tmp_path):
    create_celery_55_tables(sqlite_db)
    # A table with the index's name: building the index fails.
    sqlite_db.query(f"CREATE TABLE ix_{sqlite_db.task_table}_date_done (x)")
    done = cli(sqlite_db, tmp_path, "migrate", "--apply")
    assert done.returncode == 1
    assert "failed: there is already a table named ix_celery_taskmeta_date_done" in done.stdout
    assert "step 9 (create the index on \"celery_taskmeta\" (date_done)) failed" in done.stdout
    assert "Steps done before it: 1, 2, 3, 4, 5, 6, 7, 8; nothing after it was run." in done.stdout
    columns = {r[1] for r in sqlite_db.query("PRAGMA table_info(celery_taskmeta)")}
    assert {"children", *EXTENDED} <= columns
    assert not sqlite_db.query("SELECT name FROM sqlite_master WHERE name = 'rawbackend_chordmeta'")


@pytest.mark.parametrize("command", ["check", "migrate"])
def test_a_wrong_url_is_a_usage_error_without_its_password(command):
    done = run_command(command, "--url", "postgresql://postgres:s3cret-pw@127.0.0.1:1/test")
    assert done.returncode == 2
    assert (f"rawbackend {command}: error: could not connect to the postgresql server "
            "at 127.0.0.1:1") in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_the_server_refusing_is_a_usage_error(mysql_db):
    url = server_url("mysql").rpartition("/")[0] + "/no_such_database_h8"
    done = run_command("check", "--url", url)
    assert done.returncode == 2
    assert "rawbackend check: error:" in done.stderr and "no_such_database_h8" in done.stderr
