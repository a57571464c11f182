"""``DatabaseBackend``: Celery's database result backend on raw DB-API drivers."""
from __future__ import annotations

import logging
import math
import pickle
from datetime import datetime, timedelta, timezone

from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import ImproperlyConfigured
from celery.result import result_from_tuple
from celery.utils.imports import symbol_by_name
from celery.utils.time import maybe_timedelta
from kombu.utils.encoding import ensure_bytes

from .errors import classify
from .models import Task, TaskExtended, TaskSet, Tables
from .session import Session, SessionManager
from .url import parse_url, strip_prefix

__all__ = ("DatabaseBackend",)

logger = logging.getLogger(__name__)

TASK_ID_MAX = 155  # VARCHAR(155), in Celery's tables
CLEANUP_BATCH = 5000  # rows per DELETE: short locks, so stores never wait long
DEFAULT_RECONNECT_TIMEOUT = 30.0  # seconds to wait for a server to come back
# Seconds one lock wait may take before the store fails and Celery's loop tries
# again: with 3 retries a store gives up after ~40 s behind a held lock (like the
# reconnect budget), instead of never (PostgreSQL) or after 4 x 50 s (InnoDB).
# Our own statements hold row locks for milliseconds; cleanup, a batch at a time.
DEFAULT_LOCK_TIMEOUT = 10.0


