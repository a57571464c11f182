"""Expiry: what ``cleanup()`` deletes, in batches that never keep a store
waiting long; and rows that never finish, aged by watermarks.

A row left unfinished (STARTED, RETRY, RECEIVED, PENDING) has no
``date_done``, as Celery writes it, so ``result_expires`` never removes it.
Its age comes from the id it got at its first write: each cleanup records a
watermark, the task table's largest id with the time, in rawbackend's own
table; a row whose id is at most a watermark's was first written before that
watermark's time. So a row's age is known to within the spacing of the
watermarks (the cleanup interval), counted from its first write.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from celery.exceptions import ImproperlyConfigured

from .errors import classify
from .session import Session

__all__ = ("Cleanup", "Report", "age_bounds", "unfinished_setting", "utc_now")

logger = logging.getLogger(__name__)

# How long watermarks are kept when no unfinished age is set: turning the
# setting on later finds a month of history, not nothing.
WATERMARKS_KEPT = timedelta(days=30)
NO_ID_LIMIT = 2 ** 62  # above any id: no watermark is stale
# Rows of each kind, in the order cleanup deletes them: the statement that
# deletes a batch, and the one that counts what it would delete.
STEPS = (
    ("tasks", "delete_expired_tasks", "count_expired_tasks"),
    ("groups", "delete_expired_groups", "count_expired_groups"),
    ("chords", "delete_expired_chords", "count_expired_chords"),
    ("unfinished", "delete_unfinished_tasks", "count_unfinished_tasks"),
)
# A progress callback: (kind, rows done, rows in all or None).
Progress = Callable[[str, int, "int | None"], None]


def utc_now() -> datetime:
    """Now, as naive UTC: how every dialect stores its times."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def unfinished_setting(value) -> timedelta | None:
    """``database_unfinished_expires`` as a timedelta (None: off)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = math.nan
    if not seconds >= 0 or math.isinf(seconds):
        raise ImproperlyConfigured(
            "rawbackend: database_unfinished_expires must be a number of seconds >= 0 or a "
            f"timedelta (None or 0: unfinished rows never expire), got {value!r}"
        )
    return timedelta(seconds=seconds) or None


def age_bounds(watermarks: list[tuple[datetime, int]], row_id: int,
               now: datetime) -> tuple[timedelta | None, timedelta | None]:
    """How old the row with ``row_id`` is at least and at most, from the
    watermarks (oldest first): written before the first that covers its id,
    after the last that does not. None: no watermark says."""
    at_least = at_most = None
    for recorded_at, max_id in watermarks:
        if max_id >= row_id:
            at_least = now - recorded_at
            break
        at_most = now - recorded_at
    return at_least, at_most


@dataclass
class Report:
    """What one cleanup deleted (or, in a dry run, would delete), by kind."""

    rows: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    # The watermark unfinished rows were aged by: rows with ids up to max_id
    # were first written before recorded_at. None: none old enough, or off.
    unfinished_before: datetime | None = None
    unfinished_max_id: int | None = None


class Cleanup:
    """One run of cleanup(): expired results (``result_expires``), and
    unfinished rows older than ``unfinished_expires``, in batches.

    Each batch is one statement, its own short transaction (connections run in
    autocommit), so a store running meanwhile waits for one batch at most.
    """

    def __init__(self, backend, *, unfinished_expires: timedelta | None = None,
                 dry_run: bool = False, totals: bool = False, progress: Progress | None = None,
                 open_session: Callable[[], Session] | None = None, now: datetime | None = None):
        self.backend = backend
        self.tables = backend.tables
        self.dialect = backend.dialect
        self.unfinished_expires = unfinished_expires
        self.dry_run = dry_run
        self.totals = totals or dry_run  # counting is all a dry run does
        self.progress = progress
        self.open_session = open_session or backend.ResultSession
        self.now = now or utc_now()

    @property
    def task_table(self) -> str:
        """The task table as watermarks name it: ``schema.table`` or ``table``."""
        task_cls = self.tables.task_cls
        schema = task_cls.table_schema
        return f"{schema}.{task_cls.table_name}" if schema else task_cls.table_name

    def run(self) -> Report:
        report = Report(dry_run=self.dry_run)
        encode = self.dialect.encode_datetime
        expires = self.backend.expires
        if expires and not isinstance(expires, timedelta):
            expires = timedelta(seconds=expires)
        if not expires and self.unfinished_expires is None:
            return report  # nothing ever expires: nothing is written either
        with self.open_session() as session:
            watermark = self._watermarks(session)
            params: dict[str, dict | None] = dict.fromkeys(("tasks", "groups", "chords"))
            if expires:  # result_expires None or 0: results never expire
                cutoff = {"cutoff": encode(self.now - expires)}
                params.update(tasks=cutoff, groups=cutoff)
                if self.tables.columns(session, self.tables.chord_cls):
                    params["chords"] = cutoff  # Celery's tables may have no chord table
            if watermark is not None:
                report.unfinished_before, report.unfinished_max_id = watermark
                params["unfinished"] = {"max_id": watermark[1]}
            for kind, delete, count in STEPS:
                step = params.get(kind)
                if step is None:
                    continue
                total = None
                if self.totals:
                    counted = session.fetch_one(self.tables.sql[count], step) or {}
                    total = int(counted.get("n") or 0)
                    self._report(kind, 0, total)
                if self.dry_run:
                    report.rows[kind] = total or 0
                    continue
                done = 0
                for done in self._batches(session, self.tables.sql[delete], step):
                    self._report(kind, done, total)
                report.rows[kind] = done
        return report

    def _report(self, kind: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(kind, done, total)

    def _batches(self, session: Session, sql: str, params: dict) -> Iterator[int]:
        """Run the deleting ``sql`` until a batch comes back short; after
        each batch, the rows deleted so far."""
        plan = self.dialect.cleanup
        size, done = plan.first or plan.rows, 0
        rates: deque[float] = deque(maxlen=5)
        while True:
            started = time.monotonic()
            rows = session.execute(sql, {**params, "batch": size})
            held = time.monotonic() - started
            done += rows
            yield done
            if rows < size:
                return
            if plan.seconds:
                # Sized to hold the lock about plan.seconds, at the best rate of
                # the last batches: a batch's time includes waiting for a store
                # to finish, which says nothing of how fast rows go. At most
                # doubling, so that one quick batch can't overshoot.
                rates.append(rows / held if held > 0 else math.inf)
                wanted = max(rates) * plan.seconds
                size = int(max(plan.least, min(plan.rows, 2 * size, wanted)))
            pause = plan.pause_after(held)
            if pause:
                time.sleep(pause)  # the lock is free: a waiting store gets in

    def _watermarks(self, session: Session) -> tuple[datetime, int] | None:
        """Record a watermark (not in a dry run), prune those no longer
        needed; the newest one old enough to age unfinished rows by, or None."""
        tables, sql, encode = self.tables, self.tables.sql, self.dialect.encode_datetime
        if not tables.columns(session, tables.watermark_cls) and (
            self.dry_run or not self._create_watermark_table(session)
        ):
            return None
        key = {"task_table": self.task_table}
        if not self.dry_run:
            row = session.fetch_one(sql["task_max_id"])
            max_id = row["max_id"] if row else None
            if max_id is not None:
                session.execute(sql["record_watermark"],
                                {**key, "recorded_at": encode(self.now), "max_id": int(max_id)})
            # Every watermark older than the one the longest age needs is
            # dominated by it; and one above today's largest id is stale.
            keep = self._watermark_before(session, self.unfinished_expires or WATERMARKS_KEPT)
            session.execute(sql["prune_watermarks"], {
                **key, "before": encode(keep[0] if keep else datetime(1970, 1, 1)),
                # An empty table says nothing of its ids: its watermarks stay.
                "max_id": NO_ID_LIMIT if max_id is None else int(max_id),
            })
        if self.unfinished_expires is None:
            return None
        return self._watermark_before(session, self.unfinished_expires)

    def _watermark_before(self, session: Session, age: timedelta) -> tuple[datetime, int] | None:
        row = session.fetch_one(self.tables.sql["watermark_before"], {
            "task_table": self.task_table, "cutoff": self.dialect.encode_datetime(self.now - age),
        })
        if row is None:
            return None
        return self.dialect.decode_datetime(row["recorded_at"]), int(row["max_id"])

    def _create_watermark_table(self, session: Session) -> bool:
        """Add the watermark table next to existing tables (Celery's, or an
        older rawbackend's). Without the right to, results still expire;
        unfinished rows wait for the table, which the warning names."""
        sql = self.tables.sql["create_watermark_table"]
        try:
            session.execute(sql)
        except Exception as exc:
            if classify(self.dialect.errors, exc) is not None:
                raise  # a lost connection or a lock timeout: cleanup() retries
            if self.tables.columns(session, self.tables.watermark_cls):
                return True  # another process made it meanwhile
            logger.warning(
                "rawbackend: could not create the watermark table (%s); expired results are "
                "deleted as usual, but unfinished rows can only expire once it exists: create "
                "it with %s", exc, sql.rstrip(";"),
            )
            return False
        return True
