"""The behaviour contract of the backend: each body runs on sqlite, postgresql and mysql.

The ``db`` fixture (tests/conftest.py) gives each test tables of its own; ``db.query``
looks behind the backend with a bare driver connection.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery, _state, states
from celery.app.task import Context
from celery.exceptions import ImproperlyConfigured, TaskRevokedError
from celery.result import AsyncResult, GroupResult, result_from_tuple
from kombu.exceptions import DecodeError, EncodeError

from rawbackend import DatabaseBackend
from rawbackend.dialects import Batching
from rawbackend.errors import ConnectFailed

# -- helpers ------------------------------------------------------------------


def tid() -> str:
    return str(uuid.uuid4())


def ph(db) -> str:
    """The bare driver's placeholder (db.query uses the driver directly)."""
    return "?" if db.dialect == "sqlite" else "%s"


def db_datetime(db, when: datetime):
    """``when`` (naive UTC) as a bare driver writes it into date_done."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f") if db.dialect == "sqlite" else when


def rows(db, table: str, column: str = "task_id") -> list:
    return sorted(r[0] for r in db.query(f"SELECT {column} FROM {db.qualified(table)}"))


def table_exists(db, table: str) -> bool:
    try:
        db.query(f"SELECT 1 FROM {db.qualified(table)} WHERE 1 = 0")
    except Exception:  # each driver has its own "no such table"
        return False
    return True


def make_app(db, url: str, **conf) -> Celery:
    """A Celery app on ``url`` with this test's tables (its pools dropped after)."""
    app = Celery(f"test-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend=url, **db.conf(**conf))
    db.apps.append(app)
    return app


@pytest.fixture
def extra_tables(db):
    """Names of tables a test makes beyond the fixture's own; dropped after
    (PostgreSQL drops them with the test's schema, SQLite with its file)."""
    names: list[str] = []
    yield names
    for app in db.apps:
        backend = getattr(app, "_backend", None)
        if backend is not None:
            backend.session_manager.invalidate(backend.url)
    if db.dialect == "mysql" and names:
        db.query("DROP TABLE IF EXISTS " + ", ".join(f"`{n}`" for n in names))


class Boom(Exception):
    """An exception of the test's own, to come back as an instance."""


# -- states and results ---------------------------------------------------------


def test_missing_task_is_pending(db):
    """A task never stored is PENDING, with no result and no traceback."""
    backend = db.backend()
    meta = backend.get_task_meta("never-stored", cache=False)
    assert meta["status"] == states.PENDING
    assert meta["result"] is None
    assert meta["traceback"] is None
    assert backend.get_state("never-stored") == states.PENDING


@pytest.mark.parametrize(
    "value",
    [42, -7.25, "héllo ✓ 😀", True, None, [1, "two", None, [3.5]],
     {"answer": 42, "nested": {"list": [1, 2], "none": None, "flag": False}}],
    ids=["int", "float", "unicode", "bool", "none", "list", "dict"],
)
def test_store_and_read_success(db, value):
    """SUCCESS with any JSON type reads back equal, with a date_done."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_done(task_id, value)
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS
    assert meta["result"] == value
    assert meta["traceback"] is None
    assert isinstance(meta["date_done"], datetime)
    assert rows(db, db.task_table) == [task_id]


@pytest.mark.parametrize("exc", [KeyError("foo"), Boom("custom", 2)], ids=["builtin", "custom"])
def test_store_and_read_failure(db, exc):
    """FAILURE comes back as an instance of the exception, with its traceback."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_failure(task_id, exc, traceback="Traceback (most recent call last): ...")
    assert backend.get_state(task_id) == states.FAILURE
    result = backend.get_task_meta(task_id, cache=False)["result"]
    assert type(result) is type(exc)
    assert result.args == exc.args
    assert backend.get_traceback(task_id) == "Traceback (most recent call last): ..."


def test_store_and_read_retry(db):
    """RETRY comes back as an exception instance with its traceback."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_retry(task_id, ValueError("again"), traceback="tb-retry")
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.RETRY
    assert isinstance(meta["result"], ValueError) and meta["result"].args == ("again",)
    assert meta["traceback"] == "tb-retry"


def test_store_and_read_revoked(db):
    """REVOKED reads back as a TaskRevokedError naming the reason."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_revoked(task_id, reason="terminated by test")
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.REVOKED
    assert isinstance(meta["result"], TaskRevokedError)
    assert "terminated by test" in str(meta["result"])


def test_store_and_read_started_with_meta(db):
    """STARTED keeps its meta dict as the result, and no date_done."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_started(task_id, pid=1234, hostname="w1@host")
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.STARTED
    assert meta["result"] == {"pid": 1234, "hostname": "w1@host"}
    assert meta["date_done"] is None


@pytest.mark.parametrize(
    "state, result",
    [(states.STARTED, {"pid": 2}), (states.FAILURE, KeyError("late")),
     (states.RETRY, KeyError("late")), (states.SUCCESS, 43)],
    ids=["started", "failure", "retry", "success"],
)
def test_write_after_success_is_ignored(db, state, result):
    """Once SUCCESS is stored, a later write for the id changes nothing in the row."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_done(task_id, 42)
    before = db.query(f"SELECT status, result, date_done, traceback FROM {db.qualified(db.task_table)}")
    backend.store_result(task_id, result, state, traceback="late traceback")
    meta = backend.get_task_meta(task_id, cache=False)
    assert (meta["status"], meta["result"], meta["traceback"]) == (states.SUCCESS, 42, None)
    after = db.query(f"SELECT status, result, date_done, traceback FROM {db.qualified(db.task_table)}")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]


