"""Large values (SPEC §4, §6): what fits is stored, what does not is said clearly.

rawbackend's own MySQL/MariaDB tables hold large values (LONGBLOB/LONGTEXT).
On tables whose columns are smaller (Celery's: BLOB and TEXT are 64 KB,
name/worker/queue VARCHAR(155)), an extended value that does not fit is left
out with a warning, and the state and result are still stored; a result or
traceback that does not fit, or a row larger than the server takes in one
statement (``max_allowed_packet``), is refused before anything is sent, with
an error that names the task, the column, the size and the limit.
"""
from __future__ import annotations

import logging
import uuid

import pytest
from celery import states
from celery.app.task import Context
from celery.app.trace import build_tracer
from celery.result import AsyncResult, GroupResult
from kombu.exceptions import EncodeError

from rawbackend.errors import ValueTooLarge

KB100 = 100_000
BIG_NAME = "proj.tasks." + "n" * 189  # 200 characters: more than VARCHAR(155)


def tid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def big_request(app, **overrides) -> Context:
    """A request whose args, kwargs, children and stamps are each over 100 KB encoded."""
    fields = dict(
        args=["a" * KB100],
        kwargs={"k": "b" * KB100},
        task="proj.tasks.big",
        hostname="celery@worker-1",
        delivery_info={"routing_key": "q"},
        stamped_headers=["big"],
        stamps={"big": "s" * KB100},
        retries=1,
    )
    fields.update(overrides)
    req = Context(**fields)
    # ~110 bytes each as JSON: over 100 KB of children.
    req.children.extend(AsyncResult(f"child-{n:05d}-" + "c" * 90, app=app) for n in range(1000))
    return req


def celery_tables(db, **conf):
    """``(celery, raw)``: Celery's backend makes its own tables (64 KB BLOBs,
    VARCHAR(155)), then rawbackend runs on them."""
    celery = db.app(prefix="db+", result_extended=True, **conf).backend
    celery.ResultSession().close()  # creates the tables
    raw = db.app(result_extended=True, database_create_tables_at_setup=False, **conf).backend
    return celery, raw


def row_of(db, task_id: str, columns: str = "status, result, args, name"):
    rows = db.query(
        f"SELECT {columns} FROM {db.qualified(db.task_table)} WHERE task_id = '{task_id}'"
    )
    return rows[0] if rows else None


def left_out(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "rawbackend.backend" and "stored as NULL" in r.getMessage()]


# -- rawbackend's own tables ------------------------------------------------------


def test_mysql_tables_made_by_rawbackend_hold_large_values(mysql_db):
    backend = mysql_db.backend(result_extended=True)
    backend.ResultSession().close()
    ddl = mysql_db.query(f"SHOW CREATE TABLE `{mysql_db.task_table}`")[0][1]
    for column in ("result", "children", "args", "kwargs", "stamps"):
        assert f"`{column}` longblob" in ddl.lower()
    assert "`traceback` longtext" in ddl.lower()
    group_ddl = mysql_db.query(f"SHOW CREATE TABLE `{mysql_db.group_table}`")[0][1]
    assert "`result` longblob" in group_ddl.lower()
    # Columns added to older tables are as large (MariaDB runs sql/mysql/'s).
    for column in ("children", "args", "kwargs", "stamps"):
        assert backend.tables.sql[f"add_task_column_{column}"].rstrip(";").endswith("LONGBLOB")
    # No column of ours has a limit a result could reach: only the VARCHARs.
    assert set(backend.tables.task_capacity) == {"task_id", "status", "name", "worker", "queue"}


def test_large_extended_values_round_trip(db, caplog):
    backend = db.backend(result_extended=True)
    task_id = tid("big")
    backend.store_result(task_id, "r" * KB100, states.SUCCESS, request=big_request(backend.app))
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS and meta["result"] == "r" * KB100
    assert meta["args"] == ["a" * KB100]
    assert meta["kwargs"] == {"k": "b" * KB100}
    assert meta["big"] == "s" * KB100
    assert len(meta["children"]) == 1000
    assert not left_out(caplog)


