"""Storage interoperability with Celery 5.7.0's own backend (SPEC §4), both ways.

Every test runs Celery's SQLAlchemy ``DatabaseBackend`` (``db+``) and
rawbackend (``rawdb+``) on the very same tables, on sqlite, postgresql and
mysql: what one writes the other reads, deletes, cleans up and leaves alone,
and each works on tables that the other created. Celery is the reference.
"""
from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import states
from celery.app.task import Context
from celery.result import AsyncResult, GroupResult, result_from_tuple

from conftest import Database, _drop
from rawbackend.dialects import MYSQL

WRITERS = pytest.mark.parametrize("writer", ["celery", "raw"], ids=["celery-writes", "raw-writes"])

# What a date_done looks like as each dialect stores it (SQLite: SQLAlchemy's
# text format, which rawbackend writes too), for backdating rows by hand.
LONG_AGO = "2000-01-01 00:00:00.000000"
SQLITE_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\Z")


def tid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def pair(db: Database, writer: str, **conf):
    """``(writer, reader)``: Celery's backend and ours on ``db``'s tables.

    The writer's app comes first and creates the tables; the reader is told
    not to, so each direction also runs one backend on the other's tables.
    """
    first = db.app(prefix="db+" if writer == "celery" else "rawdb+", **conf).backend
    second = db.app(
        prefix="rawdb+" if writer == "celery" else "db+",
        database_create_tables_at_setup=False,
        **conf,
    ).backend
    return first, second


def both(db: Database, **conf):
    """``(celery, raw)`` on ``db``'s tables, Celery's made first."""
    return pair(db, "celery", **conf)


def request(**overrides) -> Context:
    """A task request as a worker has it, built as Celery's own tests do."""
    fields = dict(
        args=[1, "two", {"three": 3}],
        kwargs={"key": "value", "ünï": ["cødé"]},
        task="proj.tasks.add",
        retries=2,
        hostname="celery@worker-1",
        delivery_info={"routing_key": "q"},
        stamped_headers=["on_duty", "run"],
        stamps={"on_duty": "alice", "run": [1, 2]},
    )
    fields.update(overrides)
    return Context(**fields)


def utcnow_naive() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def task_rows(db: Database) -> dict[str, tuple]:
    """Every row of the task table, bare: ``{task_id: (id, status, date_done)}``."""
    rows = db.query(f"SELECT task_id, id, status, date_done FROM {db.qualified(db.task_table)}")
    return {row[0]: row[1:] for row in rows}


def backdate(db: Database, table: str, key_column: str, key: str) -> None:
    """Set a row's date_done far in the past, as the dialect stores it."""
    assert "'" not in key
    db.query(f"UPDATE {db.qualified(table)} SET date_done = '{LONG_AGO}' WHERE {key_column} = '{key}'")
    rows = db.query(f"SELECT date_done FROM {db.qualified(table)} WHERE {key_column} = '{key}'")
    assert [str(r[0])[:10] for r in rows] == ["2000-01-01"]


# -- namespaces of the test's own ------------------------------------------------


def _new_namespace(db: Database, tmp_path, label: str) -> Database:
    """A Database like ``db`` in a namespace of its own on the same server:
    a schema (PostgreSQL), a database (MySQL: its sequences live there too),
    or a file (SQLite)."""
    suffix = uuid.uuid4().hex[:10]
    if db.dialect == "sqlite":
        return dataclasses.replace(db, url=f"sqlite:///{tmp_path / f'{label}.db'}", apps=[])
    schema = f"s_{label}_{suffix}"
    if db.dialect == "postgresql":
        db.query(f'CREATE SCHEMA "{schema}"')
    else:
        db.query(f"CREATE DATABASE `{schema}`")
    return dataclasses.replace(db, schema=schema, apps=[])


def _drop_namespace(db: Database) -> None:
    _drop(db)  # closes the pools; drops a PostgreSQL schema
    if db.dialect == "mysql" and db.schema:
        db.query(f"DROP DATABASE IF EXISTS `{db.schema}`")


@pytest.fixture
def ns_db(db, tmp_path):
    """``db`` with a namespace of its own on MySQL too (a database, where the
    sequences of MariaDB's tables live), so nothing is shared with other tests."""
    if db.dialect != "mysql":
        yield db
        return
    own = _new_namespace(db, tmp_path, "own")
    try:
        yield own
    finally:
        _drop_namespace(own)


@pytest.fixture
def twin(ns_db, tmp_path):
    """A second namespace next to ``ns_db``'s, on the same server."""
    other = _new_namespace(ns_db, tmp_path, "twin")
    try:
        yield other
    finally:
        _drop_namespace(other)


# -- values, both ways ------------------------------------------------------------

SUCCESS_VALUES = {
    "dict": {"answer": 42, "nested": {"list": [1, 2.5, None, True]}},
    "list": [1, "two", 3.5, None, [False]],
    "str": "a plain string",
    "int": 1234567890123,
    "none": None,
    "unicode": {"clé": ["ünïcødé", "日本語", "emoji 🎉"], "ß": {"π": "∑ 3.14"}},
}