def test_states_before_success_are_overwritten(db):
    """STARTED, RETRY and FAILURE are replaced by later states, ending in SUCCESS, in one row."""
    backend = db.backend()
    task_id = tid()
    backend.mark_as_started(task_id, pid=1)
    backend.mark_as_retry(task_id, KeyError("r"), traceback="tb1")
    assert backend.get_task_meta(task_id, cache=False)["status"] == states.RETRY
    backend.mark_as_failure(task_id, KeyError("f"), traceback="tb2")
    assert backend.get_task_meta(task_id, cache=False)["traceback"] == "tb2"
    backend.mark_as_done(task_id, 42)
    meta = backend.get_task_meta(task_id, cache=False)
    assert (meta["status"], meta["result"], meta["traceback"]) == (states.SUCCESS, 42, None)
    assert rows(db, db.task_table) == [task_id]


def test_children_stored_and_read(db):
    """A request's children (results and groups) are stored and come back."""
    app = db.app()
    backend = app.backend
    task_id, child_id, group_id, member_id = tid(), tid(), tid(), tid()
    request = Context()
    request.children.append(app.AsyncResult(child_id))
    request.children.append(app.GroupResult(group_id, [app.AsyncResult(member_id)]))
    backend.store_result(task_id, 42, states.SUCCESS, request=request)

    meta = backend.get_task_meta(task_id, cache=False)
    children = [result_from_tuple(c, app) for c in meta["children"]]
    assert children[0].id == child_id
    assert isinstance(children[1], GroupResult)
    assert children[1].id == group_id
    assert [r.id for r in children[1].results] == [member_id]
    assert [c.id for c in AsyncResult(task_id, backend=backend, app=app).children] == [child_id, group_id]


def test_no_children_reads_none(db):
    """Without children, the children column is NULL and reads as None."""
    backend = db.backend()
    task_id = tid()
    backend.store_result(task_id, 1, states.SUCCESS, request=Context())
    assert backend.get_task_meta(task_id, cache=False)["children"] is None
    assert db.query(f"SELECT children FROM {db.qualified(db.task_table)}") == [(None,)]


# -- extended results -------------------------------------------------------------


def extended_request(**extra) -> Context:
    return Context(
        args=[1, "two"], kwargs={"k": "v"}, task="proj.tasks.add", retries=2,
        hostname="celery@worker_1", delivery_info={"routing_key": "queue_a"}, **extra,
    )


def test_extended_result_fields(db):
    """result_extended stores name, args, kwargs, worker, retries and queue."""
    backend = db.backend(result_extended=True)
    task_id = tid()
    backend.store_result(task_id, {"fizz": "buzz"}, states.SUCCESS, request=extended_request())
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["result"] == {"fizz": "buzz"}
    assert meta["name"] == "proj.tasks.add"
    assert meta["args"] == [1, "two"]
    assert meta["kwargs"] == {"k": "v"}
    assert meta["worker"] == "celery@worker_1"
    assert meta["retries"] == 2
    assert meta["queue"] == "queue_a"
    assert db.query(f"SELECT name, worker, retries, queue FROM {db.qualified(db.task_table)}") == [
        ("proj.tasks.add", "celery@worker_1", 2, "queue_a")
    ]


