"""Celery 5.7.0's ``t/unit/backends/test_database.py``, ported to rawbackend, on SQLite.

Test names are Celery's, in Celery's classes, so each one can be found in the
original. Where Celery mocks SQLAlchemy to inject an error, these tests raise
the driver's own error instead (``sqlite3.OperationalError`` whose
``sqlite_errorcode`` is SQLITE_BUSY is retryable; an IntegrityError is not):
the database itself is never mocked.

Left out, and why:
- test_ModelsIdFieldTypeVariations.test_for_mssql_dialect: the BigInteger id
  type of SQLAlchemy's MSSQL dialect; rawbackend has no MSSQL dialect.
- test_DatabaseBackend.test_store_result_task_without_children_attribute:
  Celery models without a ``children`` column; rawbackend's models always have
  it, and an old table gets it (test_migrate_missing_columns).
- test_DatabaseBackend.test_migrate_missing_columns_failure_logs_warning_and_degrades_gracefully,
  test_query_task_fallback_on_operational_error,
  test_migrate_missing_columns_ignores_exceptions,
  test_migrate_missing_columns_when_table_not_exists,
  test_DatabaseBackend_result_extended.test_store_result_stamps_missing_column_graceful_fallback,
  test_task_extended_to_dict_tolerant_of_stamps_error: SQLAlchemy's inspector
  and its ``defer()`` of columns missing from an old table; rawbackend adds the
  missing columns at set-up instead, and its models are dataclasses whose
  fields can't fail to load.
- test_SessionManager.test_coverage_madness: kombu's ``register_after_fork``
  being None; rawbackend uses ``os.register_at_fork`` (see test_forked_after_real_fork).

Changed, and why:
- test_SessionManager.test_get_engine_kwargs / test_get_engine_filters_nullpool_unsupported_kwargs:
  Celery makes a new NullPool engine per call until the process forks;
  rawbackend pools in every process (SPEC §5), so the same pool comes back and
  its pool options apply.
- test_store_result_racing_a_success_without_row_locks: on SQLite Celery's
  select-then-update lets a later STARTED replace a SUCCESS stored meanwhile;
  rawbackend's store is one conditional upsert, so the SUCCESS stays there too.
- test_result_decode_falls_back_to_pickle_for_legacy_rows: as Celery with an
  app that accepts pickle (Celery's test app does); with json only, rawbackend
  refuses to unpickle (test_result_decode_no_pickle_fallback_unless_accepted).
- test_do_connect_event_integration: SQLAlchemy's ``do_connect`` event is the
  pool's ``before_connect(hook)`` here; also on PostgreSQL and MySQL, where the
  hook sets the application name and the password of each new connection.
"""
from __future__ import annotations

import json
import os
import sqlite3
import traceback as traceback_module
import uuid as uuid_module
from datetime import datetime, timedelta, timezone
from pickle import dumps, loads
from unittest.mock import Mock, patch

import pytest
from celery import Celery, _state, states, uuid
from celery.app.task import Context
from celery.exceptions import BackendStoreError, ImproperlyConfigured
from celery.result import result_from_tuple
from kombu.exceptions import DecodeError
from kombu.utils.encoding import ensure_bytes

import rawbackend.session
from rawbackend import DatabaseBackend
from rawbackend.models import Tables, Task, TaskExtended, TaskSet
from rawbackend.pool import Pool
from rawbackend.session import PREPARE_MODELS_MAX_RETRIES, Session, SessionManager

SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CONSTRAINT = 5, 6, 19
SQLITE_BUSY_SNAPSHOT = 517  # an extended code: BUSY | (2 << 8)
SQLITE_CONSTRAINT_UNIQUE = 2067


def sqlite_error(cls=sqlite3.OperationalError, code=SQLITE_BUSY, message="database is locked"):
    """A driver error as sqlite3 raises it, with its extended result code."""
    exc = cls(message)
    exc.sqlite_errorcode = code
    return exc


class SomeClass:

    def __init__(self, data):
        self.data = data

    def __eq__(self, cmp):
        return self.data == cmp.data