@WRITERS
def test_success_values_read_alike(db, writer):
    """SUCCESS results of every JSON type, nested unicode included, read the
    same by the other backend as by the one that stored them."""
    writer, reader = pair(db, writer)
    ids = {name: tid(name) for name in SUCCESS_VALUES}
    for name, value in SUCCESS_VALUES.items():
        writer.store_result(ids[name], value, states.SUCCESS)
    for name, value in SUCCESS_VALUES.items():
        meta = reader.get_task_meta(ids[name], cache=False)
        assert meta["status"] == states.SUCCESS
        assert meta["result"] == value
        assert meta["traceback"] is None
        assert meta["children"] is None
        assert meta == writer.get_task_meta(ids[name], cache=False)
        result = reader.app.AsyncResult(ids[name], backend=reader)
        assert result.successful() and result.result == value


@WRITERS
def test_failure_and_retry_exceptions_read_alike(db, writer):
    """FAILURE and RETRY come back from the other backend as exception
    instances of the stored type and args, with the traceback text."""
    writer, reader = pair(db, writer)
    key_error_tb = "Traceback (most recent call last):\n  ünï\nKeyError: 'missing'"
    retry_tb = 'Traceback:\n  File "t.py", line 1\nConnectionError'
    cases = [
        (tid("fail"), states.FAILURE, KeyError("missing", 7), key_error_tb),
        (tid("retry"), states.RETRY, ConnectionError("try again"), retry_tb),
        (tid("value"), states.FAILURE, ValueError("bad 日本"), None),
    ]
    for task_id, state, exc, traceback in cases:
        writer.store_result(task_id, exc, state, traceback=traceback)
    for task_id, state, exc, traceback in cases:
        meta = reader.get_task_meta(task_id, cache=False)
        own = writer.get_task_meta(task_id, cache=False)
        assert meta["status"] == own["status"] == state
        assert type(meta["result"]) is type(exc) and type(own["result"]) is type(exc)
        assert meta["result"].args == own["result"].args == exc.args
        assert meta["traceback"] == own["traceback"] == traceback
        assert meta["date_done"] == own["date_done"]
        assert (meta["date_done"] is None) == (state == states.RETRY)  # RETRY is not ready
        result = reader.app.AsyncResult(task_id, backend=reader)
        assert result.state == state and result.traceback == traceback


@WRITERS
def test_started_with_meta_read_alike(db, writer):
    """A STARTED state with progress meta (``update_state``) is read alike; it
    has no date_done in either backend."""
    writer, reader = pair(db, writer)
    task_id = tid("started")
    progress = {"pid": 4242, "hostname": "celery@wörker", "done": 0.25}
    writer.store_result(task_id, progress, states.STARTED)
    meta = reader.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.STARTED
    assert meta["result"] == progress
    assert meta["date_done"] is None
    assert meta == writer.get_task_meta(task_id, cache=False)


@WRITERS
def test_extended_results_read_alike(db, writer):
    """With result_extended on both apps: name, args, kwargs, worker, retries,
    queue and the stamps written by one are read by the other."""
    writer, reader = pair(db, writer, result_extended=True)
    task_id = tid("extended")
    writer.store_result(task_id, {"sum": 3}, states.SUCCESS, request=request())
    meta = reader.get_task_meta(task_id, cache=False)
    assert meta["result"] == {"sum": 3}
    assert meta["name"] == "proj.tasks.add"
    assert meta["args"] == [1, "two", {"three": 3}]
    assert meta["kwargs"] == {"key": "value", "ünï": ["cødé"]}
    assert meta["worker"] == "celery@worker-1"
    assert meta["retries"] == 2
    assert meta["queue"] == "q"
    assert meta["stamped_headers"] == ["on_duty", "run"]
    assert meta["on_duty"] == "alice" and meta["run"] == [1, 2]
    assert "stamps" not in meta
    assert meta == writer.get_task_meta(task_id, cache=False)


@WRITERS
def test_stamps_kept_when_the_other_stores_without_them(db, writer):
    """Celery keeps the stamps stored earlier when a later store has none; a
    store by the other backend does the same."""
    first, second = pair(db, writer, result_extended=True)
    task_id = tid("stamps")
    first.store_result(task_id, None, states.STARTED, request=request())
    second.store_result(
        task_id, "done", states.SUCCESS,
        request=request(stamped_headers=None, stamps=None, hostname="celery@worker-2"),
    )
    for backend in (first, second):
        meta = backend.get_task_meta(task_id, cache=False)
        assert meta["status"] == states.SUCCESS and meta["result"] == "done"
        assert meta["worker"] == "celery@worker-2"
        assert meta["stamped_headers"] == ["on_duty", "run"] and meta["on_duty"] == "alice"


