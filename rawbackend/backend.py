"""``DatabaseBackend``: Celery's database result backend on raw DB-API drivers."""
from __future__ import annotations

import logging
import math
import pickle
import time
import uuid
from contextlib import nullcontext
from datetime import datetime, timezone
from functools import partial

from celery import maybe_signature, states
from celery.backends.base import BaseBackend, decompress_payload
from celery.exceptions import BackendGetMetaError, ChordError, ImproperlyConfigured, TimeoutError
from celery.result import allow_join_result, result_from_tuple
from celery.utils.imports import symbol_by_name
from celery.utils.time import maybe_timedelta
from kombu.exceptions import DecodeError, EncodeError
from kombu.serialization import registry as serializers
from kombu.utils.encoding import bytes_to_str, ensure_bytes

from .errors import ValueTooLarge, classify
from .expiry import Cleanup, Report, unfinished_setting
from .listen import Listener, Watch, listener_for
from .models import ChordPart, Tables, Task, TaskExtended, TaskSet, Watermark
from .session import Session, SessionManager
from .url import parse_url, sanitize_url, strip_prefix
from .waiting import pauses

__all__ = ("DatabaseBackend",)

logger = logging.getLogger(__name__)

TASK_ID_MAX = 155  # VARCHAR(155), in Celery's tables
DEFAULT_RECONNECT_TIMEOUT = 30.0  # seconds to wait for a server to come back
# Columns a store may leave out (NULL) when a value does not fit, with a
# warning; a result or traceback that does not fit is an error instead.
LEFT_OUT_IF_TOO_LARGE = frozenset({"children", "name", "args", "kwargs", "worker", "queue", "stamps"})
WIDEN_LATER = "widen the column by hand (`rawbackend check` shows its size)"
# Ids per statement of a native join's poll: bounded statements and result
# sets (each driver passes the ids as one parameter, so no parameter limit).
GET_MANY_CHUNK = 1000
# Whether stores notify waiters and waiters listen (``database_notify``; only
# where the dialect has notify_ statements: PostgreSQL). Off by default: with 8
# concurrent writers NOTIFY's commit lock cost 34-36% of the stores/s (4,643 ->
# 3,060, and 2,304 -> 1,466 on a busier machine: benchmarks/notify.py), on
# every worker's hot path, while the adaptive poll
# already sees a result within ~50 ms. On (in workers and waiters alike), a
# result wakes its waiter in ~3 ms and 100 idle waiters cost < 1 query/s.
DEFAULT_NOTIFY = False