def make_app(uri: str, **conf) -> Celery:
    """An app configured as Celery's unit-test app is (json and pickle accepted)."""
    app = Celery(f"ported-{uuid_module.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_backend="rawdb+" + uri, accept_content=("json", "pickle"), **conf)
    return app


@pytest.fixture(autouse=True)
def close_pools():
    """Close every pool a test opened (the sqlite files go with tmp_path)."""
    yield
    for manager in list(rawbackend.session._MANAGERS):
        for url in list(manager._engines):
            manager.invalidate(url)


class DatabaseFile:
    """Celery's classes use ``self.uri`` and ``self.app``; here on a file of the test's own."""

    # Collect Celery's lower-case test_* classes (pytest looks for Test* only).
    __test__ = True

    @pytest.fixture(autouse=True)
    def database_file(self, tmp_path):
        self.path = tmp_path / "test.db"
        self.uri = f"sqlite:///{self.path}"
        self.app = make_app(self.uri)
        self.setup_method_conf()

    def setup_method_conf(self):
        pass

    def query(self, sql, params=()):
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


class test_session_cleanup(DatabaseFile):
    # Celery's session_cleanup(session) is the Session's own context manager here.

    def test_context(self):
        engine = SessionManager().get_engine(self.uri)
        with Session(engine) as session:
            assert session.fetch_one("SELECT 1 AS one") == {"one": 1}
            assert engine.status()["checked_out"] == 1
        assert engine.status() == {"idle": 1, "checked_out": 0}

    def test_context_raises(self):
        engine = SessionManager().get_engine(self.uri)
        with pytest.raises(KeyError, match="boom"):
            with Session(engine) as session:
                session.fetch_one("SELECT 1")
                raise KeyError("boom")
        assert engine.status()["checked_out"] == 0
        with Session(engine) as session:  # the connection given back still works
            assert session.fetch_one("SELECT 2 AS two") == {"two": 2}


class test_DateDoneIndex(DatabaseFile):
    """date_done has an index on both tables (cleanup() uses it)."""

    def indexed_columns(self, table):
        columns = set()
        for _, name, *_ in self.query(f"PRAGMA index_list({table})"):
            columns |= {row[2] for row in self.query(f"PRAGMA index_info({name})")}
        return columns

    def test_task_date_done_has_index(self):
        DatabaseBackend(self.uri, app=self.app)
        assert "date_done" in self.indexed_columns("celery_taskmeta")

    def test_taskset_date_done_has_index(self):
        DatabaseBackend(self.uri, app=self.app)
        assert "date_done" in self.indexed_columns("celery_tasksetmeta")


def utcnow_naive():
    return datetime.now(timezone.utc).replace(tzinfo=None)


class test_DateDoneColumnDefaults(DatabaseFile):
    """date_done is the time of each store, not a value fixed at import time."""

    def test_task_date_done_default_is_callable(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        before = utcnow_naive()
        tb.mark_as_done("t1", 1)
        after = utcnow_naive()
        assert before <= tb.get_task_meta("t1")["date_done"] <= after

    def test_task_date_done_onupdate_is_callable(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tb.mark_as_failure("t1", KeyError("x"))
        first = tb.get_task_meta("t1", cache=False)["date_done"]
        before = utcnow_naive()
        tb.mark_as_done("t1", 1)
        after = utcnow_naive()
        second = tb.get_task_meta("t1", cache=False)["date_done"]
        assert first <= before <= second <= after

    def test_taskset_date_done_default_is_callable(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        before = utcnow_naive()
        tb.save_group("g1", self.app.GroupResult("g1", []))
        after = utcnow_naive()
        assert before <= tb._restore_group("g1")["date_done"] <= after


class test_DatabaseBackend(DatabaseFile):

    def setup_method_conf(self):
        self.app.conf.result_serializer = 'pickle'

    def test_store_result_retries_on_database_error(self):
        """Test that _store_result retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 3
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        original_store = tb._store_result
        call_count = [0]

        def failing_store(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] < 3:
                raise sqlite_error()
            return original_store(*args, **kwargs)

        tb._store_result = failing_store

        tb.store_result('task_id_1', {'result': 42}, states.SUCCESS)
        assert call_count[0] == 3
        assert tb._sleep.call_count == 2
        assert tb.get_task_meta('task_id_1')['result'] == {'result': 42}

    def test_store_result_retries_on_real_sqlite_busy(self):
        """A real SQLITE_BUSY (another connection holds the write lock) is retried, and the result stored."""
        self.app.conf.result_backend_max_retries = 3
        tb = DatabaseBackend(self.uri + "?timeout=0", app=self.app)
        locker = sqlite3.connect(self.path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            errors = []

            def sleep_then_unlock(seconds):
                errors.append(seconds)
                if locker.in_transaction:
                    locker.execute("COMMIT")

            tb._sleep = sleep_then_unlock
            tb.store_result('busy-task', 42, states.SUCCESS)
        finally:
            locker.close()
        assert len(errors) == 1  # failed once on the lock, then stored
        assert tb.get_task_meta('busy-task')['result'] == 42

    def test_get_task_meta_retries_on_database_error(self):
        """Test that _get_task_meta_for retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        tb.store_result('task_id_2', {'result': 'test'}, states.SUCCESS)

        original_get = tb._get_task_meta_for
        call_count = [0]

        def failing_get(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error()
            return original_get(*args, **kwargs)

        tb._get_task_meta_for = failing_get

        meta = tb.get_task_meta('task_id_2')
        assert meta['status'] == states.SUCCESS
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1

    def test_save_group_retries_on_database_error(self):
        """Test that _save_group retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        original_save_group = tb._save_group
        call_count = [0]

        def failing_save_group(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error(code=SQLITE_LOCKED, message="database table is locked")
            return original_save_group(*args, **kwargs)

        tb._save_group = failing_save_group

        tb.save_group('group_id_1', {'result': ['task1', 'task2']})
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1
        assert self.query("SELECT taskset_id FROM celery_tasksetmeta") == [('group_id_1',)]

    def test_forget_retries_on_database_error(self):
        """Test that _forget retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        tb.store_result('task_id_3', {'result': 'to_forget'}, states.SUCCESS)

        original_forget = tb._forget
        call_count = [0]

        def failing_forget(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error(code=SQLITE_BUSY_SNAPSHOT)
            return original_forget(*args, **kwargs)

        tb._forget = failing_forget

        tb.forget('task_id_3')
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1
        assert tb.task_result_exists('task_id_3') is False

    def test_cleanup_retries_on_database_error(self):
        """Test that cleanup retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        original_cleanup = tb._cleanup
        call_count = [0]

        def failing_cleanup(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error()
            return original_cleanup(*args, **kwargs)

        tb._cleanup = failing_cleanup

        tb.cleanup()
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1

    def test_task_result_exists_retries_on_database_error(self):
        """Test that task_result_exists retries when database errors occur."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        tb.store_result('task_id_exists', {'result': 'value'}, states.SUCCESS)

        original = tb._task_result_exists
        call_count = [0]

        def failing(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error()
            return original(*args, **kwargs)

        tb._task_result_exists = failing

        assert tb.task_result_exists('task_id_exists') is True
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1

    def test_create_tables_retries_on_database_error(self):
        """Test that _create_tables retries when ResultSession() fails."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        original = tb.ResultSession
        call_count = [0]

        def failing(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise sqlite_error()
            return original(*args, **kwargs)

        tb.ResultSession = failing

        tb._create_tables()
        assert call_count[0] == 2
        assert tb._sleep.call_count == 1

    def test_retries_respect_max_retries_config(self):
        """Test that retries stop after max_retries is reached."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        call_count = [0]

        def always_failing_store(*args, **kwargs):
            call_count[0] += 1
            raise sqlite_error()

        tb._store_result = always_failing_store

        with pytest.raises(BackendStoreError, match="failed to store result"):
            tb.store_result('task_id_4', {'result': 42}, states.SUCCESS)

        assert call_count[0] == 3
        assert tb._sleep.call_count == 2

    def test_retries_call_on_backend_retryable_error_hook(self):
        """Test that on_backend_retryable_error is called during retries:
        a lost connection drops the pool of the URL."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()
        tb.session_manager.invalidate = Mock()

        original_store = tb._store_result
        call_count = [0]

        def failing_store(*args, **kwargs):
            call_count[0] += 1
            if call_count[0] == 1:
                raise ConnectionResetError("connection lost")
            return original_store(*args, **kwargs)

        tb._store_result = failing_store

        tb.store_result('task_id_5', {'result': 42}, states.SUCCESS)

        tb.session_manager.invalidate.assert_called_once_with(tb.url)
        assert tb._sleep.call_count == 1

    def test_retries_on_lock_keep_the_pool(self):
        """A lock conflict is retried without dropping the pool: its connections are fine."""
        self.app.conf.result_backend_max_retries = 2
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()
        tb.session_manager.invalidate = Mock()
        original_store = tb._store_result
        calls = []

        def failing_store(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise sqlite_error()
            return original_store(*args, **kwargs)

        tb._store_result = failing_store
        tb.store_result('task_id_lock', 1, states.SUCCESS)
        tb.session_manager.invalidate.assert_not_called()
        assert tb._sleep.call_count == 1

    @pytest.mark.parametrize("error", [
        ValueError("not a database error"),
        sqlite_error(sqlite3.IntegrityError, SQLITE_CONSTRAINT_UNIQUE, "UNIQUE constraint failed"),
    ], ids=["ValueError", "IntegrityError"])
    def test_non_retryable_exceptions_propagate_immediately(self, error):
        """Test that non-retryable exceptions are not retried and propagate directly."""
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 5
        tb = DatabaseBackend(self.uri, app=self.app)
        tb._sleep = Mock()

        call_count = [0]

        def failing_store(*args, **kwargs):
            call_count[0] += 1
            raise error

        tb._store_result = failing_store

        with pytest.raises(type(error), match=str(error)):
            tb.store_result('task_id_6', {'result': 42}, states.SUCCESS)

        assert call_count[0] == 1
        assert tb._sleep.call_count == 0

    def test_without_fallback_exc_reaching_max_retries(self):
        """
        Test that _ensure_retryable raises the original exception
        when max retries are reached and no fallback_exc is provided.
        """
        self.app.conf.result_backend_always_retry = True
        self.app.conf.result_backend_max_retries = 0

        expected_exc = Exception("operation failed")
        tb = DatabaseBackend(self.uri, app=self.app)
        tb.exception_safe_to_retry = lambda exc: True
        tb._sleep = Mock()
        tb._forget = Mock()
        tb._forget.side_effect = expected_exc
        with pytest.raises(Exception, match="operation failed") as caught:
            tb.forget('dummy_task_id')
        assert caught.value is expected_exc
        assert tb._sleep.call_count == 0

    def test_retry_settings_defaults(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.always_retry is True
        assert tb.max_retries == 3

    def test_retry_settings_set_to_none_use_the_defaults(self):
        self.app.conf.result_backend_always_retry = None
        self.app.conf.result_backend_max_retries = None
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.always_retry is True
        assert tb.max_retries == 3

    @pytest.mark.parametrize('config', [
        {'result_backend_always_retry': False, 'result_backend_max_retries': 0},
        # The old setting names
        {'CELERY_RESULT_BACKEND_ALWAYS_RETRY': False, 'CELERY_RESULT_BACKEND_MAX_RETRIES': 0},
    ])
    def test_retry_settings_from_config_object(self, config):
        with Celery(set_as_current=False) as app:
            app.config_from_object(config)
            tb = DatabaseBackend(self.uri, app=app)
            assert tb.always_retry is False
            assert tb.max_retries == 0

    def test_missing_dburi_raises_ImproperlyConfigured(self):
        self.app.conf.database_url = None
        with pytest.raises(ImproperlyConfigured, match="Missing connection string"):
            DatabaseBackend(app=self.app)

    def test_engine_options_include_pool_health_defaults(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.engine_options["pool_pre_ping"] is True
        assert tb.engine_options["pool_recycle"] == 3600

    def test_engine_options_explicit_values_override_defaults(self):
        self.app.conf.database_engine_options = {"pool_pre_ping": False}
        tb = DatabaseBackend(
            self.uri,
            app=self.app,
            engine_options={"pool_recycle": 15},
        )
        assert tb.engine_options["pool_pre_ping"] is False
        assert tb.engine_options["pool_recycle"] == 15
        engine = tb.session_manager.get_engine(tb.url, **tb.engine_options)
        assert engine.recycle == 15

    def test_exception_safe_to_retry(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.exception_safe_to_retry(sqlite_error())
        assert tb.exception_safe_to_retry(sqlite_error(code=SQLITE_LOCKED))
        assert tb.exception_safe_to_retry(sqlite_error(code=SQLITE_BUSY_SNAPSHOT))
        assert not tb.exception_safe_to_retry(RuntimeError("not retryable"))
        assert not tb.exception_safe_to_retry(
            sqlite_error(sqlite3.IntegrityError, SQLITE_CONSTRAINT, "NOT NULL constraint failed"))
        assert not tb.exception_safe_to_retry(sqlite_error(code=1, message="no such table: x"))
        assert not tb.exception_safe_to_retry(sqlite3.OperationalError("no code at all"))

    def test_exception_safe_to_retry_with_interface_error(self):
        # A socket-level loss that no driver wrapped: retryable, and it drops the pool.
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.exception_safe_to_retry(ConnectionResetError("connection lost"))
        assert tb.exception_safe_to_retry(BrokenPipeError("connection lost"))

    def test_on_backend_retryable_error_invalidates_session(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tb.session_manager.invalidate = Mock()

        tb.on_backend_retryable_error(RuntimeError("retryable"))
        tb.session_manager.invalidate.assert_called_once_with(tb.url)

    def test_on_backend_retryable_error_called_with_exception(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tb.session_manager.invalidate = Mock()
        mock_exc = ConnectionResetError("connection lost")

        tb.on_backend_retryable_error(mock_exc)

        tb.session_manager.invalidate.assert_called_once_with(tb.url)

    def test_table_schema_config(self):
        self.app.conf.database_table_schemas = {
            'task': 'foo',
            'group': 'bar',
        }
        # disable table creation because schema foo and bar do not exist
        # and aren't created if they don't exist.
        self.app.conf.database_create_tables_at_setup = False
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.task_cls.table_schema == 'foo'
        assert tb.taskset_cls.table_schema == 'bar'
        assert '"foo"."celery_taskmeta"' in tb.tables.sql["store_result"]
        assert '"bar"."celery_tasksetmeta"' in tb.tables.sql["save_group"]

    def test_table_name_config(self):
        self.app.conf.database_table_names = {
            'task': 'foo',
            'group': 'bar',
        }
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.task_cls.table_name == 'foo'
        assert tb.taskset_cls.table_name == 'bar'
        tb.mark_as_done('in-foo', 1)
        assert self.query("SELECT task_id FROM foo") == [('in-foo',)]

    def test_table_creation_at_setup_config(self):
        self.app.conf.database_create_tables_at_setup = True
        DatabaseBackend(self.uri, app=self.app)
        tables = {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"celery_taskmeta", "celery_tasksetmeta"} <= tables

    def test_missing_task_id_is_PENDING(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.get_state('xxx-does-not-exist') == states.PENDING

    def test_missing_task_meta_is_dict_with_pending(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        meta = tb.get_task_meta('xxx-does-not-exist-at-all')
        assert meta['status'] == states.PENDING
        assert meta['task_id'] == 'xxx-does-not-exist-at-all'
        assert meta['result'] is None
        assert meta['traceback'] is None

    def test_task_result_exists_for_missing_task(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.task_result_exists('xxx-does-not-exist') is False

    def test_task_result_exists_after_mark_as_done(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        assert tb.task_result_exists(tid) is False
        tb.mark_as_done(tid, 42)
        assert tb.task_result_exists(tid) is True

    def test_task_result_exists_after_mark_as_failure(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_failure(tid, RuntimeError('fail'), traceback='tb')
        assert tb.task_result_exists(tid) is True

    def test_mark_as_done(self):
        tb = DatabaseBackend(self.uri, app=self.app)

        tid = uuid()

        assert tb.get_state(tid) == states.PENDING
        assert tb.get_result(tid) is None

        tb.mark_as_done(tid, 42)
        assert tb.get_state(tid) == states.SUCCESS
        assert tb.get_result(tid) == 42

    def test_is_pickled(self):
        tb = DatabaseBackend(self.uri, app=self.app)

        tid2 = uuid()
        result = {'foo': 'baz', 'bar': SomeClass(12345)}
        tb.mark_as_done(tid2, result)
        # is serialized properly.
        rindb = tb.get_result(tid2)
        assert rindb.get('foo') == 'baz'
        assert rindb.get('bar').data == 12345

    def test_result_respects_configured_serializer(self):
        """Regression test for celery/celery#3025.

        The result column must contain the bytes produced by the
        configured ``result_serializer``, not an implicit pickle blob.
        """
        self.app.conf.result_serializer = 'json'
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_done(tid, {'answer': 42})

        [(raw,)] = self.query("SELECT result FROM celery_taskmeta WHERE task_id = ?", (tid,))

        assert raw[:1] != b'\x80', 'result was pickled despite json serializer'
        assert json.loads(raw) == {'answer': 42}
        assert tb.get_result(tid) == {'answer': 42}

    def insert_raw_result(self, tid, raw):
        self.query(
            "INSERT INTO celery_taskmeta (task_id, status, result) VALUES (?, ?, ?)",
            (tid, states.SUCCESS, raw),
        )

    def test_result_decode_falls_back_to_pickle_for_legacy_rows(self):
        """Rows written before the celery/celery#3025 fix are always
        pickle, regardless of the configured serializer. Reading them
        back after upgrading must still work (the app accepts pickle).
        """
        self.app.conf.result_serializer = 'json'
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        self.insert_raw_result(tid, dumps({'legacy': 'pickle-data'}))

        with patch('rawbackend.backend.logger.warning') as warning:
            meta = tb.get_task_meta(tid)

        assert meta['result'] == {'legacy': 'pickle-data'}
        warning.assert_called_once()

    def test_result_decode_no_pickle_fallback_unless_accepted(self):
        """rawbackend's addition: an app that doesn't accept pickle never unpickles a legacy row."""
        self.app.conf.result_serializer = 'json'
        self.app.conf.accept_content = ['json']
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        self.insert_raw_result(tid, dumps({'legacy': 'pickle-data'}))
        with pytest.raises(DecodeError, match="can't decode byte 0x80|Expecting value"):
            tb.get_task_meta(tid)

    def test_result_decode_does_not_unpickle_non_pickle_garbage(self):
        """The pickle fallback must not fire on arbitrary bytes that
        merely fail to decode under the configured serializer -- only on
        payloads that actually look like a pickle (see review discussion
        on PR #10536).
        """
        self.app.conf.result_serializer = 'json'
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        self.insert_raw_result(tid, b'not-json-and-not-pickle-either')

        with pytest.raises(DecodeError, match="can't decode byte 0x80|Expecting value"):
            tb.get_task_meta(tid)

    @pytest.mark.parametrize(
        'result_serializer',
        ['pickle', 'json'],
        ids=['using pickle', 'using json']
    )
    def test_store_result_with_children(self, result_serializer):
        self.app.conf.result_serializer = result_serializer
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        child1 = self.app.AsyncResult(uuid())
        child2 = self.app.AsyncResult(uuid())

        request = Context()
        request.children.extend([child1, child2])
        tb.store_result(tid, 42, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)

        assert meta['result'] == 42
        assert len(meta['children']) == 2
        deserialized = [result_from_tuple(c, self.app) for c in meta['children']]
        assert [c.id for c in deserialized] == [child1.id, child2.id]

    def test_async_result_children(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        child_id = uuid()
        child = self.app.AsyncResult(child_id)

        request = Context()
        request.children.append(child)
        tb.store_result(tid, 42, states.SUCCESS, request=request)

        result = self.app.AsyncResult(tid, backend=tb)
        children = result.children
        assert children is not None
        assert len(children) == 1
        assert children[0].id == child_id

    def test_store_result_no_children(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.store_result(tid, 42, states.SUCCESS)
        meta = tb.get_task_meta(tid)
        assert meta['children'] is None
        result = self.app.AsyncResult(tid)
        assert result.children is None

    def test_migrate_missing_columns(self):
        # A task table as an old Celery made it (no children, no extended
        # columns), and no group table yet.
        self.query(
            "CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY, task_id VARCHAR(155) UNIQUE, "
            "status VARCHAR(50), result BLOB, date_done DATETIME, traceback TEXT)"
        )
        tb = DatabaseBackend(self.uri, app=self.app)

        cols = {row[1] for row in self.query("PRAGMA table_info(celery_taskmeta)")}
        assert {'children', 'name', 'args', 'kwargs', 'worker', 'retries', 'queue', 'stamps'} <= cols
        request = Context()
        request.children.append(self.app.AsyncResult('child'))
        tb.store_result('t', 1, states.SUCCESS, request=request)
        assert [c[0][0] for c in tb.get_task_meta('t')['children']] == ['child']

    def test_mark_as_started(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_started(tid)
        assert tb.get_state(tid) == states.STARTED

    def test_mark_as_revoked(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_revoked(tid)
        assert tb.get_state(tid) == states.REVOKED

    def test_mark_as_retry(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        try:
            raise KeyError('foo')
        except KeyError as exception:
            trace = '\n'.join(traceback_module.format_stack())
            tb.mark_as_retry(tid, exception, traceback=trace)
            assert tb.get_state(tid) == states.RETRY
            assert isinstance(tb.get_result(tid), KeyError)
            assert tb.get_traceback(tid) == trace

    def test_mark_as_failure(self):
        tb = DatabaseBackend(self.uri, app=self.app)

        tid3 = uuid()
        try:
            raise KeyError('foo')
        except KeyError as exception:
            trace = '\n'.join(traceback_module.format_stack())
            tb.mark_as_failure(tid3, exception, traceback=trace)
            assert tb.get_state(tid3) == states.FAILURE
            assert isinstance(tb.get_result(tid3), KeyError)
            assert tb.get_traceback(tid3) == trace

    @pytest.mark.parametrize('state, result', [
        (states.STARTED, {'pid': 1}),
        (states.FAILURE, KeyError('foo')),
        (states.SUCCESS, 43),
    ])
    def test_store_result_after_success_is_ignored(self, state, result):
        # e.g. the task runs again after its worker was lost before the ack
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_done(tid, 42)
        tb.store_result(tid, result, state)
        meta = tb.get_task_meta(tid, cache=False)
        assert meta['status'] == states.SUCCESS
        assert meta['result'] == 42

    def test_store_result_before_success_is_saved(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_started(tid)
        tb.mark_as_retry(tid, KeyError('foo'))
        tb.mark_as_failure(tid, KeyError('foo'))
        assert tb.get_task_meta(tid, cache=False)['status'] == states.FAILURE
        tb.mark_as_done(tid, 42)
        meta = tb.get_task_meta(tid, cache=False)
        assert meta['status'] == states.SUCCESS
        assert meta['result'] == 42

    def start_while_other_run_succeeds(self, tb, tid):
        # A second run starts just as the first one, on another worker (another
        # backend on the same file), saves its SUCCESS: here, between the moment
        # the second run checks out its connection and the moment its one
        # statement runs.
        other_worker = DatabaseBackend(self.uri, app=self.app)
        original = tb.ResultSession

        class RacingSession:
            def __init__(self, session):
                self.session = session

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self.session.close()

            def execute(self, sql, params=None):
                other_worker.mark_as_done(tid, 42)
                return self.session.execute(sql, params)

            def __getattr__(self, name):
                return getattr(self.session, name)

        def session_then_other_run_succeeds(*args, **kwargs):
            return RacingSession(original(*args, **kwargs))

        tb.ResultSession = session_then_other_run_succeeds
        try:
            tb.mark_as_started(tid, pid=2)
        finally:
            tb.ResultSession = original

    def test_store_result_racing_a_success_keeps_it(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        tb.mark_as_started(tid, pid=1)
        self.start_while_other_run_succeeds(tb, tid)
        meta = tb.get_task_meta(tid, cache=False)
        assert (meta['status'], meta['result']) == (states.SUCCESS, 42)

    def test_store_result_racing_a_success_without_row_locks(self):
        # Celery: on SQLite the later STARTED replaces the SUCCESS. rawbackend's
        # store is one conditional upsert, so the SUCCESS stays, on SQLite too.
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        self.start_while_other_run_succeeds(tb, tid)  # no row before: the insert path
        meta = tb.get_task_meta(tid, cache=False)
        assert (meta['status'], meta['result']) == (states.SUCCESS, 42)
        tb.mark_as_done(tid, 43)
        assert tb.get_task_meta(tid, cache=False)['result'] == 42

    def test_forget(self):
        tb = DatabaseBackend(self.uri, backend='memory://', app=self.app)
        tid = uuid()
        tb.mark_as_done(tid, {'foo': 'bar'})
        tb.mark_as_done(tid, {'foo': 'bar'})
        x = self.app.AsyncResult(tid, backend=tb)
        x.forget()
        assert x.result is None
        assert self.query("SELECT COUNT(*) FROM celery_taskmeta") == [(0,)]

    def test_process_cleanup(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tb.process_cleanup()

    def test_reduce(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        previous = _state.get_current_app()
        self.app.set_current()  # depends_on_current_app
        try:
            clone = loads(dumps(tb))
        finally:
            previous.set_current()
        assert clone
        assert clone.url == tb.url
        tb.mark_as_done('reduced', 1)
        assert clone.get_task_meta('reduced')['result'] == 1

    def test_save__restore__delete_group(self):
        tb = DatabaseBackend(self.uri, app=self.app)

        tid = uuid()
        res = self.app.GroupResult(
            tid, [self.app.AsyncResult(uuid()), self.app.AsyncResult(uuid())])
        assert tb.save_group(tid, res) == res

        res2 = tb.restore_group(tid)
        assert res2 == res

        tb.delete_group(tid)
        assert tb.restore_group(tid) is None

        assert tb.restore_group('xxx-nonexisting-id') is None

    def test_save__restore_group_respects_configured_serializer(self):
        """Regression test for celery/celery#3025 (group results)."""
        self.app.conf.result_serializer = 'json'
        tb = DatabaseBackend(self.uri, app=self.app)

        tid = uuid()
        res = self.app.GroupResult(
            tid, [self.app.AsyncResult(uuid()), self.app.AsyncResult(uuid())])
        tb.save_group(tid, res)

        [(raw,)] = self.query("SELECT result FROM celery_tasksetmeta WHERE taskset_id = ?", (tid,))

        assert raw[:1] != b'\x80', 'group result was pickled despite json serializer'
        assert tb.restore_group(tid) == res

    def set_date_done(self, table, when):
        self.query(f"UPDATE {table} SET date_done = ?", (when.strftime("%Y-%m-%d %H:%M:%S.%f"),))

    def test_cleanup(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        for _ in range(10):
            tb.mark_as_done(uuid(), 42)
            tb.save_group(uuid(), {'foo': 'bar'})
        old = datetime.now(timezone.utc) - tb.expires * 2
        self.set_date_done("celery_taskmeta", old)
        self.set_date_done("celery_tasksetmeta", old)

        tb.cleanup()

        assert self.query("SELECT COUNT(*) FROM celery_taskmeta") == [(0,)]
        assert self.query("SELECT COUNT(*) FROM celery_tasksetmeta") == [(0,)]

    def test_cleanup_respects_timezone_for_expiration(self):
        """Regression test for timezone bug where cleanup uses app.now() while date_done is UTC."""
        self.app.conf.timezone = 'Asia/Tokyo'
        self.app.conf.result_expires = 86400

        tb = DatabaseBackend(self.uri, app=self.app)

        unexpired_task_id = uuid()
        expired_task_id = uuid()
        tb.mark_as_done(unexpired_task_id, 42)
        tb.mark_as_done(expired_task_id, 100)

        now = datetime.now(timezone.utc)
        for task_id, age in ((unexpired_task_id, timedelta(hours=20)),
                             (expired_task_id, timedelta(hours=30))):
            self.query(
                "UPDATE celery_taskmeta SET date_done = ? WHERE task_id = ?",
                ((now - age).strftime("%Y-%m-%d %H:%M:%S.%f"), task_id),
            )

        tb.cleanup()

        assert tb.task_result_exists(unexpired_task_id) is True
        assert tb.task_result_exists(expired_task_id) is False

    def test_Task__repr__(self):
        assert 'foo' in repr(Task('foo'))

    def test_TaskSet__repr__(self):
        assert 'foo' in repr(TaskSet('foo', None))

    def test_query_task_unrelated_database_error_raises(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        session = Mock()
        session.fetch_one.side_effect = sqlite3.DatabaseError("unrelated connection lost")
        with pytest.raises(sqlite3.DatabaseError, match="unrelated"):
            tb._query_task(session, 'some-id')

    @pytest.mark.parametrize(
        'result_serializer, args, kwargs',
        [
            ('pickle', (SomeClass(1), SomeClass(2)),
             {'foo': SomeClass(123)}),
            ('json', ['a', 'b'], {'foo': 'bar'}),
        ],
        ids=['using pickle', 'using json']
    )
    def test_get_result_meta(self, result_serializer, args, kwargs):
        self.app.conf.result_serializer = result_serializer
        self.app.conf.result_extended = True
        tb = DatabaseBackend(self.uri, app=self.app)

        request = Context(args=args, kwargs=kwargs,
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})

        meta = tb._get_result_meta(result={'fizz': 'buzz'},
                                   state=states.SUCCESS, traceback=None,
                                   request=request, format_date=False,
                                   encode=True)

        assert meta['result'] == {'fizz': 'buzz'}
        assert tb.decode(meta['args']) == args
        assert tb.decode(meta['kwargs']) == kwargs
        assert meta['queue'] == 'celery'
        assert meta['name'] == 'mytask'
        assert meta['retries'] == 2
        assert meta['worker'] == "celery@worker_1"

    @pytest.mark.parametrize(
        'result_serializer, args, kwargs',
        [
            ('pickle', (SomeClass(1), SomeClass(2)),
             {'foo': SomeClass(123)}),
            ('json', ['a', 'b'], {'foo': 'bar'}),
        ],
        ids=['using pickle', 'using json']
    )
    def test_get_result_meta_with_none(self, result_serializer, args, kwargs):
        self.app.conf.result_serializer = result_serializer
        self.app.conf.result_extended = True
        tb = DatabaseBackend(self.uri, app=self.app)

        request = Context(args=args, kwargs=kwargs,
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})

        meta = tb._get_result_meta(result=None,
                                   state=states.SUCCESS, traceback=None,
                                   request=request, format_date=False,
                                   encode=True)

        assert meta['result'] is None
        assert tb.decode(meta['args']) == args
        assert tb.decode(meta['kwargs']) == kwargs
        assert meta['queue'] == 'celery'
        assert meta['name'] == 'mytask'
        assert meta['retries'] == 2
        assert meta['worker'] == "celery@worker_1"


class test_DatabaseBackend_result_extended(DatabaseFile):

    def setup_method_conf(self):
        self.app.conf.result_serializer = 'pickle'
        self.app.conf.result_extended = True

    def set_stamps(self, tid, raw):
        self.query("UPDATE celery_taskmeta SET stamps = ? WHERE task_id = ?", (raw, tid))

    @pytest.mark.parametrize(
        'result_serializer, args, kwargs',
        [
            ('pickle', (SomeClass(1), SomeClass(2)), {'foo': SomeClass(123)}),
            ('json', ['a', 'b'], {'foo': 'bar'}),
        ],
        ids=['using pickle', 'using json']
    )
    def test_store_result(self, result_serializer, args, kwargs):
        self.app.conf.result_serializer = result_serializer
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()

        request = Context(args=args, kwargs=kwargs,
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})

        tb.store_result(tid, {'fizz': 'buzz'}, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)

        assert meta['result'] == {'fizz': 'buzz'}
        assert meta['args'] == args
        assert meta['kwargs'] == kwargs
        assert meta['queue'] == 'celery'
        assert meta['name'] == 'mytask'
        assert meta['retries'] == 2
        assert meta['worker'] == "celery@worker_1"

    @pytest.mark.parametrize(
        'result_serializer, args, kwargs',
        [
            ('pickle', (SomeClass(1), SomeClass(2)), {'foo': SomeClass(123)}),
            ('json', ['a', 'b'], {'foo': 'bar'}),
        ],
        ids=['using pickle', 'using json']
    )
    def test_store_none_result(self, result_serializer, args, kwargs):
        self.app.conf.result_serializer = result_serializer
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()

        request = Context(args=args, kwargs=kwargs,
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})

        tb.store_result(tid, None, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)

        assert meta['result'] is None
        assert meta['args'] == args
        assert meta['kwargs'] == kwargs
        assert meta['queue'] == 'celery'
        assert meta['name'] == 'mytask'
        assert meta['retries'] == 2
        assert meta['worker'] == "celery@worker_1"

    def test_store_result_after_success_keeps_extended_fields(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(1, 2), kwargs={'foo': 'bar'}, task='mytask',
                          retries=0, hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})
        tb.store_result(tid, {'fizz': 'buzz'}, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid, cache=False)
        # The task runs again on another worker
        request.update(hostname='celery@worker_2', retries=1)
        tb.store_result(tid, {'pid': 2}, states.STARTED, request=request)
        assert tb.get_task_meta(tid, cache=False) == meta

    @pytest.mark.parametrize(
        'result_serializer',
        ['pickle', 'json'],
        ids=['using pickle', 'using json']
    )
    def test_store_result_with_stamps(self, result_serializer):
        self.app.conf.result_serializer = result_serializer
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()

        request = Context(args=(1, 2), kwargs={'foo': 'bar'},
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'},
                          stamped_headers=['stamp1', 'stamp2'],
                          stamps={'stamp1': ['val1'], 'stamp2': 'val2'})

        tb.store_result(tid, {'fizz': 'buzz'}, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)

        assert meta['result'] == {'fizz': 'buzz'}
        assert meta['stamped_headers'] == ['stamp1', 'stamp2']
        assert meta['stamp1'] == ['val1']
        assert meta['stamp2'] == 'val2'
        # Matches BaseBackend: stamps are flattened, and 'stamps' key is never leaked
        assert 'stamps' not in meta

    def test_store_result_without_stamps(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()

        request = Context(args=(1, 2), kwargs={'foo': 'bar'},
                          task='mytask', retries=2,
                          hostname='celery@worker_1',
                          delivery_info={'routing_key': 'celery'})

        tb.store_result(tid, {'fizz': 'buzz'}, states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)

        assert meta['result'] == {'fizz': 'buzz'}
        assert 'stamps' not in meta
        assert 'stamped_headers' not in meta

    def test_store_result_stamps_header_missing_from_meta(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(), kwargs={}, task='mytask',
                          stamped_headers=['stamp1', 'stamp_missing'],
                          stamps={'stamp1': 'val1'})
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)
        assert meta['stamp1'] == 'val1'
        assert 'stamp_missing' not in meta
        assert meta['stamped_headers'] == ['stamp1', 'stamp_missing']
        assert 'stamps' not in meta

    def test_store_result_stamps_corrupt_non_dict_payload(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(), kwargs={}, task='mytask',
                          stamped_headers=['stamp1'],
                          stamps={'stamp1': 'val1'})
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        self.set_stamps(tid, ensure_bytes(tb.encode("not-a-dict")))
        tb._cache.clear()
        meta = tb.get_task_meta(tid)
        assert meta['result'] == 'res'
        # Corrupt / non-dict payload fails closed and never leaks raw bytes into meta
        assert 'stamps' not in meta
        assert 'stamp1' not in meta

    def test_store_result_stamps_only_stamps_without_headers(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(), kwargs={}, task='mytask')
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        self.set_stamps(tid, ensure_bytes(tb.encode({'stamps': {'only_stamps': 'value'}})))
        tb._cache.clear()
        meta = tb.get_task_meta(tid)
        assert meta['only_stamps'] == 'value'
        assert 'stamped_headers' not in meta
        assert 'stamps' not in meta

    def test_store_result_stamps_only_headers_without_stamps(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(), kwargs={}, task='mytask')
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        self.set_stamps(tid, ensure_bytes(tb.encode({'stamped_headers': ['only_header']})))
        tb._cache.clear()
        meta = tb.get_task_meta(tid)
        assert meta['stamped_headers'] == ['only_header']
        assert 'stamps' not in meta

    def test_store_result_stamps_disabled_when_result_extended_false(self):
        self.app.conf.result_extended = False
        tb = DatabaseBackend(self.uri, app=self.app)
        assert issubclass(tb.task_cls, Task) and not issubclass(tb.task_cls, TaskExtended)
        assert not hasattr(Task, 'stamps')
        tid = uuid()
        request = Context(stamped_headers=['stamp1'], stamps={'stamp1': 'val1'})
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        meta = tb.get_task_meta(tid)
        assert 'stamp1' not in meta
        assert 'stamped_headers' not in meta
        assert 'stamps' not in meta

    def test_stamped_signature_roundtrip_with_async_result(self):
        from celery.canvas import signature
        from celery.result import AsyncResult

        tb = DatabaseBackend(self.uri, app=self.app)
        sig = signature('mytask', app=self.app)
        sig.stamp(stamp_key='stamp_value', custom_run_id=123)

        tid = uuid()
        request = Context(
            task='mytask',
            stamped_headers=sig.options['stamped_headers'],
            stamps={h: sig.options[h] for h in sig.options['stamped_headers'] if h in sig.options}
        )

        tb.store_result(tid, {'status': 'completed'}, states.SUCCESS, request=request)
        async_res = AsyncResult(tid, backend=tb, app=self.app)
        assert async_res.result == {'status': 'completed'}
        assert async_res.state == states.SUCCESS

        meta = tb.get_task_meta(tid)
        assert meta['stamp_key'] == 'stamp_value'
        assert meta['custom_run_id'] == 123
        assert set(meta['stamped_headers']) == {'stamp_key', 'custom_run_id'}
        assert 'stamps' not in meta

    def test_store_result_stamps_corrupt_unpicklable_decode_error(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        tid = uuid()
        request = Context(args=(), kwargs={}, task='mytask')
        tb.store_result(tid, 'res', states.SUCCESS, request=request)
        self.set_stamps(tid, b'corrupt-unpicklable-blob')
        tb._cache.clear()
        meta = tb.get_task_meta(tid)
        assert meta['result'] == 'res'
        assert 'stamps' not in meta


class test_SessionManager(DatabaseFile):

    def test_after_fork(self):
        s = SessionManager()
        assert not s.forked
        s._after_fork()
        assert s.forked

    def test_forked_after_real_fork(self):
        """After a real os.fork(), the child's manager says forked, drops the
        parent's connections and opens its own; the parent's keep working."""
        s = SessionManager()
        engine = s.get_engine(self.uri)
        with Session(engine) as session:
            session.fetch_one("SELECT 1")
        parent_conn = engine._idle[0].conn
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            status = 1
            try:
                os.close(read_end)
                child_engine = s.get_engine(self.uri)
                reset = child_engine.status() == {"idle": 0, "checked_out": 0}
                with Session(child_engine) as session:
                    one = session.fetch_one("SELECT 1 AS one")["one"]
                    fresh = session._pooled.conn is not parent_conn
                report = {"forked": s.forked, "idle_after_fork_reset": reset,
                          "one": one, "fresh": fresh}
                os.write(write_end, json.dumps(report).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as reader:
                report = json.loads(reader.read() or b"{}")
        finally:
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert report == {"forked": True, "idle_after_fork_reset": True, "one": 1, "fresh": True}
        assert s.forked is False  # the parent did not fork
        with Session(engine) as session:
            assert session.fetch_one("SELECT 2 AS two") == {"two": 2}
            assert session._pooled.conn is parent_conn

    def test_get_engine_forked(self):
        s = SessionManager()
        s._after_fork()
        engine = s.get_engine(self.uri, pool_size=3)
        assert isinstance(engine, Pool)
        assert engine.size == 3
        engine2 = s.get_engine(self.uri, pool_size=3)
        assert engine2 is engine

    def test_get_engine_kwargs(self):
        # Not forked: Celery makes a new NullPool engine per call; rawbackend pools here too.
        s = SessionManager()
        engine = s.get_engine(self.uri, pool_size=5)
        engine2 = s.get_engine(self.uri)
        assert engine2 is engine
        assert engine.size == 5

    def test_invalidate_disposes_cached_engine(self):
        s = SessionManager()
        engine = Mock()
        s._engines['dburi'] = engine
        s._sessions['dburi'] = Mock()

        s.invalidate('dburi')

        assert 'dburi' not in s._engines
        assert 'dburi' not in s._sessions
        engine.dispose.assert_called_once_with()

    def test_invalidate_closes_pooled_connections(self):
        s = SessionManager()
        engine = s.get_engine(self.uri)
        with Session(engine) as session:
            session.fetch_one("SELECT 1")
        conn = engine._idle[0].conn
        s.invalidate(self.uri)
        assert engine.status() == {"idle": 0, "checked_out": 0}
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
        assert s.get_engine(self.uri) is not engine

    def test_invalidate_nonexistent_dburi_is_noop(self):
        s = SessionManager()
        s.invalidate('nonexistent-dburi')
        assert 'nonexistent-dburi' not in s._engines
        assert 'nonexistent-dburi' not in s._sessions

    def test_invalidate_only_engine_cached(self):
        s = SessionManager()
        engine = Mock()
        s._engines['dburi'] = engine

        s.invalidate('dburi')

        assert 'dburi' not in s._engines
        engine.dispose.assert_called_once_with()

    def test_create_session_forked(self):
        s = SessionManager()
        s._after_fork()
        engine, session = s.create_session(self.uri, short_lived_sessions=True)
        assert engine is s.get_engine(self.uri)
        engine, session2 = s.create_session(self.uri, short_lived_sessions=True)
        assert session2 is not session
        engine, session3 = s.create_session(self.uri, short_lived_sessions=False)
        assert session3 is session2
        one = session3()
        assert isinstance(one, Session) and one.engine is engine
        try:
            assert one.fetch_one("SELECT 1 AS one") == {"one": 1}
            one.commit()
            one.rollback()
        finally:
            one.close()
        assert engine.status()["checked_out"] == 0

    def test_session_factory_prepares_models_once(self):
        s = SessionManager()
        self.app.conf.database_create_tables_at_setup = False
        tb = DatabaseBackend(self.uri, app=self.app)
        assert s.prepared is False
        with patch.object(Tables, "create", autospec=True, side_effect=Tables.create) as create:
            with s.session_factory(self.uri, tables=tb.tables) as session:
                assert session.fetch_one("SELECT COUNT(*) AS n FROM celery_taskmeta") == {"n": 0}
            s.session_factory(self.uri, tables=tb.tables).close()
        assert create.call_count == 1
        assert s.prepared is True

    def test_prepare_models_terminates(self, monkeypatch):
        """SessionManager.prepare_models has retry logic because the creation
        of database tables by multiple workers is racy. This test patches
        the used method to always raise, so we can verify that it does
        eventually terminate.
        """
        monkeypatch.setattr(rawbackend.session.time, "sleep", Mock())
        manager = SessionManager()
        engine = manager.get_engine(self.uri)
        self.app.conf.database_create_tables_at_setup = False
        tables = DatabaseBackend(self.uri, app=self.app).tables

        with pytest.raises(sqlite3.DatabaseError, match="racing"), patch.object(
            Tables, 'create', side_effect=sqlite3.DatabaseError("racing")
        ) as mock_create_all:
            manager.prepare_models(engine, tables)

        assert mock_create_all.call_count == PREPARE_MODELS_MAX_RETRIES + 1
        assert manager.prepared is False

    def test_get_engine_filters_nullpool_unsupported_kwargs(self, caplog, monkeypatch):
        """Pool options apply; an option the pool does not know is logged once and ignored."""
        monkeypatch.setattr(rawbackend.session, "_warned_options", set())
        s = SessionManager()
        with caplog.at_level("WARNING", logger="rawbackend.session"):
            engine = s.get_engine(self.uri, echo_pool=True, pool_size=10, max_overflow=5)
            s.invalidate(self.uri)
            s.get_engine(self.uri, echo_pool=True)
        assert (engine.size, engine.max_overflow) == (10, 5)
        warnings = [r.getMessage() for r in caplog.records if "echo_pool" in r.getMessage()]
        assert len(warnings) == 1 and "ignored" in warnings[0]


class test_EngineCallback(DatabaseFile):

    def test_no_callback_default_behavior(self):
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.session_manager.engine_callback is None

    def test_non_callable_callback_raises(self):
        self.app.conf.database_engine_callback = 42
        with pytest.raises(ImproperlyConfigured, match="must be callable, got 42"):
            DatabaseBackend(self.uri, app=self.app)

    def test_callback_from_config(self):
        callback = Mock()
        self.app.conf.database_engine_callback = callback
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.session_manager.engine_callback is callback
        callback.assert_called_once()
        engine = callback.call_args[0][0]
        assert isinstance(engine, Pool)
        assert callable(engine.before_connect)
        assert engine is tb.session_manager.get_engine(tb.url, **tb.engine_options)

    def test_callback_from_constructor_kwarg(self):
        callback = Mock()
        tb = DatabaseBackend(self.uri, app=self.app, engine_callback=callback)
        assert tb.session_manager.engine_callback is callback
        callback.assert_called_once()

    def test_constructor_kwarg_overrides_config(self):
        config_callback = Mock()
        kwarg_callback = Mock()
        self.app.conf.database_engine_callback = config_callback
        tb = DatabaseBackend(
            self.uri, app=self.app, engine_callback=kwarg_callback)
        assert tb.session_manager.engine_callback is kwarg_callback
        kwarg_callback.assert_called_once()
        config_callback.assert_not_called()

    def test_callback_from_dotted_path(self):
        self.app.conf.database_engine_callback = (
            'unittest.mock:Mock'
        )
        tb = DatabaseBackend(self.uri, app=self.app)
        assert tb.session_manager.engine_callback is Mock

    def test_callback_called_in_forked_mode(self):
        callback = Mock()
        s = SessionManager(engine_callback=callback)
        s._after_fork()
        engine = s.get_engine(self.uri)
        callback.assert_called_once_with(engine)

    def test_callback_called_in_non_forked_mode(self):
        callback = Mock()
        s = SessionManager(engine_callback=callback)
        engine = s.get_engine(self.uri)
        callback.assert_called_once_with(engine)

    def test_callback_reapplied_after_invalidate(self):
        callback = Mock()
        s = SessionManager(engine_callback=callback)
        s._after_fork()

        first = s.get_engine(self.uri)
        assert callback.call_count == 1

        s.invalidate(self.uri)

        second = s.get_engine(self.uri)
        assert callback.call_count == 2
        assert callback.call_args_list[1][0][0] is second is not first

    def test_cached_engine_skips_callback(self):
        callback = Mock()
        s = SessionManager(engine_callback=callback)
        s._after_fork()

        s.get_engine(self.uri)
        s.get_engine(self.uri)
        callback.assert_called_once()

    def test_callback_fires_before_create_tables(self):
        call_order = []

        def track_callback(engine):
            call_order.append('callback')

        original_create = Tables.create

        def track_create(tables, session):
            call_order.append('create_all')
            return original_create(tables, session)

        with patch.object(Tables, 'create', autospec=True, side_effect=track_create):
            DatabaseBackend(
                self.uri, app=self.app, engine_callback=track_callback)

        assert call_order == ['callback', 'create_all']

    def test_do_connect_event_integration(self):
        """Integration test: engine_callback registers a before_connect hook
        that sees (and may change) the parameters of every new connection."""
        connect_calls = []

        def register_do_connect(engine):
            @engine.before_connect
            def on_connect(cparams):
                connect_calls.append(cparams.copy())

        tb = DatabaseBackend(
            self.uri, app=self.app, engine_callback=register_do_connect)

        tid = 'test-task-id'
        tb.mark_as_done(tid, 42)
        assert len(connect_calls) >= 1
        assert connect_calls[0]["database"] == str(self.path)


def test_do_connect_event_integration_postgresql(pg_db):
    """On PostgreSQL: the hook names each new connection (as it would mint a
    password), and a new pool after invalidate() gets the callback again."""
    minted = []

    def callback(pool):
        @pool.before_connect
        def mint(params):
            minted.append(f"rawcb-{len(minted) + 1}")
            params["application_name"] = minted[-1]
            params["password"] = "freshly-minted-token"  # trust auth: accepted, unused

    backend = pg_db.app(database_engine_callback=callback).backend
    backend.mark_as_done("cb-task", 42)
    with backend.ResultSession() as session:
        first = session.fetch_one("SELECT current_setting('application_name') AS name")["name"]
    assert first in minted

    # Two sessions at once: the second one opens a new connection, minted anew.
    with backend.ResultSession() as one, backend.ResultSession() as two:
        names = {s.fetch_one("SELECT current_setting('application_name') AS name")["name"]
                 for s in (one, two)}
    assert len(names) == 2 and names <= set(minted)

    backend.session_manager.invalidate(backend.url)
    with backend.ResultSession() as session:
        after = session.fetch_one("SELECT current_setting('application_name') AS name")["name"]
    assert after == minted[-1] and after not in names | {first}
    assert backend.get_task_meta("cb-task", cache=False)["result"] == 42


def test_do_connect_event_integration_mysql_password(mysql_db):
    """On MySQL: a user whose password is not in the URL connects with the one the hook puts in."""
    import pymysql

    from conftest import raw_connect
    from rawbackend.url import parse_url

    user = f"rawcb_{uuid_module.uuid4().hex[:8]}"
    password = f"pw-{uuid_module.uuid4().hex}"
    hosts = ("%", "localhost", "127.0.0.1")
    database = parse_url(mysql_db.url)[1]["database"]  # the test database, whatever its name
    admin = raw_connect("mysql", mysql_db.url)
    try:
        with admin.cursor() as cur:
            for host in hosts:
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'")
                cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'{host}'")
        url = mysql_db.url.replace("://root@", f"://{user}@", 1)
        assert f"{user}@" in url
        with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
            raw_connect("mysql", url).close()

        def callback(pool):
            pool.before_connect(lambda params: params.update(password=password))

        app = Celery("cb", set_as_current=False)
        app.conf.update(result_backend="rawdb+" + url,
                        **mysql_db.conf(database_engine_callback=callback))
        mysql_db.apps.append(app)
        backend = app.backend
        backend.mark_as_done("cb-task", 42)
        assert backend.get_task_meta("cb-task", cache=False)["result"] == 42
        with backend.ResultSession() as session:
            assert session.fetch_one("SELECT CURRENT_USER() AS u")["u"].startswith(user + "@")
        assert password not in backend.as_uri()
    finally:
        try:
            for app in mysql_db.apps:
                backend = getattr(app, "_backend", None)
                if backend is not None:
                    backend.session_manager.invalidate(backend.url)
            with admin.cursor() as cur:
                for host in hosts:
                    cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        finally:
            admin.close()