@WRITERS
def test_children_read_alike(db, writer):
    """A task's children (results and a group) stored by one backend are
    rebuilt by the other, ids in order."""
    writer, reader = pair(db, writer)
    app = writer.app
    task_id = tid("parent")
    child_ids = [tid("child"), tid("child")]
    group_child = GroupResult(tid("group"), [AsyncResult(tid("member"), app=app)], app=app)
    req = Context()
    req.children.extend([AsyncResult(child_ids[0], app=app), AsyncResult(child_ids[1], app=app), group_child])
    writer.store_result(task_id, 42, states.SUCCESS, request=req)

    meta = reader.get_task_meta(task_id, cache=False)
    assert meta == writer.get_task_meta(task_id, cache=False)
    rebuilt = [result_from_tuple(child, reader.app) for child in meta["children"]]
    assert [child.id for child in rebuilt] == [*child_ids, group_child.id]
    assert isinstance(rebuilt[2], GroupResult)
    assert [r.id for r in rebuilt[2].results] == [group_child.results[0].id]
    children = reader.app.AsyncResult(task_id, backend=reader).children
    assert [child.id for child in children] == [*child_ids, group_child.id]


@WRITERS
def test_groups_saved_by_one_are_restored_and_deleted_by_the_other(db, writer):
    """``save_group`` by one, ``restore_group`` by the other gives a
    GroupResult with the same ids (a nested group too); a ``delete_group`` by
    either is seen by both."""
    writer, reader = pair(db, writer)
    app = writer.app
    groups = []
    for _ in range(2):
        nested = GroupResult(tid("nested"), [AsyncResult(tid("n"), app=app)], app=app)
        members = [AsyncResult(tid("m"), app=app) for _ in range(3)] + [nested]
        group = GroupResult(tid("group"), members, app=app)
        writer.save_group(group.id, group)
        groups.append(group)

    for group in groups:
        restored = reader.restore_group(group.id, cache=False)
        assert isinstance(restored, GroupResult)
        assert restored.id == group.id
        assert [r.id for r in restored.results] == [r.id for r in group.results]
        assert [r.id for r in restored.results[3].results] == [group.results[3].results[0].id]
        ours, theirs = reader._restore_group(group.id), writer._restore_group(group.id)
        assert ours["date_done"] == theirs["date_done"]
        assert ours["date_done"].tzinfo is None

    writer.delete_group(groups[0].id)
    reader.delete_group(groups[1].id)
    for group in groups:
        assert reader.restore_group(group.id, cache=False) is None
        assert writer.restore_group(group.id, cache=False) is None


@WRITERS
def test_forget_and_exists_across_backends(db, writer):
    """``task_result_exists`` sees the other backend's rows, and ``forget``
    by either removes them for both."""
    writer, reader = pair(db, writer)
    first, second = tid("first"), tid("second")
    writer.store_result(first, 1, states.SUCCESS)
    writer.store_result(second, 2, states.SUCCESS)
    assert reader.task_result_exists(first) and reader.task_result_exists(second)
    assert not reader.task_result_exists(tid("never"))

    reader.forget(first)
    writer.forget(second)
    for task_id in (first, second):
        for backend in (writer, reader):
            assert not backend.task_result_exists(task_id)
            meta = backend.get_task_meta(task_id, cache=False)
            assert meta["status"] == states.PENDING and meta["result"] is None


@WRITERS
def test_cleanup_deletes_the_others_expired_rows(db, writer):
    """``cleanup()`` by one backend deletes the expired task and group rows
    that the other wrote, and leaves fresh ones and unfinished ones."""
    writer, reader = pair(db, writer)
    old, new, running = tid("old"), tid("new"), tid("running")
    for task_id in (old, new):
        writer.store_result(task_id, task_id, states.SUCCESS)
    writer.store_result(running, None, states.STARTED)  # no date_done
    old_group = GroupResult(tid("oldgroup"), [AsyncResult(tid("m"))])
    new_group = GroupResult(tid("newgroup"), [AsyncResult(tid("m"))])
    writer.save_group(old_group.id, old_group)
    writer.save_group(new_group.id, new_group)
    backdate(db, db.task_table, "task_id", old)
    backdate(db, db.group_table, "taskset_id", old_group.id)

    reader.cleanup()

    assert writer.get_task_meta(old, cache=False)["status"] == states.PENDING
    assert writer.get_task_meta(new, cache=False)["result"] == new
    assert writer.get_task_meta(running, cache=False)["status"] == states.STARTED
    assert writer.restore_group(old_group.id, cache=False) is None
    assert writer.restore_group(new_group.id, cache=False).id == new_group.id
    assert set(task_rows(db)) == {new, running}


# -- date_done ---------------------------------------------------------------------


def _stored_date_done(db: Database, table: str, key_column: str, key: str):
    expression = "date_done, typeof(date_done)" if db.dialect == "sqlite" else "date_done, NULL"
    rows = db.query(f"SELECT {expression} FROM {db.qualified(table)} WHERE {key_column} = '{key}'")
    assert len(rows) == 1
    return rows[0]