def test_extended_stamps_round_trip(db):
    """Stamps come back flattened into the meta, with stamped_headers, never as 'stamps'."""
    backend = db.backend(result_extended=True)
    task_id = tid()
    request = extended_request(stamped_headers=["stamp1", "stamp2"],
                               stamps={"stamp1": ["val1"], "stamp2": "val2"})
    backend.store_result(task_id, {"fizz": "buzz"}, states.SUCCESS, request=request)
    meta = backend.get_task_meta(task_id, cache=False)
    assert meta["stamped_headers"] == ["stamp1", "stamp2"]
    assert meta["stamp1"] == ["val1"]
    assert meta["stamp2"] == "val2"
    assert "stamps" not in meta


def test_extended_stamps_kept_when_later_store_has_none(db):
    """Stamps stored with STARTED survive a SUCCESS stored without stamps."""
    backend = db.backend(result_extended=True)
    task_id = tid()
    stamped = extended_request(stamped_headers=["run"], stamps={"run": "r-1"})
    backend.store_result(task_id, {"pid": 1}, states.STARTED, request=stamped)
    backend.store_result(task_id, 42, states.SUCCESS, request=extended_request())
    meta = backend.get_task_meta(task_id, cache=False)
    assert (meta["status"], meta["result"]) == (states.SUCCESS, 42)
    assert meta["stamped_headers"] == ["run"]
    assert meta["run"] == "r-1"


def test_extended_fields_kept_after_success(db):
    """A second run after SUCCESS (another worker) changes none of the extended fields."""
    backend = db.backend(result_extended=True)
    task_id = tid()
    request = extended_request()
    backend.store_result(task_id, {"fizz": "buzz"}, states.SUCCESS, request=request)
    meta = backend.get_task_meta(task_id, cache=False)
    request.update(hostname="celery@worker_2", retries=3, stamped_headers=["s"], stamps={"s": 1})
    backend.store_result(task_id, {"pid": 2}, states.STARTED, request=request)
    assert backend.get_task_meta(task_id, cache=False) == meta


# -- existence, forget, groups ---------------------------------------------------------


def test_task_result_exists(db):
    """task_result_exists is False before a store, True after, False after forget."""
    backend = db.backend()
    task_id = tid()
    assert backend.task_result_exists(task_id) is False
    backend.mark_as_started(task_id)
    assert backend.task_result_exists(task_id) is True
    backend.forget(task_id)
    assert backend.task_result_exists(task_id) is False


def test_forget(db):
    """forget deletes the task's row only, and the task reads as PENDING again."""
    backend = db.backend()
    gone, kept = tid(), tid()
    backend.mark_as_done(gone, 1)
    backend.mark_as_done(kept, 2)
    backend.get_task_meta(gone)  # into the cache: forget must drop it there too
    backend.forget(gone)
    assert backend.get_task_meta(gone)["status"] == states.PENDING
    assert rows(db, db.task_table) == [kept]
    assert backend.get_task_meta(kept, cache=False)["result"] == 2


def test_save_restore_delete_group(db):
    """A GroupResult round-trips: restore_group gives a GroupResult with the same ids."""
    app = db.app()
    backend = app.backend
    group_id = tid()
    members = [app.AsyncResult(tid()), app.AsyncResult(tid())]
    group = app.GroupResult(group_id, members)
    assert backend.save_group(group_id, group) is group
    restored = backend.restore_group(group_id, cache=False)
    assert isinstance(restored, GroupResult)
    assert restored.id == group_id
    assert [r.id for r in restored.results] == [r.id for r in members]
    assert restored == group
    assert rows(db, db.group_table, "taskset_id") == [group_id]

    backend.delete_group(group_id)
    assert backend.restore_group(group_id, cache=False) is None
    assert rows(db, db.group_table, "taskset_id") == []
    assert backend.restore_group("no-such-group", cache=False) is None


def test_save_group_twice_replaces_it(db):
    """Saving a group id again replaces its members, in one row."""
    app = db.app()
    backend = app.backend
    group_id = tid()
    backend.save_group(group_id, app.GroupResult(group_id, [app.AsyncResult(tid())]))
    second = [app.AsyncResult(tid()), app.AsyncResult(tid())]
    backend.save_group(group_id, app.GroupResult(group_id, second))
    restored = backend.restore_group(group_id, cache=False)
    assert [r.id for r in restored.results] == [r.id for r in second]
    assert rows(db, db.group_table, "taskset_id") == [group_id]


