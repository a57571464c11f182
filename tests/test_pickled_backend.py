"""A pickled backend lands where its results live, whichever app is current.

With ``result_serializer='pickle'``, a saved group holds AsyncResults, and
each pickles its backend; restoring the group unpickles a backend through
``unpickle_backend``, which builds it with ``current_app``. Before the fix the
copy knew only the URL, so it read and created Celery's default tables
(``celery_taskmeta``) in the user's database.
"""
from __future__ import annotations

import pickle
import uuid

from celery import Celery, states
from celery.result import GroupResult


def tables_in(db) -> set[str]:
    """Every table in the test's database (all schemas on PostgreSQL)."""
    sql = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgresql": "SELECT schemaname || '.' || tablename FROM pg_tables "
                      "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
    }[db.dialect]
    return {row[0] for row in db.query(sql)}


def pickle_app(db, **conf):
    # Custom table names on every dialect (conftest's sqlite uses Celery's defaults).
    suffix = uuid.uuid4().hex[:8]
    db.task_table, db.group_table = f"tasks_{suffix}", f"groups_{suffix}"
    return db.app(
        result_serializer="pickle", accept_content=["pickle", "json"],
        result_extended=True, **conf,
    )


def test_restored_group_reads_the_configured_tables_and_creates_none(db):
    app = pickle_app(db)
    backend = app.backend
    ids = [f"part-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for i, task_id in enumerate(ids):
        backend.store_result(task_id, i * 10, states.SUCCESS)
    group_id = f"group-{uuid.uuid4().hex[:8]}"
    GroupResult(group_id, [app.AsyncResult(t) for t in ids], app=app).save(backend=backend)
    before = tables_in(db)

    # An unrelated app is current where the group is restored, as in a
    # process that imported Celery without this app being the default.
    other = Celery(f"other-{uuid.uuid4().hex[:6]}", set_as_current=True)
    copies = []
    try:
        restored = backend.restore_group(group_id, cache=False)
        copies = [r.backend for r in restored.results]
        assert [r.id for r in restored.results] == ids
        assert copies[0] is not backend  # it really went through unpickle_backend
        assert copies[0].task_cls.table_name == db.task_table
        assert copies[0].taskset_cls.table_name == db.group_table
        assert [r.get(timeout=5) for r in restored.results] == [0, 10, 20]
    finally:
        other.close()
        for copy in copies:
            copy.session_manager.invalidate(copy.url)
    assert tables_in(db) == before


def test_pickled_backend_keeps_where_and_how_it_writes(db):
    backend = pickle_app(db, result_expires=120, database_short_lived_sessions=True).backend
    before = tables_in(db)
    other = Celery(f"other-{uuid.uuid4().hex[:6]}", set_as_current=True)
    clone = pickle.loads(pickle.dumps(backend))
    try:
        assert clone.app is other  # built with the app current here
        assert clone.task_cls.table_name == backend.task_cls.table_name
        assert clone.task_cls.table_schema == backend.task_cls.table_schema
        assert clone.taskset_cls.table_name == backend.taskset_cls.table_name
        assert clone.extended_result is True and other.conf.result_extended is False
        assert clone.serializer == "pickle" and clone.accept == backend.accept
        assert clone.short_lived_sessions is True
        assert clone.expires == backend.expires
        assert tables_in(db) == before  # unpickling alone created nothing

        # Written through the copy, read through the original, extended columns included.
        clone.store_result("cloned", {"x": 1}, states.SUCCESS, request=_Request("cloned"))
        meta = backend.get_task_meta("cloned", cache=False)
        assert meta["result"] == {"x": 1} and meta["name"] == "tasks.cloned"
    finally:
        other.close()
        clone.session_manager.invalidate(clone.url)


class _Request:
    """What store_result reads from a task request for the extended columns."""

    def __init__(self, task_id):
        self.id = task_id
        self.task = "tasks.cloned"
        self.args = (1,)
        self.kwargs = {}
        self.hostname = "worker@test"
        self.retries = 0
        self.delivery_info = {"routing_key": "celery"}
        self.ignore_result = False
        self.group = None
        self.parent_id = None
        self.root_id = None
        self.stamped_headers = None