def _seconds_or_none(setting: str, value) -> float | None:
    """A duration setting in seconds; None or 0 mean "leave it to the server"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or math.isinf(value):
        raise ImproperlyConfigured(
            f"rawbackend: {setting} must be a number of seconds >= 0 (or None), got {value!r}"
        )
    return float(value) or None


class DatabaseBackend(BaseBackend):
    """The database result backend, on psycopg 3, PyMySQL or sqlite3."""

    # ResultSet.iterate sleeps this much between polls.
    subpolling_interval = 0.5

    task_cls = Task
    taskset_cls = TaskSet

    def __init__(self, dburi=None, engine_options=None, url=None, **kwargs):
        super().__init__(expires_type=maybe_timedelta, url=url, **kwargs)
        conf = self.app.conf

        # As Celery's: retry by default, 3 times, unless the user said otherwise.
        if not conf.value_set_for("result_backend_always_retry") or self.always_retry is None:
            self.always_retry = True
        if not conf.value_set_for("result_backend_max_retries") or self.max_retries is None:
            self.max_retries = 3

        # Classes of this backend's own, so that configure() below never
        # changes the tables of another app's backend in this process.
        self.task_cls = (TaskExtended if self.extended_result else Task).bound()
        self.taskset_cls = TaskSet.bound()

        if url and url.rstrip("/").lower() == "rawdb:":
            url = None  # "rawdb://" names the backend, no database: use database_url
        self.url = url or dburi or conf.database_url
        if not self.url:
            raise ImproperlyConfigured(
                "Missing connection string! Do you have the database_url setting set to a real value?"
            )
        self.url = strip_prefix(self.url)
        self.dialect, _ = parse_url(self.url)

        self.engine_options = dict(conf.database_engine_options or {}, **(engine_options or {}))
        self.short_lived_sessions = kwargs.get(
            "short_lived_sessions", conf.database_short_lived_sessions
        )
        schemas = conf.database_table_schemas or {}
        tablenames = conf.database_table_names or {}
        self.task_cls.configure(schema=schemas.get("task"), name=tablenames.get("task"))
        self.taskset_cls.configure(schema=schemas.get("group"), name=tablenames.get("group"))
        self.tables = Tables(self.dialect, self.task_cls, self.taskset_cls)
        # Names, looked up at each use: a server variant (MariaDB) may replace
        # the statements once the first connection is made.
        self._store_statement = "store_result_extended" if self.extended_result else "store_result"
        self._get_statement = "get_task_meta_extended" if self.extended_result else "get_task_meta"
        self._store_columns = self.task_cls.columns()

        engine_callback = kwargs.get("engine_callback", conf.database_engine_callback)
        if isinstance(engine_callback, str):
            engine_callback = symbol_by_name(engine_callback)
        if engine_callback is not None and not callable(engine_callback):
            raise ImproperlyConfigured(
                f"database_engine_callback must be callable, got {engine_callback!r}"
            )
        self.lock_timeout = _seconds_or_none(
            "database_lock_timeout", conf.get("database_lock_timeout", DEFAULT_LOCK_TIMEOUT)
        )
        self.session_manager = SessionManager(
            engine_callback=engine_callback, lock_timeout=self.lock_timeout
        )
        self.reconnect_timeout = float(
            conf.get("database_reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT)
        )

        if conf.database_create_tables_at_setup is True:
            self._create_tables()

    @property
    def extended_result(self):
        return self.app.conf.find_value_for_key("extended", "result")

    # -- retries: Celery's loop in base.py, our verdicts -----------------------

    def exception_safe_to_retry(self, exc):
        """True for errors that the driver's code says are transient."""
        return classify(self.dialect.errors, exc) is not None

    def on_backend_retryable_error(self, exc):
        """After a disconnect: drop the pool, and wait for the server to answer
        again (up to ``database_reconnect_timeout`` seconds), so that a
        restart costs a stall instead of a result."""
        verdict = classify(self.dialect.errors, exc)
        if verdict is not None and not verdict.disconnect:
            return  # a deadlock or a lock timeout: the connection is fine
        self.session_manager.invalidate(self.url)
        self.session_manager.wait_for_server(self.url, self.reconnect_timeout, **self.engine_options)

    # -- sessions and tables -------------------------------------------------

    def _create_tables(self):
        """Create the task and taskset tables."""
        self._ensure_retryable(self.ResultSession)

    def ResultSession(self, session_manager=None) -> Session:
        if session_manager is None:
            session_manager = self.session_manager
        return session_manager.session_factory(
            dburi=self.url,
            short_lived_sessions=self.short_lived_sessions,
            tables=self.tables,
            **self.engine_options,
        )

    # -- tasks -----------------------------------------------------------------

    def _query_task(self, session, task_id, for_update=False):
        """The task's row as a model, or None. ``for_update`` is accepted for
        Celery's signature: stores are one upsert here and lock nothing first."""
        row = session.fetch_one(self.tables.sql[self._get_statement], {"task_id": task_id})
        if row is None:
            return None
        row["date_done"] = self.dialect.decode_datetime(row["date_done"])
        return self.task_cls(**row)

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        """Store return value and state of an executed task: one upsert, and a
        SUCCESS already stored is never written over."""
        if not isinstance(task_id, str) or not task_id or len(task_id) > TASK_ID_MAX:
            raise ValueError(
                f"rawbackend: task id {task_id!r:.60} is not a string of 1 to {TASK_ID_MAX} "
                f"characters, what {self.task_cls.table_name}.task_id holds"
            )
        task = self.task_cls(task_id)
        self._update_result(task, result, state, traceback=traceback, request=request)
        row = {column: getattr(task, column) for column in self._store_columns}
        row["date_done"] = self.dialect.encode_datetime(row["date_done"])
        with self.ResultSession() as session:
            session.execute(self.tables.sql[self._store_statement], row)

    def _update_result(self, task, result, state, traceback=None, request=None):
        meta = self._get_result_meta(
            result=ensure_bytes(self.encode(result)), state=state, traceback=traceback,
            request=request, format_date=False, encode=True,
        )
        for column in self._store_columns:
            if column not in ("task_id", "children", "stamps"):
                setattr(task, column, meta.get(column))
        children = meta.get("children")
        task.children = ensure_bytes(self.encode(children)) if children else None
        if hasattr(task, "stamps"):
            stamped_headers = meta.get("stamped_headers")
            if stamped_headers:
                stamps = {h: meta.get(h) for h in stamped_headers if h in meta}
                task.stamps = ensure_bytes(
                    self.encode({"stamped_headers": stamped_headers, "stamps": stamps})
                )
            else:
                task.stamps = None  # the upsert keeps stamps stored earlier

    def _get_task_meta_for(self, task_id):
        """Get task meta-data for a task by id."""
        with self.ResultSession() as session:
            task = self._query_task(session, task_id)
        if task is None:
            task = self.task_cls(task_id)
            task.status = states.PENDING
            task.result = None
        data = task.to_dict()
        data["result"] = self._decode_stored_result(data["result"])
        for field in ("args", "kwargs", "children"):
            if data.get(field) is not None:
                data[field] = self.decode(data[field])
        raw_stamps = data.pop("stamps", None)
        if raw_stamps is not None:
            try:
                stamps_info = self.decode(raw_stamps)
            except Exception:
                stamps_info = None  # as Celery: unreadable stamps are left out
            if isinstance(stamps_info, dict):
                if "stamped_headers" in stamps_info:
                    data["stamped_headers"] = stamps_info["stamped_headers"]
                if isinstance(stamps_info.get("stamps"), dict):
                    data.update(stamps_info["stamps"])
        return self.meta_from_decoded(data)

    def _decode_stored_result(self, payload):
        """Decode the ``result`` column; rows from before celery/celery#3025 hold
        a raw pickle, read as such only when the app accepts pickle content."""
        if payload is None:
            return payload
        payload = ensure_bytes(payload)
        try:
            return self.decode(payload)
        except Exception:
            if payload[:1] != b"\x80" or "application/x-python-serialize" not in self.accept:
                raise
            logger.warning(
                "Task result payload could not be decoded using the configured "
                "result_serializer; falling back to pickle for pre-fix data.",
                exc_info=True,
            )
            return pickle.loads(payload)

    def task_result_exists(self, task_id):
        """Whether a result exists in the database for ``task_id``."""
        return self._ensure_retryable(self._task_result_exists, task_id=task_id)

    def _task_result_exists(self, task_id):
        with self.ResultSession() as session:
            return session.fetch_one(self.tables.sql["task_result_exists"], {"task_id": task_id}) is not None

    def _forget(self, task_id):
        """Forget about result."""
        with self.ResultSession() as session:
            session.execute(self.tables.sql["forget"], {"task_id": task_id})

    # -- groups ------------------------------------------------------------------

    def _save_group(self, group_id, result):
        """Store the result of an executed group (saving it again replaces it)."""
        value = ensure_bytes(self.encode(self.prepare_value(result)))
        params = {
            "taskset_id": group_id,
            "result": value,
            "date_done": self.dialect.encode_datetime(datetime.now(timezone.utc)),
        }
        with self.ResultSession() as session:
            session.execute(self.tables.sql["save_group"], params)
        return result

    def _restore_group(self, group_id):
        """Get meta-data for group by id."""
        with self.ResultSession() as session:
            row = session.fetch_one(self.tables.sql["restore_group"], {"taskset_id": group_id})
        if row is None:
            return None
        row["date_done"] = self.dialect.decode_datetime(row["date_done"])
        data = self.taskset_cls(**row).to_dict()
        value = self._decode_stored_result(data["result"])
        data["result"] = value if value is None else result_from_tuple(value, self.app)
        return data

    def _delete_group(self, group_id):
        """Delete meta-data for group by id."""
        with self.ResultSession() as session:
            session.execute(self.tables.sql["delete_group"], {"taskset_id": group_id})

    # -- expiry ---------------------------------------------------------------------

    def cleanup(self):
        """Delete expired meta-data."""
        self._ensure_retryable(self._cleanup)

    def _cleanup(self):
        if not self.expires:
            return  # result_expires None or 0: results never expire
        expires = self.expires if isinstance(self.expires, timedelta) else timedelta(seconds=self.expires)
        cutoff = self.dialect.encode_datetime(datetime.now(timezone.utc) - expires)
        params = {"cutoff": cutoff, "batch": CLEANUP_BATCH}
        # In batches, each its own short transaction: a store running meanwhile
        # waits for one batch at most, never for the whole cleanup.
        with self.ResultSession() as session:
            for name in ("delete_expired_tasks", "delete_expired_groups"):
                while session.execute(self.tables.sql[name], params) >= CLEANUP_BATCH:
                    pass

    def __reduce__(self, args=(), kwargs=None):
        kwargs = {} if not kwargs else kwargs
        kwargs.update({"dburi": self.url, "expires": self.expires, "engine_options": self.engine_options})
        return super().__reduce__(args, kwargs)