# -- cleanup ------------------------------------------------------------------------------


def backdate(db, table: str, key: str, ids, days: float) -> None:
    when = db_datetime(db, datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=days))
    for one in ids:
        db.query(
            f"UPDATE {db.qualified(table)} SET date_done = {ph(db)} WHERE {key} = {ph(db)}",
            (when, one),
        )


def test_cleanup_deletes_only_expired_rows(db):
    """cleanup() with result_expires deletes the task and group rows done before it, and no others."""
    app = db.app(result_expires=timedelta(days=1))
    backend = app.backend
    old_tasks, new_tasks = [tid() for _ in range(3)], [tid() for _ in range(2)]
    old_groups, new_groups = [tid() for _ in range(2)], [tid()]
    for task_id in old_tasks + new_tasks:
        backend.mark_as_done(task_id, 1)
    started = tid()
    backend.mark_as_started(started)  # no date_done: never expires
    for group_id in old_groups + new_groups:
        backend.save_group(group_id, app.GroupResult(group_id, [app.AsyncResult(tid())]))
    backdate(db, db.task_table, "task_id", old_tasks, days=3)
    backdate(db, db.group_table, "taskset_id", old_groups, days=3)

    backend.cleanup()

    assert rows(db, db.task_table) == sorted(new_tasks + [started])
    assert rows(db, db.group_table, "taskset_id") == sorted(new_groups)


def test_cleanup_runs_more_than_one_batch(db, monkeypatch):
    """Expired rows beyond one DELETE batch are all deleted."""
    app = db.app(result_expires=timedelta(days=1))
    backend = app.backend
    monkeypatch.setattr(backend, "dialect", dataclasses.replace(backend.dialect, cleanup=Batching(rows=3)))
    old_tasks, kept = [tid() for _ in range(8)], tid()
    old_groups = [tid() for _ in range(7)]
    for task_id in old_tasks + [kept]:
        backend.mark_as_done(task_id, 1)
    for group_id in old_groups:
        backend.save_group(group_id, app.GroupResult(group_id, []))
    backdate(db, db.task_table, "task_id", old_tasks, days=3)
    backdate(db, db.group_table, "taskset_id", old_groups, days=3)

    backend.cleanup()

    assert rows(db, db.task_table) == [kept]
    assert rows(db, db.group_table, "taskset_id") == []


def test_cleanup_without_expiry_deletes_nothing(db):
    """result_expires=None: results never expire, cleanup() leaves every row."""
    backend = db.backend(result_expires=None)
    task_id = tid()
    backend.mark_as_done(task_id, 1)
    backdate(db, db.task_table, "task_id", [task_id], days=3650)
    backend.cleanup()
    assert rows(db, db.task_table) == [task_id]


# -- tables ------------------------------------------------------------------------------


def test_table_names_honoured(db, extra_tables):
    """database_table_names puts the rows in the named tables."""
    task_table, group_table = f"{db.task_table}_named", f"{db.group_table}_named"
    extra_tables += [task_table, group_table]
    app = db.app(database_table_names={"task": task_table, "group": group_table})
    task_id, group_id = tid(), tid()
    app.backend.mark_as_done(task_id, 1)
    app.backend.save_group(group_id, app.GroupResult(group_id, []))
    assert rows(db, task_table) == [task_id]
    assert rows(db, group_table, "taskset_id") == [group_id]
    assert not table_exists(db, db.task_table)


def test_two_apps_with_different_tables(db, extra_tables):
    """Two apps in one process on different tables don't disturb each other."""
    names_a = {"task": f"{db.task_table}_a", "group": f"{db.group_table}_a"}
    names_b = {"task": f"{db.task_table}_b", "group": f"{db.group_table}_b"}
    extra_tables += [*names_a.values(), *names_b.values()]
    backend_a = db.app(database_table_names=names_a).backend
    backend_b = db.app(database_table_names=names_b).backend
    task_id = tid()
    backend_a.mark_as_done(task_id, "from a")
    backend_b.mark_as_done(task_id, "from b")
    only_a = tid()
    backend_a.mark_as_done(only_a, "a only")

    assert backend_a.get_task_meta(task_id, cache=False)["result"] == "from a"
    assert backend_b.get_task_meta(task_id, cache=False)["result"] == "from b"
    assert backend_b.get_task_meta(only_a, cache=False)["status"] == states.PENDING
    assert rows(db, names_a["task"]) == sorted([task_id, only_a])
    assert rows(db, names_b["task"]) == [task_id]
    assert backend_a.task_cls.table_name == names_a["task"]
    assert backend_b.task_cls.table_name == names_b["task"]