@pytest.mark.parametrize("writer", ["celery", "raw"], ids=["celery-writes", "raw-writes"])
def test_large_args_interoperate_on_rawbackend_tables(db, writer):
    raw = db.backend(result_extended=True)
    raw.ResultSession().close()  # rawbackend's tables
    celery = db.app(prefix="db+", result_extended=True, database_create_tables_at_setup=False).backend
    first, second = (celery, raw) if writer == "celery" else (raw, celery)
    task_id = tid("interop")
    first.store_result(task_id, 1, states.SUCCESS, request=Context(args=["a" * KB100], task="t"))
    meta = second.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS and meta["args"] == ["a" * KB100]


# -- tables Celery made: extended values left out ----------------------------------


def test_too_large_extended_values_are_left_out_with_a_warning(db, caplog):
    """Over 64 KB of args (MySQL's BLOB) and a 200-character name (VARCHAR(155)
    on both servers): the state and result are stored, those fields are NULL,
    and a warning says which, how large, what the column holds and how to widen it."""
    _, raw = celery_tables(db)
    task_id = tid("left-out")
    with caplog.at_level(logging.WARNING, logger="rawbackend.backend"):
        raw.store_result(task_id, {"ok": 1}, states.SUCCESS,
                         request=Context(args=["a" * KB100], task=BIG_NAME, kwargs={"k": 1}))
    meta = raw.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"ok": 1}
    assert meta["kwargs"] == {"k": 1}
    warnings = left_out(caplog)
    table = raw.tables.task_table
    if db.dialect == "sqlite":  # SQLite keeps values of any length
        assert meta["args"] == ["a" * KB100] and meta["name"] == BIG_NAME
        assert warnings == []
        return
    assert meta["name"] is None
    (name_warning,) = [w for w in warnings if ": name is" in w]
    assert task_id in name_warning and "200 characters" in name_warning
    assert f"{table}.name holds (155 characters)" in name_warning
    assert "ALTER TABLE" in name_warning and "VARCHAR(1024)" in name_warning
    if db.dialect == "postgresql":  # BYTEA has room
        assert meta["args"] == ["a" * KB100]
        assert len(warnings) == 1
        return
    assert meta["args"] is None
    (args_warning,) = [w for w in warnings if ": args is" in w]
    size = len(raw.encode(["a" * KB100]))
    assert f"task {task_id}: args is {size} bytes" in args_warning
    assert f"{table}.args holds (65535 bytes)" in args_warning
    assert f"ALTER TABLE {table} MODIFY args LONGBLOB" in args_warning
    assert row_of(db, task_id, "args, name") == (None, None)


def test_the_widening_statement_in_the_warning_works(mysql_db, caplog):
    _, raw = celery_tables(mysql_db)
    with caplog.at_level(logging.WARNING, logger="rawbackend.backend"):
        raw.store_result(tid("w"), 1, states.SUCCESS, request=Context(args=["a" * KB100]))
    (warning,) = left_out(caplog)
    mysql_db.query(warning[warning.index("ALTER TABLE"):])
    raw = mysql_db.backend(result_extended=True)  # a new backend reads the new capacity
    task_id = tid("widened")
    raw.store_result(task_id, 1, states.SUCCESS, request=Context(args=["a" * KB100]))
    assert raw.get_task_meta(task_id, cache=False)["args"] == ["a" * KB100]


# -- tables Celery made: result and traceback refused -------------------------------


def test_too_large_result_is_refused_and_nothing_is_written(mysql_db):
    _, raw = celery_tables(mysql_db)
    new_id, old_id = tid("new"), tid("old")
    raw.store_result(old_id, "small", states.STARTED)
    before = row_of(mysql_db, old_id)
    big = "r" * KB100
    size = len(raw.encode(big))
    for task_id in (new_id, old_id):
        with pytest.raises(ValueTooLarge, match=(
            rf"task {task_id}: result is {size} bytes, more than column "
            rf"`{mysql_db.task_table}`\.result holds \(65535 bytes\); nothing was stored\. "
            rf".*ALTER TABLE `{mysql_db.task_table}` MODIFY result LONGBLOB"
        )):
            raw.store_result(task_id, big, states.SUCCESS)
    assert row_of(mysql_db, new_id) is None
    assert row_of(mysql_db, old_id) == before
    # The backend works afterwards.
    raw.store_result(old_id, "done", states.SUCCESS)
    assert raw.get_task_meta(old_id, cache=False)["result"] == "done"