def test_date_done_stored_and_read_alike(db):
    """Both backends store date_done alike (same column type and format) and
    read back the same naive UTC datetime for the same row."""
    celery, raw = both(db)
    by_celery, by_raw = tid("celery"), tid("raw")
    celery.store_result(by_celery, 1, states.SUCCESS)
    raw.store_result(by_raw, 1, states.SUCCESS)
    celery_group = GroupResult(tid("cg"), [AsyncResult(tid("m"))])
    raw_group = GroupResult(tid("rg"), [AsyncResult(tid("m"))])
    celery.save_group(celery_group.id, celery_group)
    raw.save_group(raw_group.id, raw_group)

    stored = {
        by_celery: _stored_date_done(db, db.task_table, "task_id", by_celery),
        by_raw: _stored_date_done(db, db.task_table, "task_id", by_raw),
        celery_group.id: _stored_date_done(db, db.group_table, "taskset_id", celery_group.id),
        raw_group.id: _stored_date_done(db, db.group_table, "taskset_id", raw_group.id),
    }
    # The driver sees the same kind of value in every row, whoever wrote it.
    kinds = {(type(value), kind) for value, kind in stored.values()}
    assert len(kinds) == 1
    if db.dialect == "sqlite":
        assert kinds == {(str, "text")}
        assert all(SQLITE_DATETIME.match(value) for value, _ in stored.values())
    else:
        assert all(value.tzinfo is None for value, _ in stored.values())

    now = utcnow_naive()
    for task_id in (by_celery, by_raw):
        read = [b.get_task_meta(task_id, cache=False)["date_done"] for b in (celery, raw)]
        assert read[0] == read[1]
        assert read[0].tzinfo is None
        assert str(read[0]) == str(stored[task_id][0])  # what was stored, unshifted
        assert abs(read[0] - now) < timedelta(minutes=10)  # UTC, not local time
    for group in (celery_group, raw_group):
        read = [b._restore_group(group.id)["date_done"] for b in (celery, raw)]
        assert read[0] == read[1] and read[0].tzinfo is None
        assert abs(read[0] - now) < timedelta(minutes=10)


def test_date_done_read_alike_when_the_app_has_another_timezone(db):
    """With an app timezone far from UTC, both backends read every row alike,
    and rawbackend's own rows are UTC. Celery's are not on MySQL and SQLite
    (it stores app.now()'s wall-clock time there): a bug not copied (SPEC §3)."""
    celery, raw = both(db, timezone="Pacific/Kiritimati")  # UTC+14
    by_celery, by_raw = tid("celery"), tid("raw")
    celery.store_result(by_celery, 1, states.SUCCESS)
    raw.store_result(by_raw, 1, states.SUCCESS)
    values = [celery.get_task_meta(t, cache=False)["date_done"] for t in (by_celery, by_raw)]
    assert values == [raw.get_task_meta(t, cache=False)["date_done"] for t in (by_celery, by_raw)]
    assert abs(values[1] - utcnow_naive()) < timedelta(minutes=10)


# -- SUCCESS is final, whoever stored it ----------------------------------------------


@WRITERS
@pytest.mark.parametrize("extended", [False, True], ids=["plain", "extended"])
def test_success_is_final_across_backends(db, writer, extended):
    """Once one backend stored SUCCESS, the other's later STARTED or FAILURE
    for the same task is ignored, extended columns included."""
    conf = {"result_extended": True} if extended else {}
    first, second = pair(db, writer, **conf)
    task_id = tid("sticky")
    first.store_result(task_id, {"first": True}, states.SUCCESS, request=request())
    before = first.get_task_meta(task_id, cache=False)
    second.store_result(task_id, {"pid": 2}, states.STARTED, request=request(hostname="celery@w2", retries=5))
    second.store_result(task_id, KeyError("late"), states.FAILURE, traceback="tb", request=request())
    for backend in (first, second):
        assert backend.get_task_meta(task_id, cache=False) == before
    assert before["status"] == states.SUCCESS and before["result"] == {"first": True}


# -- tables: who made them, what they are -------------------------------------------------