def test_tables_created_on_first_use(db):
    """database_create_tables_at_setup=False: no tables at set-up, made by the first operation."""
    backend = db.backend(database_create_tables_at_setup=False)
    assert not table_exists(db, db.task_table)
    task_id = tid()
    backend.mark_as_done(task_id, 7)
    assert backend.get_task_meta(task_id, cache=False)["result"] == 7
    assert table_exists(db, db.task_table) and table_exists(db, db.group_table)


def sqlalchemy_url(db) -> str:
    return db.url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "mysql://", "mysql+pymysql://", 1
    )


def test_created_tables_have_celerys_columns(db):
    """The tables rawbackend makes have the columns of Celery's models, task_id and taskset_id unique."""
    import sqlalchemy  # in the test extra
    from celery.backends.database.models import TaskExtended as CeleryTaskExtended
    from celery.backends.database.models import TaskSet as CeleryTaskSet

    db.backend()  # creates the tables at set-up
    engine = sqlalchemy.create_engine(sqlalchemy_url(db))
    try:
        inspector = sqlalchemy.inspect(engine)
        for table, model, key in (
            (db.task_table, CeleryTaskExtended, "task_id"),
            (db.group_table, CeleryTaskSet, "taskset_id"),
        ):
            columns = {c["name"] for c in inspector.get_columns(table, schema=db.schema)}
            assert columns == {c.name for c in model.__table__.columns}
            indexes = inspector.get_indexes(table, schema=db.schema)
            unique = [u["column_names"] for u in inspector.get_unique_constraints(table, schema=db.schema)]
            unique += [i["column_names"] for i in indexes if i["unique"]]
            assert [key] in unique
            indexed = [i["column_names"] for i in indexes]
            assert ["date_done"] in indexed
    finally:
        engine.dispose()


# -- bad input -----------------------------------------------------------------------------


def test_task_id_too_long(db):
    """A task id longer than the column: ValueError naming it, no row, and the backend still works."""
    backend = db.backend()
    with pytest.raises(ValueError, match=r"task id .* 1 to 155 characters"):
        backend.store_result("x" * 156, 1, states.SUCCESS)
    assert rows(db, db.task_table) == []
    ok = "y" * 155  # the longest that fits
    backend.mark_as_done(ok, 1)
    assert backend.get_task_meta(ok, cache=False)["result"] == 1


@pytest.mark.parametrize("bad_id", ["\udcff-lone-surrogate", "ok\ud800"], ids=["low", "high"])
def test_task_id_not_utf8(db, bad_id):
    """A task id with a lone surrogate (not encodable as UTF-8): a clear error,
    nothing written, still working."""
    backend = db.backend()
    with pytest.raises(ValueError, match=r"task id .* lone surrogate"):
        backend.store_result(bad_id, 1, states.SUCCESS)
    assert rows(db, db.task_table) == []
    task_id = tid()
    backend.mark_as_done(task_id, "fine")
    assert backend.get_task_meta(task_id, cache=False)["result"] == "fine"


def test_task_id_bytes_rejected(db):
    """A bytes task id (not even a string) is refused before anything is written."""
    backend = db.backend()
    with pytest.raises(ValueError, match="is not a string"):
        backend.store_result(b"\xff\xfe", 1, states.SUCCESS)
    assert rows(db, db.task_table) == []


@pytest.mark.parametrize("where", ["task", "group"])
def test_invalid_table_name(db, where):
    """A table name that is not an identifier: ImproperlyConfigured naming it."""
    names = {"task": db.task_table, "group": db.group_table, where: "x; drop"}
    with pytest.raises(ImproperlyConfigured, match=r"'x; drop'.*not a valid identifier"):
        db.backend(database_table_names=names)


def test_invalid_schema_name(db):
    """A schema name that is not an identifier: ImproperlyConfigured naming it."""
    with pytest.raises(ImproperlyConfigured, match=r"'bad-schema\"'"):
        db.backend(database_table_schemas={"task": 'bad-schema"'})