def test_too_large_traceback_is_refused(mysql_db):
    _, raw = celery_tables(mysql_db)
    task_id = tid("tb")
    # 120,035 characters, 150,035 bytes in UTF-8: TEXT counts bytes.
    traceback = "Traceback (most recent call last):\n" + "  é\n" * 30_000
    with pytest.raises(ValueTooLarge, match=rf"task {task_id}: traceback is 150035 bytes.*\(65535 bytes\)"):
        raw.mark_as_failure(task_id, KeyError("k"), traceback=traceback)
    assert row_of(mysql_db, task_id) is None
    raw.mark_as_failure(task_id, KeyError("k"), traceback="short")
    assert raw.get_task_meta(task_id, cache=False)["traceback"] == "short"


def test_too_large_group_is_refused(mysql_db):
    _, raw = celery_tables(mysql_db)
    group_id = tid("group")
    group = GroupResult(group_id, [AsyncResult(tid("m") + "x" * 80, app=raw.app) for _ in range(1000)])
    problem = rf"group {group_id}: result is \d+ bytes.*MODIFY result LONGBLOB"
    with pytest.raises(ValueTooLarge, match=problem):
        raw.save_group(group_id, group)
    assert raw.restore_group(group_id) is None


def test_the_worker_stores_the_refusal_as_the_tasks_failure(mysql_db):
    """What Celery's worker does when ``mark_as_done`` raises: trace.py catches
    an EncodeError from it and stores a FAILURE with that exception, so the
    user sees the message as the task's failure (and no internal error)."""
    _, raw = celery_tables(mysql_db)
    app = raw.app

    @app.task(name="proj.tasks.huge")
    def huge():
        return "r" * KB100

    task_id = tid("huge")
    tracer = build_tracer(huge.name, huge, app=app, eager=False, propagate=False)
    info = tracer(task_id, (), {}, {"id": task_id, "task": huge.name})
    assert info.info.state == states.FAILURE
    meta = raw.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.FAILURE
    exc = meta["result"]
    assert isinstance(exc, ValueTooLarge) and isinstance(exc, EncodeError)
    assert f"task {task_id}: result is" in str(exc) and "65535 bytes" in str(exc)
    assert "ValueTooLarge" in meta["traceback"]


# -- the server's statement limit ---------------------------------------------------------


def test_a_row_larger_than_max_allowed_packet_is_refused_before_sending(mysql_db):
    """20 MB on MariaDB (max_allowed_packet 16 MB): a clear error, not a
    dropped connection retried into "Lost connection"."""
    raw = mysql_db.backend()
    limit = mysql_db.query("SELECT @@max_allowed_packet")[0][0]
    assert raw.tables.max_statement == limit  # read with the capacities, at set-up
    raw.store_result(tid("warm"), 1, states.SUCCESS)
    engine = raw.session_manager.get_engine(raw.url)
    task_id = tid("packet")
    big = "r" * (limit + 4 * 1024 * 1024)  # 20 MB on MariaDB's default
    with pytest.raises(ValueTooLarge, match=(
        rf"task {task_id}: the row is \d+ bytes as one statement, more than the {limit} bytes "
        r"the server takes \(max_allowed_packet\); nothing was stored"
    )):
        raw.store_result(task_id, big, states.SUCCESS)
    assert row_of(mysql_db, task_id) is None
    # Nothing was sent: the pool was never dropped as after a disconnect.
    assert raw.session_manager.get_engine(raw.url) is engine
    # The server takes a bytes literal up to half its limit (measured): just
    # over is refused by us, just under is stored (the check is exact near it).
    with pytest.raises(ValueTooLarge, match="max_allowed_packet"):
        raw.store_result(task_id, "r" * (limit // 2), states.SUCCESS)
    fits = "r" * (limit // 2 - 1024)
    raw.store_result(task_id, fits, states.SUCCESS)
    assert raw.get_task_meta(task_id, cache=False)["result"] == fits


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_20_mb_result_is_stored_where_there_is_no_statement_limit(request, dialect):
    db = request.getfixturevalue({"postgresql": "pg_db", "sqlite": "sqlite_db"}[dialect])
    raw = db.backend()
    task_id = tid("20mb")
    big = "r" * 20_000_000
    raw.store_result(task_id, big, states.SUCCESS)
    assert raw.tables.max_statement is None
    assert raw.get_task_meta(task_id, cache=False)["result"] == big