def _encodes(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_chord_id(kind: str, value) -> None:
    """A chord's group id and its parts' task ids are keys of the chord table
    (VARCHAR(155)); "" is the claim row's."""
    if not isinstance(value, str) or not value or len(value) > TASK_ID_MAX:
        raise ValueError(
            f"rawbackend: chord {kind} id {value!r:.60} is not a string of 1 to {TASK_ID_MAX} "
            "characters, what the chord table's keys hold"
        )


def _culprit(deps):
    """The first header result that failed: the one the join raised for.
    Celery reads it from the backend's cache, which only a native join
    fills with failures; else each result is asked, in header order."""
    for result in deps._failed_join_report():
        return result
    for result in deps.results:
        if result.state in states.PROPAGATE_STATES:
            return result
    return None


def _chord_error(reason: str, exc: BaseException) -> ChordError:
    """A ChordError with the part's exception as its cause, as Celery makes it."""
    error = ChordError(reason)
    if isinstance(exc, Exception):
        error.__cause__ = exc
    return error


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

    # Set by BaseBackend.__init__ from the conf (Celery ships no types to say so).
    always_retry: bool | None
    max_retries: int | None

    # ResultSet.iterate sleeps this much between polls.
    subpolling_interval = 0.5
    # ResultSet.join_native and GroupResult.get use get_many: one statement
    # per poll for every pending id, instead of one per task.
    supports_native_join = True

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

        # Where the results live and how they are written: from the app's conf,
        # or from the pickled form of a backend (see __reduce__), which must
        # not fall back on the conf of whatever app is current where it lands.
        self._extended = kwargs.get("extended")
        schemas = kwargs.get("table_schemas", conf.database_table_schemas) or {}
        tablenames = kwargs.get("table_names", conf.database_table_names) or {}

        # Classes of this backend's own, so that configure() below never
        # changes the tables of another app's backend in this process.
        self.task_cls = (TaskExtended if self.extended_result else Task).bound()
        self.taskset_cls = TaskSet.bound()
        self.chord_cls = ChordPart.bound()
        self.watermark_cls = Watermark.bound()

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
        self.task_cls.configure(schema=schemas.get("task"), name=tablenames.get("task"))
        self.taskset_cls.configure(schema=schemas.get("group"), name=tablenames.get("group"))
        # rawbackend's own chord table lives next to the group table unless told otherwise.
        self.chord_cls.configure(
            schema=schemas.get("chord", schemas.get("group")), name=tablenames.get("chord")
        )
        # And the watermark table next to the task table, whose ids it records.
        self.watermark_cls.configure(
            schema=schemas.get("watermark", schemas.get("task")), name=tablenames.get("watermark")
        )
        self.tables = Tables(
            self.dialect, self.task_cls, self.taskset_cls, self.chord_cls, self.watermark_cls
        )
        # Names, looked up at each use: a server variant (MariaDB) may replace
        # the statements once the first connection is made.
        self._store_statement = "store_result_extended" if self.extended_result else "store_result"
        self._get_statement = "get_task_meta_extended" if self.extended_result else "get_task_meta"
        self._get_many_statement = "get_many_extended" if self.extended_result else "get_many"
        self._extended_columns = issubclass(self.task_cls, TaskExtended)
        notify = kwargs.get("notify", conf.get("database_notify", DEFAULT_NOTIFY))
        if not isinstance(notify, bool):
            raise ImproperlyConfigured(f"rawbackend: database_notify must be True or False, got {notify!r}")
        # Stores notify, and waiters listen, only where the dialect can (its
        # SQL files have the notify_ statements) and the user did not say no.
        self.notify = notify and f"notify_{self._store_statement}" in self.tables.sql
        self._notify_asked = notify
        if self.notify:
            self._store_statement = f"notify_{self._store_statement}"

        engine_callback = kwargs.get("engine_callback", conf.database_engine_callback)
        if isinstance(engine_callback, str):
            engine_callback = symbol_by_name(engine_callback)
        if engine_callback is not None and not callable(engine_callback):
            raise ImproperlyConfigured(
                f"database_engine_callback must be callable, got {engine_callback!r}"
            )
        self.lock_timeout = _seconds_or_none("database_lock_timeout", kwargs.get(
            "lock_timeout", conf.get("database_lock_timeout", DEFAULT_LOCK_TIMEOUT)
        ))
        self.session_manager = SessionManager(
            engine_callback=engine_callback, lock_timeout=self.lock_timeout
        )
        # Rows left unfinished expire this long after their first write (None: never).
        self.unfinished_expires = unfinished_setting(kwargs.get(
            "unfinished_expires", conf.get("database_unfinished_expires")
        ))
        self.reconnect_timeout = float(kwargs.get(
            "reconnect_timeout", conf.get("database_reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT)
        ))

        if kwargs.get("create_tables_at_setup", conf.database_create_tables_at_setup) is True:
            self._create_tables()

    @property
    def extended_result(self):
        if self._extended is not None:
            return self._extended
        return self.app.conf.find_value_for_key("extended", "result")

    def as_uri(self, include_password=False):
        """The URL, its password masked unless asked (the worker's banner).
        Celery's goes through kombu's parser, which raises on a URL naming
        several hosts (host1:5432,host2:5432): the worker would not start."""
        return self.url if include_password else sanitize_url(self.url)

    # -- retries: Celery's loop in base.py, our verdicts -----------------------

    def exception_safe_to_retry(self, exc):
        """True for errors that the driver's code says are transient, except
        a lost connection to a server that never answered, and a write
        refused as read-only where no server ever took writes: that is a
        wrong URL (or one leading only to a standby), or a server not up yet,
        and waiting for it would only hide it."""
        verdict = classify(self.dialect.errors, exc)
        if verdict is None:
            return False
        if verdict.read_only:
            return self.session_manager.has_answered(self.url, writable=True)
        return not verdict.disconnect or self.session_manager.has_answered(self.url)

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
        return None if row is None else self._task_from_row(row)

    def _task_from_row(self, row: dict) -> Task:
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
        if not task_id.isascii() and not _encodes(task_id):
            raise ValueError(
                f"rawbackend: task id {task_id!r:.60} is not valid Unicode (it holds a lone "
                "surrogate, which UTF-8 can't encode); nothing was stored"
            )
        if traceback and not traceback.isascii() and not _encodes(traceback):
            # A traceback is for people to read: keep the task's state and
            # result, and show the undecodable bytes escaped.
            traceback = traceback.encode("utf-8", "backslashreplace").decode("utf-8")
        row = self._row(task_id, result, state, traceback, request)
        row["date_done"] = self.dialect.encode_datetime(row["date_done"])
        with self.ResultSession() as session:  # the tables' capacities are known from here
            sql = self.tables.sql[self._store_statement]
            self._fit(task_id, row, sql, self.tables.task_capacity, "task")
            session.execute(sql, row)

    def _fit(self, task_id, row, sql, capacity, kind):
        """Make ``row`` fit its table before the one statement is sent: an
        extended value too large for its column is left out, with a warning;
        a result or traceback too large, or a row larger than the server takes
        in one statement, raises ``ValueTooLarge``. Only columns with a limit
        are looked at (none on rawbackend's own MySQL tables but VARCHARs)."""
        tables = self.tables
        for column, cap in capacity.items():
            value = row.get(column)
            if value is None:
                continue
            size = cap.excess(value)
            if size is None:
                continue
            table = tables.task_table if kind == "task" else tables.group_table
            widen = tables.sql.get(f"widen_{kind}_column_{column}")
            widen = f"widen it: {widen.rstrip(';')}" if widen else WIDEN_LATER
            if column in LEFT_OUT_IF_TOO_LARGE and kind == "task":
                logger.warning(
                    "rawbackend: task %s: %s is %d %s, more than column %s.%s holds (%d %s); "
                    "stored as NULL (state and result are stored). To keep such values, %s",
                    task_id, column, size, cap.unit, table, column, cap.limit, cap.unit, widen,
                )
                row[column] = None
                continue
            raise ValueTooLarge(
                f"rawbackend: {kind} {task_id}: {column} is {size} {cap.unit}, more than column "
                f"{table}.{column} holds ({cap.limit} {cap.unit}); nothing was stored. "
                f"To store such values, {widen}"
            )
        limit = tables.max_statement
        if limit is not None:
            size = self.dialect.statement_size(sql, row, limit)
            if size > limit:
                raise ValueTooLarge(
                    f"rawbackend: {kind} {task_id}: the row is {size} bytes as one statement, "
                    f"more than the {limit} bytes the server takes "
                    f"({tables.max_statement_setting}); nothing was stored. Raise "
                    f"{tables.max_statement_setting} on the server to store such values"
                )

    def _row(self, task_id, result, state, traceback=None, request=None) -> dict:
        """The columns a store writes, as Celery's ``_get_result_meta`` and
        ``_update_result`` would set them, built directly: the backend's own
        settings decide (not the conf of whatever app is current), and no meta
        dict is made only to be taken apart again."""
        children = self.current_task_children(request)
        row = {
            "task_id": task_id,
            "status": state,
            "result": ensure_bytes(self.encode(result)),
            # The instant app.now() gives, without its trip through the app's
            # time zone: it is stored as naive UTC whatever the zone.
            "date_done": datetime.now(timezone.utc) if state in states.READY_STATES else None,
            "traceback": traceback,
            "children": ensure_bytes(self.encode(children)) if children else None,
        }
        if self._extended_columns:
            if request is None:
                row.update(dict.fromkeys(("name", "args", "kwargs", "worker", "retries", "queue")))
            else:
                delivery_info = getattr(request, "delivery_info", None)
                row.update(
                    name=getattr(request, "task", None),
                    args=ensure_bytes(self.encode(getattr(request, "args", None))),
                    kwargs=ensure_bytes(self.encode(getattr(request, "kwargs", None))),
                    worker=getattr(request, "hostname", None),
                    retries=getattr(request, "retries", None),
                    queue=delivery_info.get("routing_key") if delivery_info else None,
                )
            stamps = getattr(request, "stamps", None) or {}
            stamped_headers = getattr(request, "stamped_headers", None) if stamps else None
            # None: the upsert keeps stamps stored earlier.
            row["stamps"] = ensure_bytes(self.encode({
                "stamped_headers": stamped_headers,
                "stamps": {h: v for h, v in stamps.items() if h in stamped_headers},
            })) if stamped_headers else None
        return row

    def encode(self, data):
        """As Celery's ``encode``, with the serializer's encoder called directly:
        kombu's ``dumps`` looks it up and enters a context manager each call.
        Compression, ``raw`` and unknown serializers take Celery's path."""
        entry = None if self.compression else serializers._encoders.get(self.serializer)
        if entry is None:
            return super().encode(data)
        try:
            return entry[2](data)
        except Exception as exc:  # as kombu's dumps: EncodeError, the cause kept
            raise EncodeError(exc) from exc

    def decode(self, payload):
        """As Celery's ``decode``, with the decoder of an accepted content type
        called directly (kombu's ``loads`` checks and wraps each call)."""
        accept = self.accept
        decoder = serializers._decoders.get(self.content_type) if payload else None
        if decoder is None or accept is None or self.content_type not in accept:
            return super().decode(payload)  # kombu raises what it would
        payload = decompress_payload(payload)
        if not payload:
            return super().decode(payload)
        try:
            return decoder(payload)
        except Exception as exc:  # as kombu's loads: DecodeError, the cause kept
            raise DecodeError(exc) from exc

    def _update_result(self, task, result, state, traceback=None, request=None):
        """Set ``task``'s columns as a store would (Celery's name for it)."""
        for column, value in self._row(task.task_id, result, state, traceback, request).items():
            setattr(task, column, value)

    def _get_task_meta_for(self, task_id):
        """Get task meta-data for a task by id."""
        with self.ResultSession() as session:
            row = session.fetch_one(self.tables.sql[self._get_statement], {"task_id": task_id})
        return self._meta_from_row(task_id, row)

    def _meta_from_row(self, task_id, row: dict | None) -> dict:
        """A task's row (None: there is none, PENDING) as its meta: the one
        decoding that get_task_meta and get_many share."""
        if row is None:
            data = self.task_cls(task_id).to_dict()  # PENDING, no result
        else:
            # The row holds the model's columns (its to_dict) and the id; no
            # model is built only to be taken apart again.
            del row["id"]
            row["date_done"] = self.dialect.decode_datetime(row["date_done"])
            data = row
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

    # -- waiting for results -------------------------------------------------

    def wait_for(self, task_id, timeout=None, interval=0.5, no_ack=True, on_interval=None):
        """Wait for a task and return its meta (``AsyncResult.get()`` comes here).

        As Celery's ``SyncBackendMixin.wait_for``, but the first re-check comes
        after a few milliseconds and the pauses grow up to ``interval``
        (``waiting.pauses``), so a quick task is seen as soon as it is stored.

        Raises:
            celery.exceptions.TimeoutError: not ready within ``timeout`` seconds.
        """
        self._ensure_not_eager()
        schedule = pauses(interval, timeout)
        with self._watch((task_id,), timeout) as watch:  # before the first read
            while True:
                meta = self.get_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval:
                    on_interval()
                pause = next(schedule, None)
                if pause is None:
                    raise TimeoutError("The operation timed out.")
                self._wait_for_change((task_id,), pause, watch)

    def get_many(self, task_ids, timeout=None, interval=0.5, no_ack=True,
                 on_message=None, on_interval=None, max_iterations=None,
                 READY_STATES=states.READY_STATES):
        """Yield ``(task_id, meta)`` for each of ``task_ids`` as it becomes ready.

        The native join, with the semantics of Celery's key-value backends:
        ready results in the result cache come first, without a query; then
        each poll fetches every pending id in one statement (per
        ``GET_MANY_CHUNK`` ids), caches and yields the ready ones (calling
        ``on_message`` with each meta), and waits as ``wait_for`` does
        (calling ``on_interval`` before each wait). Missing ids are PENDING
        and not yielded. Stops after ``max_iterations`` waits.

        Raises:
            celery.exceptions.TimeoutError: not all ready within ``timeout`` seconds.
        """
        ids = set()
        for task_id in task_ids:
            task_id = bytes_to_str(task_id)
            if not isinstance(task_id, str):
                raise TypeError(f"rawbackend: get_many: task id {task_id!r:.60} is not a string")
            ids.add(task_id)  # a set of our own: the caller's is left alone
        schedule = pauses(interval, timeout)
        cache = self._cache
        for task_id in list(ids):
            cached = cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield task_id, cached
        iterations = 0
        with self._watch(ids, timeout) as watch:  # before the first poll
            while ids:
                found = self._ready_metas(ids, READY_STATES)
                cache.update(found)
                ids.difference_update(found)
                for task_id, meta in found.items():
                    if on_message is not None:
                        on_message(meta)
                    yield task_id, meta
                if not ids:
                    break
                pause = next(schedule, None)
                if pause is None:
                    raise TimeoutError(f"Operation timed out ({timeout})")
                if on_interval:
                    on_interval()
                self._wait_for_change(ids, pause, watch)
                iterations += 1
                if max_iterations and iterations >= max_iterations:
                    break

    def _ready_metas(self, task_ids, ready_states) -> dict:
        """One poll: the metas of those of ``task_ids`` that are ready. Each
        statement is retried as ``get_task_meta`` is, so a server restart
        during a join is ridden out."""
        pending = list(task_ids)
        found = {}
        for start in range(0, len(pending), GET_MANY_CHUNK):
            chunk = pending[start:start + GET_MANY_CHUNK]
            rows = self._ensure_retryable(
                self._get_many_rows, chunk,
                fallback_exc=partial(BackendGetMetaError, task_id=chunk[0]),
                fallback_msg=f"failed to get the meta of {len(chunk)} tasks",
            )
            for row in rows:
                # Not-ready rows are not decoded. A row whose id was not asked
                # for (MySQL compares ids without case) is left out.
                if row["status"] in ready_states and row["task_id"] in task_ids:
                    found[row["task_id"]] = self._meta_from_row(row["task_id"], row)
        return found

    def _get_many_rows(self, task_ids: list[str]) -> list[dict]:
        params = {"task_ids": self.dialect.encode_ids(task_ids)}
        with self.ResultSession() as session:
            return session.fetch_all(self.tables.sql[self._get_many_statement], params)

    def _wait_for_change(self, task_ids, pause: float, watch: Watch | None = None) -> None:
        """Wait before the next poll for ``task_ids`` (the ids still pending;
        read them during the call only): ``pause`` seconds, or with ``watch``
        (notifications on) until a store of one of them is notified, the
        listener asks for a re-check, or the deadline; while the listener is
        not listening, ``pause`` seconds at most.

        The one place where waiters wait.
        """
        if watch is None:
            time.sleep(pause)
        else:
            watch.wait(pause)

    def _watch(self, task_ids, timeout: float | None):
        """A context in which the process's listener wakes this waiter for
        ``task_ids``: a ``Watch``, or None when notifications are off."""
        if not self.notify:
            return nullcontext()
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = listener_for((self.url, self.tables.sql["notify_listen"]), self._make_listener)
        return listener.watch(task_ids, deadline)

    def _make_listener(self) -> Listener:
        # Only the pool and the SQL go into the listener (it outlives this
        # backend in the process's registry), never the backend itself.
        engine = self.session_manager.get_engine(self.url, **self.engine_options)
        probe_sql = self.tables.sql["notify_probe"]

        def probe(payload: str) -> None:
            # On a connection of its own, closed at once: a pooled one could
            # outlive the pool's dispose() in the listener's hands.
            conn = engine.connect()
            try:
                conn.execute(probe_sql, {"payload": payload})
            finally:
                conn.close()

        return Listener(engine.connect, self.tables.sql, probe,
                        name=f"{engine.name} {self.tables.sql['notify_listen'][len('LISTEN '):]}")

    def task_result_exists(self, task_id):
        """Whether a result exists in the database for ``task_id``."""
        return self._ensure_retryable(self._task_result_exists, task_id=task_id)

    def _task_result_exists(self, task_id):
        with self.ResultSession() as session:
            return session.fetch_one(self.tables.sql["task_result_exists"], {"task_id": task_id}) is not None

    def _forget(self, task_id):
        """Forget about result (and, for a chord's group id, its chord rows)."""
        with self.ResultSession() as session:
            session.execute(self.tables.sql["forget"], {"task_id": task_id})
            session.execute(self.tables.sql["delete_chord"], {"group_id": task_id})

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
            sql = self.tables.sql["save_group"]
            self._fit(group_id, params, sql, self.tables.group_capacity, "group")
            session.execute(sql, params)
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
        """Delete meta-data for group by id, and its chord's rows."""
        with self.ResultSession() as session:
            session.execute(self.tables.sql["delete_group"], {"taskset_id": group_id})
            session.execute(self.tables.sql["delete_chord"], {"group_id": group_id})

    # -- chords --------------------------------------------------------------------
    # Native, with the semantics of Celery's key-value backends (base.py:
    # _apply_chord_incr, on_chord_part_return), and no celery.chord_unlock task
    # polling the header. Each finished part is a row of the chord table, so a
    # part reported twice counts once; the part that finds them all claims the
    # body in SQL, so the body fires once, also when the last two parts finish
    # at the same moment in two processes (both may count them all; one claim wins).

    def apply_chord(self, header_result_args, body, **kwargs):
        """Start a chord: save its header's GroupResult, for the last part to
        join (Celery's base class sends celery.chord_unlock here instead)."""
        self.ensure_chords_allowed()
        header_result = self.app.GroupResult(*header_result_args)
        # The same group id started again (a replayed canvas) starts afresh.
        self._ensure_retryable(self._delete_chord, header_result.id)
        header_result.save(backend=self)

    def on_chord_part_return(self, request, state, result, **kwargs):
        """A part of a chord is done: record it; the part that completes the
        chord joins the header's results and sends the body with them, once."""
        group_id = request.group
        if not group_id:
            return
        _check_chord_id("group", group_id)
        _check_chord_id("part task", request.id)
        progress = self._ensure_retryable(self._add_chord_part, group_id, request.id)
        if progress["settled"]:
            logger.debug("Chord %r: part %r reported after the chord was settled", group_id, request.id)
            return
        if progress["result"] is None:
            logger.error("Chord callback %r raised: the group's result is gone", group_id)
            return self._fail_chord(request, group_id, ChordError(f"GroupResult {group_id} no longer exists"))
        size = request.chord.get("chord_size")
        if size is not None and progress["parts"] < size:
            return  # the header is decoded only when it is needed
        try:
            deps = self._chord_header(progress["result"])
        except Exception as exc:
            logger.exception("Chord %r raised: %r", group_id, exc)
            return self._fail_chord(request, group_id, ChordError(f"Cannot restore group: {exc!r}"))
        if size is None:
            size = len(deps)
        if progress["parts"] < size:
            return
        if progress["parts"] > size:
            logger.warning(
                "Chord %r has %d finished parts, more than its size %d", group_id, progress["parts"], size
            )
        if self._ensure_retryable(self._claim_chord, group_id, uuid.uuid4().hex):
            self._fire_chord(request, group_id, deps)
        # else: another process completed the chord at the same moment, and fires it.

    def _fire_chord(self, request, group_id, deps):
        """Join the header's results and send the body with them (or fail it
        with a ChordError naming the failed part); then end the chord."""
        app = self.app
        callback = maybe_signature(request.chord, app=app)
        join = deps.join_native if deps.supports_native_join else deps.join
        try:
            with allow_join_result():
                ret = join(timeout=app.conf.result_chord_join_timeout, propagate=True)
        except Exception as exc:
            culprit = _culprit(deps)
            reason = repr(exc) if culprit is None else f"Dependency {culprit.id} raised {exc!r}"
            logger.exception("Chord %r raised: %r", group_id, reason)
            self.chord_error_from_stack(callback=callback, exc=_chord_error(reason, exc))
        else:
            try:
                app.amqp._retry_publish(callback.delay, ret)
            except Exception as exc:
                logger.exception("Chord %r raised: %r", group_id, exc)
                self.chord_error_from_stack(
                    callback=callback, exc=_chord_error(f"Callback error: {exc!r}", exc)
                )
        finally:
            self._ensure_retryable(self._end_chord, group_id)

    def _fail_chord(self, request, group_id, error):
        """Fail the chord's body with ``error``, once (the claim decides who)."""
        if not self._ensure_retryable(self._claim_chord, group_id, uuid.uuid4().hex):
            return None
        try:
            # Raised and caught: chord_error_from_stack stores the traceback
            # of the exception being handled, and needs one.
            raise error
        except ChordError:
            return self.chord_error_from_stack(maybe_signature(request.chord, app=self.app), error)
        finally:
            self._ensure_retryable(self._end_chord, group_id)

    def _chord_header(self, payload):
        """The saved GroupResult of a chord's header, from its ``result`` column."""
        return result_from_tuple(self._decode_stored_result(payload), self.app)

    def _add_chord_part(self, group_id, task_id) -> dict:
        """Record a finished part; then the chord's header, parts and state.
        Two statements: the count must see every part committed before it."""
        now = self.dialect.encode_datetime(datetime.now(timezone.utc))
        sql = self.tables.sql
        with self.ResultSession() as session:
            part = {"group_id": group_id, "task_id": task_id, "date_done": now}
            session.execute(sql["add_chord_part"], part)
            progress = session.fetch_one(sql["chord_progress"], {"group_id": group_id})
            assert progress is not None  # an aggregate: always one row
            return progress

    def _claim_chord(self, group_id, token) -> bool:
        """Whether this call won the firing of the chord's body. A claim that
        already exists is ours only if this call made it: a retry after a
        reply that was lost finds its own token there."""
        now = self.dialect.encode_datetime(datetime.now(timezone.utc))
        sql = self.tables.sql
        with self.ResultSession() as session:
            params = {"group_id": group_id, "date_done": now, "fired_by": token}
            if session.execute(sql["claim_chord"], params) == 1:
                return True
            row = session.fetch_one(sql["chord_claimant"], {"group_id": group_id})
        return row is not None and row["fired_by"] == token

    def _end_chord(self, group_id):
        """After the body fired or failed: delete the saved header and the
        part rows, and keep the claim row, so that a part reported late is
        ignored (it would fail the body with "no longer exists" otherwise)."""
        self._cache.pop(group_id, None)
        with self.ResultSession() as session:
            session.execute(self.tables.sql["delete_group"], {"taskset_id": group_id})
            session.execute(self.tables.sql["end_chord"], {"group_id": group_id})

    def _delete_chord(self, group_id):
        """Delete every row of the chord, its claim row too."""
        with self.ResultSession() as session:
            session.execute(self.tables.sql["delete_chord"], {"group_id": group_id})

    # -- expiry ---------------------------------------------------------------------

    def cleanup(self):
        """Delete expired meta-data; and, with ``database_unfinished_expires``,
        rows left unfinished for longer (see rawbackend.expiry)."""
        self._ensure_retryable(self._cleanup)

    def _cleanup(self, **options) -> Report:
        options.setdefault("unfinished_expires", self.unfinished_expires)
        return Cleanup(self, **options).run()

    def __reduce__(self, args=(), kwargs=None):
        kwargs = {} if not kwargs else kwargs
        kwargs.update({
            "dburi": self.url,
            "expires": self.expires,
            "engine_options": self.engine_options,
            # All that says where the results live and how they are encoded, so
            # the copy reads and writes the same rows whichever app is current
            # where it is unpickled; it creates no tables of its own at set-up.
            "table_names": {
                "task": self.task_cls.table_name, "group": self.taskset_cls.table_name,
                "chord": self.chord_cls.table_name, "watermark": self.watermark_cls.table_name,
            },
            "table_schemas": {
                "task": self.task_cls.table_schema, "group": self.taskset_cls.table_schema,
                "chord": self.chord_cls.table_schema,
                "watermark": self.watermark_cls.table_schema,
            },
            "extended": bool(self.extended_result),
            "short_lived_sessions": self.short_lived_sessions,
            "create_tables_at_setup": False,
            "serializer": self.serializer,
            "accept": list(self.accept),
            "reconnect_timeout": self.reconnect_timeout,
            "lock_timeout": self.lock_timeout,
            "unfinished_expires": self.unfinished_expires,
            "notify": self._notify_asked,
        })
        return super().__reduce__(args, kwargs)