def _sqlite_table(db: Database, table: str) -> dict:
    columns = db.query(f"SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{table}')")
    indexes = []
    listed = db.query(f"SELECT name, \"unique\", origin FROM pragma_index_list('{table}')")
    for name, unique, origin in listed:
        cols = [r[0] for r in db.query(f"SELECT name FROM pragma_index_info('{name}') ORDER BY seqno")]
        indexes.append((name, unique, origin, cols))
    (sql,), = db.query(f"SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
    return {"columns": columns, "indexes": sorted(indexes), "autoincrement": "AUTOINCREMENT" in sql.upper()}


def _postgresql_table(db: Database, table: str) -> dict:
    columns = db.query(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (db.schema, table))
    indexes = db.query(
        "SELECT indexname, replace(indexdef, %s, '<schema>') FROM pg_indexes "
        "WHERE schemaname = %s AND tablename = %s ORDER BY indexname", (db.schema, db.schema, table))
    return {"columns": columns, "indexes": indexes}


def _mysql_table(db: Database, table: str) -> dict:
    columns = db.query(
        "SELECT column_name, column_type, is_nullable, column_default, extra, column_key "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position", (db.schema, table))
    indexes = db.query(
        "SELECT index_name, non_unique, seq_in_index, column_name FROM information_schema.statistics "
        "WHERE table_schema = %s AND table_name = %s ORDER BY index_name, seq_in_index", (db.schema, table))
    options = db.query(
        "SELECT engine, table_collation FROM information_schema.tables "
        "WHERE table_schema = %s AND table_name = %s", (db.schema, table))
    return {"columns": columns, "indexes": indexes, "options": options}


def _sequences(db: Database) -> list:
    if db.dialect == "postgresql":
        return db.query(
            "SELECT sequence_name, data_type, start_value, minimum_value, maximum_value, increment, "
            "cycle_option FROM information_schema.sequences WHERE sequence_schema = %s ORDER BY 1",
            (db.schema,))
    if db.dialect == "mysql":
        names = db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type = 'SEQUENCE' ORDER BY 1", (db.schema,))
        return [db.query(f"SHOW CREATE SEQUENCE `{db.schema}`.`{name}`")[0] for (name,) in names]
    return []


def definition(db: Database, task: str | None = None, group: str | None = None) -> dict:
    """The two tables (columns, types, indexes) and the sequences of ``db``'s
    namespace, as the server describes them."""
    describe = {"sqlite": _sqlite_table, "postgresql": _postgresql_table, "mysql": _mysql_table}[db.dialect]
    return {
        "task": describe(db, task or db.task_table),
        "group": describe(db, group or db.group_table),
        "sequences": _sequences(db),
    }


def _column(table_definition: dict, name: str) -> tuple:
    (row,) = [row for row in table_definition["columns"] if row[0] == name]
    return row


def test_table_definitions_are_celerys(ns_db, twin):
    """Celery (in one namespace) and rawbackend (in another) create the same
    tables: columns, types, indexes, sequences; the one difference is
    rawbackend's LONGBLOB/LONGTEXT on MySQL where Celery's BLOB/TEXT stop at 64 KB."""
    default_names = {"database_table_names": {}}
    celery = ns_db.app(prefix="db+", **default_names).backend
    raw = twin.app(**default_names).backend
    celery.store_result(tid("c"), 1, states.SUCCESS)  # the tables exist and work
    raw.store_result(tid("r"), 1, states.SUCCESS)

    by_celery = definition(ns_db, "celery_taskmeta", "celery_tasksetmeta")
    by_raw = definition(twin, "celery_taskmeta", "celery_tasksetmeta")
    assert by_celery["task"]["columns"] and by_celery["group"]["columns"]
    expected = by_celery
    if ns_db.dialect == "mysql":
        # (table, column): (Celery's type, rawbackend's)
        widened = {
            ("task", "result"): ("blob", "longblob"),
            ("task", "traceback"): ("text", "longtext"),
            ("task", "children"): ("blob", "longblob"),
            ("task", "args"): ("blob", "longblob"),
            ("task", "kwargs"): ("blob", "longblob"),
            ("task", "stamps"): ("blob", "longblob"),
            ("group", "result"): ("blob", "longblob"),
        }
        celery_types = {key: _column(by_celery[key[0]], key[1])[1] for key in widened}
        assert celery_types == {key: types[0] for key, types in widened.items()}
        expected = {**by_celery, "task": dict(by_celery["task"]), "group": dict(by_celery["group"])}
        for (table, column), (_, wide) in widened.items():
            expected[table]["columns"] = [
                (row[0], wide, *row[2:]) if row[0] == column else row for row in expected[table]["columns"]
            ]
    assert by_raw == expected
    if ns_db.dialect == "postgresql":
        assert [row[0] for row in by_raw["sequences"]] == ["task_id_sequence", "taskset_id_sequence"]
        assert [row[0] for row in by_raw["task"]["indexes"]] == [
            "celery_taskmeta_pkey", "celery_taskmeta_task_id_key", "ix_celery_taskmeta_date_done"]


def test_rawbackend_works_on_tables_celery_created(ns_db):
    """Tables made by Celery (its default create_tables_at_setup) serve
    rawbackend told not to create any, and rawbackend changes none of them."""
    celery = ns_db.app(prefix="db+", result_extended=True).backend
    assert celery.app.conf.database_create_tables_at_setup is True  # Celery's default
    celery.store_result(tid("c"), 1, states.SUCCESS)
    made_by_celery = definition(ns_db)

    raw = ns_db.app(result_extended=True, database_create_tables_at_setup=False).backend
    task_id = tid("raw")
    raw.store_result(task_id, {"raw": True}, states.SUCCESS, request=request())
    group = GroupResult(tid("g"), [AsyncResult(task_id)])
    raw.save_group(group.id, group)
    assert raw.get_task_meta(task_id, cache=False)["result"] == {"raw": True}
    assert raw.restore_group(group.id, cache=False).results[0].id == task_id
    assert celery.get_task_meta(task_id, cache=False)["worker"] == "celery@worker-1"
    raw.cleanup()
    assert definition(ns_db) == made_by_celery


def test_celery_works_on_tables_rawbackend_created(ns_db):
    """Tables made by rawbackend serve Celery with create_tables_at_setup
    False (its ids from rawbackend's sequences where it uses them), and
    Celery adds nothing to them."""
    raw = ns_db.app(result_extended=True).backend
    raw.store_result(tid("r"), 1, states.SUCCESS)
    made_by_raw = definition(ns_db)

    celery = ns_db.app(prefix="db+", result_extended=True, database_create_tables_at_setup=False).backend
    task_id = tid("celery")
    celery.store_result(task_id, {"celery": True}, states.SUCCESS, request=request())
    group = GroupResult(tid("g"), [AsyncResult(task_id)])
    celery.save_group(group.id, group)
    assert celery.get_task_meta(task_id, cache=False)["result"] == {"celery": True}
    assert celery.restore_group(group.id, cache=False).results[0].id == task_id
    assert raw.get_task_meta(task_id, cache=False)["worker"] == "celery@worker-1"
    celery.cleanup()
    assert definition(ns_db) == made_by_raw


@pytest.mark.parametrize("db", ["mysql"], indirect=True)
def test_celery_reads_and_writes_over_64kb_in_rawbackends_mysql_table(ns_db):
    """In rawbackend's MySQL tables (LONGBLOB/LONGTEXT) Celery's backend
    writes and reads results and tracebacks bigger than BLOB/TEXT's 64 KB,
    and rawbackend reads them, and the reverse."""
    raw = ns_db.app().backend
    celery = ns_db.app(prefix="db+", database_create_tables_at_setup=False).backend
    big = "ünï" * 40_000  # well over 64 KB once JSON-encoded
    trace = "Traceback:\n" + "  frame ü\n" * 10_000  # 110 KB
    by_celery, by_raw, failed = tid("celery"), tid("raw"), tid("failed")
    celery.store_result(by_celery, big, states.SUCCESS)
    celery.store_result(failed, ValueError("x"), states.FAILURE, traceback=trace)
    raw.store_result(by_raw, big, states.SUCCESS)
    for backend in (celery, raw):
        for task_id in (by_celery, by_raw):
            assert backend.get_task_meta(task_id, cache=False)["result"] == big
        assert backend.get_task_meta(failed, cache=False)["traceback"] == trace
    (length,), = ns_db.query(
        f"SELECT MAX(LENGTH(result)) FROM {ns_db.qualified(ns_db.task_table)}")
    assert length > 65_535
    (tb_length,), = ns_db.query(
        f"SELECT MAX(LENGTH(traceback)) FROM {ns_db.qualified(ns_db.task_table)}")
    assert tb_length > 65_535


# -- old tables ---------------------------------------------------------------------------

# Celery 5.7.0's DDL on each dialect, without the task table's children and
# stamps columns (as tables made by older Celery versions are).
OLD_DDL = {
    "sqlite": [
        """CREATE TABLE {t} (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, task_id VARCHAR(155),
            status VARCHAR(50), result BLOB, date_done DATETIME, traceback TEXT,
            name VARCHAR(155), args BLOB, kwargs BLOB, worker VARCHAR(155),
            retries INTEGER, queue VARCHAR(155), UNIQUE (task_id))""",
        "CREATE INDEX ix_celery_taskmeta_date_done ON {t} (date_done)",
        """CREATE TABLE {g} (
            id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, taskset_id VARCHAR(155),
            result BLOB, date_done DATETIME, UNIQUE (taskset_id))""",
        "CREATE INDEX ix_celery_tasksetmeta_date_done ON {g} (date_done)",
    ],
    "postgresql": [
        "CREATE SEQUENCE {s}task_id_sequence",
        """CREATE TABLE {t} (
            id INTEGER NOT NULL, task_id VARCHAR(155), status VARCHAR(50), result BYTEA,
            date_done TIMESTAMP WITHOUT TIME ZONE, traceback TEXT, name VARCHAR(155),
            args BYTEA, kwargs BYTEA, worker VARCHAR(155), retries INTEGER,
            queue VARCHAR(155), PRIMARY KEY (id), UNIQUE (task_id))""",
        "CREATE INDEX ix_celery_taskmeta_date_done ON {t} (date_done)",
        "CREATE SEQUENCE {s}taskset_id_sequence",
        """CREATE TABLE {g} (
            id INTEGER NOT NULL, taskset_id VARCHAR(155), result BYTEA,
            date_done TIMESTAMP WITHOUT TIME ZONE, PRIMARY KEY (id), UNIQUE (taskset_id))""",
        "CREATE INDEX ix_celery_tasksetmeta_date_done ON {g} (date_done)",
    ],
    # MariaDB 10.3+, as SQLAlchemy's MariaDB dialect makes them: ids from sequences.
    "mysql": [
        "CREATE SEQUENCE {s}task_id_sequence",
        """CREATE TABLE {t} (
            id INTEGER NOT NULL, task_id VARCHAR(155), status VARCHAR(50), result BLOB,
            date_done DATETIME, traceback TEXT, name VARCHAR(155), args BLOB, kwargs BLOB,
            worker VARCHAR(155), retries INTEGER, queue VARCHAR(155),
            PRIMARY KEY (id), UNIQUE (task_id))""",
        "CREATE INDEX ix_celery_taskmeta_date_done ON {t} (date_done)",
        "CREATE SEQUENCE {s}taskset_id_sequence",
        """CREATE TABLE {g} (
            id INTEGER NOT NULL, taskset_id VARCHAR(155), result BLOB, date_done DATETIME,
            PRIMARY KEY (id), UNIQUE (taskset_id))""",
        "CREATE INDEX ix_celery_tasksetmeta_date_done ON {g} (date_done)",
    ],
}
# The type Celery gives children and stamps on each dialect.
BINARY_TYPE = {"sqlite": "BLOB", "postgresql": "bytea", "mysql": "blob"}
# What rawbackend adds: Celery's type, but LONGBLOB on MySQL (BLOB stops at 64 KB).
ADDED_BINARY_TYPE = {**BINARY_TYPE, "mysql": "longblob"}


def test_old_task_table_gets_children_and_stamps(ns_db):
    """A task table without children and stamps (older Celery) gets both
    columns, of Celery's type (LONGBLOB on MySQL), when rawbackend sets up, as Celery 5.7 does;
    then extended stores with stamps and children work, and Celery reads them."""
    db = ns_db
    prefix = f"{db.schema}." if db.schema else ""
    for statement in OLD_DDL[db.dialect]:
        db.query(statement.format(s=prefix, t=db.qualified(db.task_table), g=db.qualified(db.group_table)))
    before = [row[0] for row in definition(db)["task"]["columns"]]
    assert "children" not in before and "stamps" not in before

    raw = db.app(result_extended=True).backend  # creates at set-up: adds the columns
    after = definition(db)["task"]
    assert [row[0] for row in after["columns"]] == before + ["children", "stamps"]
    assert {_column(after, name)[1] for name in ("children", "stamps")} == {ADDED_BINARY_TYPE[db.dialect]}

    task_id = tid("migrated")
    req = request()
    req.children.append(AsyncResult(tid("child"), app=raw.app))
    raw.store_result(task_id, "ok", states.SUCCESS, request=req)
    celery = db.app(prefix="db+", result_extended=True, database_create_tables_at_setup=False).backend
    for backend in (raw, celery):
        meta = backend.get_task_meta(task_id, cache=False)
        assert meta["result"] == "ok" and meta["on_duty"] == "alice"
        assert [c[0][0] for c in meta["children"]] == [req.children[0].id]


# -- configured names and schemas ------------------------------------------------------------


def test_configured_names_and_schemas_hold_both_backends_rows(ns_db):
    """Custom table names (and a schema on the servers) are honoured by both
    backends on the same data: every row lands in the configured tables, and
    no table of Celery's default names appears."""
    names = {"database_table_names": {"task": "my_results", "group": "my_groups"}}
    db = dataclasses.replace(ns_db, task_table="my_results", group_table="my_groups")
    celery, raw = both(db, **names)
    celery.store_result("from-celery", 1, states.SUCCESS)
    raw.store_result("from-raw", 2, states.SUCCESS)
    celery.save_group("g-celery", GroupResult("g-celery", [AsyncResult("from-celery")]))
    raw.save_group("g-raw", GroupResult("g-raw", [AsyncResult("from-raw")]))

    assert set(task_rows(db)) == {"from-celery", "from-raw"}
    groups = db.query(f"SELECT taskset_id FROM {db.qualified('my_groups')} ORDER BY taskset_id")
    assert groups == [("g-celery",), ("g-raw",)]
    assert raw.get_task_meta("from-celery", cache=False)["result"] == 1
    assert celery.get_task_meta("from-raw", cache=False)["result"] == 2
    assert raw.restore_group("g-celery", cache=False).results[0].id == "from-celery"
    assert celery.restore_group("g-raw", cache=False).results[0].id == "from-raw"

    if db.dialect == "sqlite":
        tables = db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    else:
        tables = db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_type = 'BASE TABLE'", (db.schema,))
    # And rawbackend's chord table, by its default name (none configured), next to the groups.
    assert sorted(t for (t,) in tables) == ["my_groups", "my_results", "rawbackend_chordmeta"]


# -- ids from the same sequence ---------------------------------------------------------------


@pytest.mark.parametrize("db", ["postgresql", "mysql"], indirect=True)
def test_ids_come_from_the_same_sequence(ns_db):
    """Where Celery draws row ids from ``task_id_sequence``/``taskset_id_sequence``
    (PostgreSQL; MariaDB 10.3+), rawbackend draws its ids from the same
    sequences: stores interleaved from both get consecutive ids, none collides,
    and both keep working."""
    db = ns_db
    celery, raw = both(db)
    order = []
    for round_ in range(4):
        for backend in (celery, raw, raw, celery):
            task_id = tid(f"r{round_}")
            backend.store_result(task_id, round_, states.SUCCESS)
            order.append(task_id)
    rows = task_rows(db)
    ids = [rows[task_id][0] for task_id in order]
    assert ids == list(range(ids[0], ids[0] + len(ids)))

    group_ids = []
    for backend in (raw, celery, raw, celery):
        group = GroupResult(tid("g"), [AsyncResult(order[0])])
        backend.save_group(group.id, group)
        group_ids.append(group.id)
    found = dict(db.query(f"SELECT taskset_id, id FROM {db.qualified(db.group_table)}"))
    numbers = [found[g] for g in group_ids]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))

    if db.dialect == "postgresql":
        (last,), = db.query(f"SELECT last_value FROM {db.qualified('task_id_sequence')}")
        assert last == max(ids)
    # Both still store new rows after each other's inserts.
    for backend in (celery, raw):
        task_id = tid("after")
        backend.store_result(task_id, "after", states.SUCCESS)
        assert celery.get_task_meta(task_id, cache=False)["result"] == "after"
        assert raw.get_task_meta(task_id, cache=False)["result"] == "after"