def test_unencodable_result(db):
    """A result the serializer can't encode: an error, nothing written, still working."""
    backend = db.backend()
    task_id = tid()
    with pytest.raises(EncodeError, match="not JSON serializable"):
        backend.store_result(task_id, object(), states.SUCCESS)
    assert rows(db, db.task_table) == []
    assert backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING
    backend.mark_as_done(task_id, "now fine")
    assert backend.get_task_meta(task_id, cache=False)["result"] == "now fine"


class MakeDir:
    """Unpickling this creates a directory: proof that a blob was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def write_result_column(db, task_id: str, blob: bytes) -> None:
    db.query(
        f"UPDATE {db.qualified(db.task_table)} SET result = {ph(db)} WHERE task_id = {ph(db)}",
        (blob, task_id),
    )


def test_pickle_never_read_unless_accepted(db, tmp_path):
    """A pickle in the result column is refused by an app accepting only json,
    and read by one accepting pickle (Celery's pre-#3025 rows)."""
    json_backend = db.backend()
    pickle_backend = db.backend(result_accept_content=["json", "pickle"])
    task_id, legacy_id = tid(), tid()
    json_backend.mark_as_done(task_id, "placeholder")
    json_backend.mark_as_done(legacy_id, "placeholder")
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(MakeDir(str(marker)))
    assert evil[:1] == b"\x80"
    write_result_column(db, task_id, evil)
    write_result_column(db, legacy_id, pickle.dumps({"legacy": "pickle-data"}))

    with pytest.raises(DecodeError, match="can't decode byte 0x80"):
        json_backend.get_task_meta(task_id, cache=False)
    assert not marker.exists(), "an app accepting only json unpickled a result"
    with pytest.raises(DecodeError, match="can't decode byte 0x80"):
        json_backend.get_task_meta(legacy_id, cache=False)

    assert pickle_backend.get_task_meta(legacy_id, cache=False)["result"] == {"legacy": "pickle-data"}
    pickle_backend.get_task_meta(task_id, cache=False)
    assert marker.is_dir()  # the same blob is unpickled when pickle is accepted


def test_password_never_shown(pg_db):
    """as_uri(), repr() and the errors of a bad URL never show the password."""
    app = Celery("pw", set_as_current=False)
    app.conf.update(
        result_backend="rawdb+postgresql://postgres:s3cret@127.0.0.1:5432/test",
        database_create_tables_at_setup=False,
    )
    backend = app.backend
    assert backend.as_uri() == "postgresql://postgres:**@127.0.0.1:5432/test"
    assert "s3cret" not in repr(backend)
    engine = backend.session_manager.get_engine(backend.url, **backend.engine_options)
    assert "s3cret" not in repr(engine)
    backend.session_manager.invalidate(backend.url)

    for bad in ("rawdb+postgresql://postgres:s3cret@127.0.0.1:notaport/test",
                "rawdb+oracle://scott:s3cret@127.0.0.1/orcl"):
        with pytest.raises(ImproperlyConfigured, match="Accepted forms") as caught:
            DatabaseBackend(url=bad, app=app)
        assert "s3cret" not in str(caught.value)
        assert "**" in str(caught.value)


def test_password_not_in_connection_errors_or_logs(pg_db, caplog):
    """A server that refuses the connection and never answered: the store fails
    at once (no reconnect wait), naming host and port, never the password."""
    app = Celery("pw", set_as_current=False)
    app.conf.update(
        result_backend="rawdb+postgresql://postgres:s3cret@127.0.0.1:1/test",
        database_create_tables_at_setup=False,
    )
    backend = app.backend
    try:
        with caplog.at_level("DEBUG"), pytest.raises(ConnectFailed, match="127.0.0.1:1") as caught:
            backend.store_result(tid(), 1, states.SUCCESS)
        texts = [str(caught.value), repr(caught.value), str(caught.value.__cause__), caplog.text]
        assert "Connection refused" in str(caught.value)
        assert "Retrying" not in caplog.text
        assert not any("s3cret" in text for text in texts)
    finally:
        backend.session_manager.invalidate(backend.url)


def test_pickle_round_trip_gives_working_backend(db):
    """A pickled backend unpickles (in the app's process) to one on the same tables."""
    app = db.app()
    backend = app.backend
    task_id = tid()
    backend.mark_as_done(task_id, "before pickling")
    previous = _state.get_current_app()
    app.set_current()  # Celery's unpickle_backend builds the backend on the current app
    try:
        clone = pickle.loads(pickle.dumps(backend))
    finally:
        previous.set_current()
    assert type(clone) is type(backend) and clone is not backend
    assert clone.url == backend.url
    assert clone.engine_options == backend.engine_options
    assert clone.expires == backend.expires
    assert clone.task_cls.table_name == backend.task_cls.table_name
    assert clone.get_task_meta(task_id, cache=False)["result"] == "before pickling"
    other = tid()
    clone.mark_as_done(other, "after")
    assert backend.get_task_meta(other, cache=False)["result"] == "after"
    clone.session_manager.invalidate(clone.url)


SUBPROCESS_SCRIPT = """
import json, sys
from celery import Celery
args = json.loads(sys.argv[1])
app = Celery("sub", set_as_current=False)
app.conf.update(result_backend=args["url"], **args["conf"])
backend = app.backend
backend.store_result("sub-task", {"x": 1}, "SUCCESS")
assert backend.get_task_meta("sub-task", cache=False)["result"] == {"x": 1}
backend.session_manager.invalidate(backend.url)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_no_sqlalchemy_at_run_time(db):
    """Storing and reading a result imports no SQLAlchemy, nor another dialect's driver."""
    args = json.dumps({"url": "rawdb+" + db.url, "conf": db.conf()})
    done = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "sqlalchemy" not in modules
    other_drivers = {"sqlite": {"psycopg", "pymysql"}, "postgresql": {"pymysql"}, "mysql": {"psycopg"}}
    assert not modules & other_drivers[db.dialect]


# -- URL forms ------------------------------------------------------------------------------


def store_and_read(backend) -> None:
    task_id = tid()
    backend.mark_as_done(task_id, {"via": backend.url})
    assert backend.get_task_meta(task_id, cache=False)["result"] == {"via": backend.url}


def sqlite_rows(path) -> list:
    import sqlite3

    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT task_id FROM celery_taskmeta").fetchall()
    finally:
        conn.close()


def sqlite_app(url: str, **conf) -> Celery:
    app = Celery(f"test-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend=url, result_serializer="json", accept_content=["json"], **conf)
    return app


def test_url_sqlite_relative(tmp_path, monkeypatch):
    """rawdb+sqlite:///relative.db is relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    backend = sqlite_app("rawdb+sqlite:///relative.db").backend
    store_and_read(backend)
    assert len(sqlite_rows(tmp_path / "relative.db")) == 1
    backend.session_manager.invalidate(backend.url)


def test_url_sqlite_absolute(tmp_path):
    """rawdb+sqlite:////abs/path.db is an absolute path."""
    path = tmp_path / "sub" / "abs.db"
    path.parent.mkdir()
    url = "rawdb+sqlite:///" + str(path)
    assert url.startswith("rawdb+sqlite:////")
    backend = sqlite_app(url).backend
    store_and_read(backend)
    assert len(sqlite_rows(path)) == 1
    backend.session_manager.invalidate(backend.url)


def test_url_sqlite_memory(tmp_path, monkeypatch):
    """rawdb+sqlite:// is an in-memory database that lasts while the process uses it."""
    monkeypatch.chdir(tmp_path)
    app = sqlite_app("rawdb+sqlite://")
    backend = app.backend
    store_and_read(backend)
    group_id, member = tid(), tid()
    backend.save_group(group_id, app.GroupResult(group_id, [app.AsyncResult(member)]))
    assert [r.id for r in backend.restore_group(group_id, cache=False).results] == [member]
    assert list(tmp_path.iterdir()) == []  # no file was made
    backend.session_manager.invalidate(backend.url)


@pytest.mark.parametrize("result_backend", ["rawdb", "rawdb://"])
@pytest.mark.parametrize("prefix", ["", "rawdb+"], ids=["plain", "prefixed"])
def test_url_from_database_url(tmp_path, result_backend, prefix):
    """A backend URL without a location uses database_url (with or without rawdb+)."""
    path = tmp_path / "from_conf.db"
    app = sqlite_app(result_backend, database_url=f"{prefix}sqlite:///{path}")
    backend = app.backend
    assert isinstance(backend, DatabaseBackend)
    store_and_read(backend)
    assert len(sqlite_rows(path)) == 1
    backend.session_manager.invalidate(backend.url)


def test_direct_backend_uses_database_url(tmp_path):
    """DatabaseBackend(app=app) takes database_url, as Celery's does."""
    path = tmp_path / "direct.db"
    app = sqlite_app("rawdb", database_url=f"rawdb+sqlite:///{path}")
    backend = DatabaseBackend(app=app)
    assert backend.url == f"sqlite:///{path}"
    store_and_read(backend)
    assert len(sqlite_rows(path)) == 1
    backend.session_manager.invalidate(backend.url)


def test_missing_url_is_improperly_configured():
    """No URL and no database_url: ImproperlyConfigured."""
    app = sqlite_app("rawdb")
    with pytest.raises(ImproperlyConfigured, match="Missing connection string"):
        DatabaseBackend(app=app)


@pytest.mark.parametrize(
    "dialect, scheme",
    [("postgresql", "postgres"), ("postgresql", "postgresql+psycopg"),
     ("postgresql", "postgresql+psycopg2"), ("mysql", "mysql+pymysql"), ("mysql", "mariadb"),
     ("mysql", "mariadb+pymysql"), ("mysql", "mysql+mysqldb")],
)
def test_url_server_schemes(request, dialect, scheme):
    """SQLAlchemy-style schemes map to our drivers: migrating is changing db+ to rawdb+."""
    db = request.getfixturevalue("pg_db" if dialect == "postgresql" else "mysql_db")
    url = "rawdb+" + scheme + db.url[db.url.index("://"):]
    backend = make_app(db, url).backend
    assert backend.dialect.name == dialect
    store_and_read(backend)
    assert len(rows(db, db.task_table)) == 1


def recording_callback(seen: list):
    def callback(pool):
        pool.before_connect(lambda params: seen.append(dict(params)))

    return callback


def test_url_query_params_postgresql(pg_db):
    """Query parameters go to psycopg's connect."""
    seen: list = []
    url = "rawdb+" + pg_db.url + "?connect_timeout=5&application_name=rawq_test"
    backend = make_app(pg_db, url, database_engine_callback=recording_callback(seen)).backend
    store_and_read(backend)
    assert seen and all(str(p["connect_timeout"]) == "5" for p in seen)
    with backend.ResultSession() as session:
        row = session.fetch_one("SELECT current_setting('application_name') AS name")
    assert row["name"] == "rawq_test"


def test_url_query_params_mysql(mysql_db):
    """Query parameters go to PyMySQL's connect, typed as it needs them."""
    seen: list = []
    url = "rawdb+" + mysql_db.url + "?connect_timeout=5&charset=utf8mb4"
    backend = make_app(mysql_db, url, database_engine_callback=recording_callback(seen)).backend
    store_and_read(backend)
    assert seen and all(p["connect_timeout"] == 5 and p["charset"] == "utf8mb4" for p in seen)
    with backend.ResultSession() as session:
        row = session.fetch_one("SELECT @@character_set_client AS cs")
    assert row["cs"] == "utf8mb4"


@pytest.mark.parametrize(
    "url, problem",
    [("rawdb+oracle://scott:tiger@h/orcl", r"unknown scheme 'oracle'"),
     ("rawdb+postgresql://h:notaport/db", r"malformed URL .*notaport"),
     ("rawdb+sqlite://host/x.db", r"sqlite URLs have no host"),
     ("rawdb+mysql://h/db/extra", r"database name may not contain '/'"),
     ("rawdb+mysql://h/db?connect_timeout=soon", r"query parameter has a bad value"),
     ("rawdb+postgresql://h1:5432,,h2/db", r"a host of the host list is empty"),
     ("rawdb+postgresql://h1:5432,h2:70000/db", r"port '70000' of host 'h2' is not a port"),
     ("rawdb+postgresql://h1/db?host=h2:5432", r"hosts given both before the database name")],
    ids=["scheme", "port", "sqlite-host", "path", "param", "empty-host", "host-port",
         "hosts-twice"],
)
def test_bad_urls(url, problem):
    """A bad URL: ImproperlyConfigured naming the problem and listing the accepted forms."""
    app = sqlite_app(url)
    with pytest.raises(ImproperlyConfigured, match=problem) as caught:
        _ = app.backend  # the backend is made, and the URL parsed, on first use
    message = str(caught.value)
    assert "Accepted forms" in message
    for form in ("rawdb+postgresql://", "rawdb+mysql://", "rawdb+sqlite:///"):
        assert form in message
    with pytest.raises(ImproperlyConfigured, match=problem):
        DatabaseBackend(url=url, app=app)