@pytest.mark.parametrize(
    "version, variant",
    [
        ("5.5.5-10.11.19-MariaDB-0+deb12u1", "mariadb"),  # what MariaDB 10.x reports
        ("11.4.2-MariaDB-log", "mariadb"),
        ("10.3.39-MariaDB", "mariadb"),
        ("5.5.5-10.2.44-MariaDB", None),  # no sequences before 10.3: AUTO_INCREMENT, as SQLAlchemy
        ("8.0.36", None),  # MySQL: AUTO_INCREMENT
        ("8.4.0-commercial", None),
    ],
)
def test_mariadb_with_sequences_is_told_apart_from_mysql(version, variant):
    """A mysql:// URL uses MariaDB's statements (ids from sequences) exactly
    when SQLAlchemy's dialect, and so Celery's tables, use sequences."""

    class Connection:
        def get_server_info(self):
            return version

        def cursor(self):
            return Cursor()

    class Cursor:  # a MariaDB server that is no Galera node
        def execute(self, sql):
            assert sql == "SHOW VARIABLES LIKE 'wsrep_on'"

        def fetchone(self):
            return ("wsrep_on", "OFF")

        def close(self):
            pass

    assert MYSQL.variant_of(Connection()) == variant


def test_an_id_drawn_twice_is_refused_and_drawn_again(mysql_db):
    """A sequence behind its table (here restarted by hand; on Galera, around
    a node's crash) hands out an id that is another task's or group's: the
    store does not update that other row (and report success), it is refused
    (1264), retried, and stored under a new id; the other rows are unchanged."""
    backend = mysql_db.backend()
    backend.store_result("first", "one", states.SUCCESS)
    if backend.tables.variant is None:
        pytest.skip("MySQL: ids from AUTO_INCREMENT, no sequence to draw twice")
    backend.save_group("group-1", backend.app.GroupResult("group-1", []))
    table, groups = mysql_db.task_table, mysql_db.group_table
    # INCREMENT BY 0: what Galera takes (a sequence that caches otherwise: 1235).
    [(first_id,)] = mysql_db.query(f"SELECT id FROM `{table}` WHERE task_id = 'first'")
    mysql_db.query(f"ALTER SEQUENCE task_id_sequence RESTART WITH {first_id} INCREMENT BY 0")
    mysql_db.query("ALTER SEQUENCE taskset_id_sequence RESTART WITH 1 INCREMENT BY 0")
    mysql_db.query(f"UPDATE `{groups}` SET id = 1")
    backend.store_result("second", "two", states.SUCCESS)
    backend.save_group("group-2", backend.app.GroupResult("group-2", []))
    assert dict(mysql_db.query(f"SELECT task_id, status FROM `{table}`")) == \
        {"first": states.SUCCESS, "second": states.SUCCESS}
    assert backend.get_task_meta("first", cache=False)["result"] == "one"
    assert backend.get_task_meta("second", cache=False)["result"] == "two"
    assert sorted(row[0] for row in mysql_db.query(f"SELECT taskset_id FROM `{groups}`")) == \
        ["group-1", "group-2"]
    assert backend.restore_group("group-1").id == "group-1"
