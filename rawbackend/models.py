"""The rows: ``Task``, ``TaskExtended``, ``TaskSet``, and the tables they live in."""
from __future__ import annotations

import hashlib
import logging
import re
import string
from dataclasses import dataclass, fields
from datetime import datetime
from typing import ClassVar, NamedTuple, TypeVar, cast

from celery import states
from celery.exceptions import ImproperlyConfigured

from .dialects import Dialect
from .loader import load_dialect

__all__ = ("Capacity", "ChordPart", "Tables", "Task", "TaskExtended", "TaskSet", "Watermark")

logger = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _check_identifier(kind: str, value: str | None) -> str | None:
    if value is not None and not (isinstance(value, str) and IDENTIFIER.match(value)):
        raise ImproperlyConfigured(
            f"rawbackend: table {kind} {value!r} is not a valid identifier "
            "(letters, digits and underscores, not starting with a digit)"
        )
    return value


ModelT = TypeVar("ModelT", bound="_Model")


# A dataclass with no fields of its own: columns() reads its subclasses' fields.
@dataclass(repr=False, eq=False)
class _Model:
    """What the models share: their table, and ``configure``."""

    __tablename__: ClassVar[str]
    __sequence__: ClassVar[str | None] = None
    table_name: ClassVar[str]
    table_schema: ClassVar[str | None] = None

    @classmethod
    def configure(cls, schema: str | None = None, name: str | None = None) -> None:
        """Use table ``name`` in ``schema`` (None: Celery's default name, no schema)."""
        cls.table_schema = _check_identifier("schema", schema)
        cls.table_name = _check_identifier("name", name) or cls.__tablename__

    @classmethod
    def bound(cls: type[ModelT]) -> type[ModelT]:
        """A subclass of its own, so that one backend's ``configure`` never
        changes another's tables (two apps in one process)."""
        return cast("type[ModelT]", type(cls.__name__, (cls,), {"__module__": cls.__module__}))

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "id")


@dataclass(repr=False, eq=False)
class Task(_Model):
    """Task result/status."""

    __tablename__: ClassVar[str] = "celery_taskmeta"
    __sequence__: ClassVar[str] = "task_id_sequence"
    table_name: ClassVar[str] = "celery_taskmeta"

    task_id: str | None = None
    status: str = states.PENDING
    result: bytes | None = None
    date_done: datetime | None = None
    traceback: str | None = None
    children: bytes | None = None
    id: int | None = None

    def to_dict(self) -> dict:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "result": self.result,
            "traceback": self.traceback,
            "date_done": self.date_done,
            "children": self.children,
        }

    def __repr__(self) -> str:
        return f"<Task {self.task_id} state: {self.status}>"


@dataclass(repr=False, eq=False)
class TaskExtended(Task):
    """For the extended result."""

    name: str | None = None
    args: bytes | None = None
    kwargs: bytes | None = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None
    stamps: bytes | None = None

    def to_dict(self) -> dict:
        task_dict = super().to_dict()
        task_dict.update(
            name=self.name, args=self.args, kwargs=self.kwargs, worker=self.worker,
            retries=self.retries, queue=self.queue, stamps=self.stamps,
        )
        return task_dict


@dataclass(repr=False, eq=False)
class TaskSet(_Model):
    """TaskSet (group) result."""

    __tablename__: ClassVar[str] = "celery_tasksetmeta"
    __sequence__: ClassVar[str] = "taskset_id_sequence"
    table_name: ClassVar[str] = "celery_tasksetmeta"

    taskset_id: str | None = None
    result: bytes | None = None
    date_done: datetime | None = None
    id: int | None = None

    def to_dict(self) -> dict:
        return {"taskset_id": self.taskset_id, "result": self.result, "date_done": self.date_done}

    def __repr__(self) -> str:
        return f"<TaskSet: {self.taskset_id}>"


@dataclass(repr=False, eq=False)
class ChordPart(_Model):
    """A finished part of a chord (rawbackend's own table; Celery has none).

    One row per (group, part task): a part reported twice is one row, so
    counting rows counts distinct parts. The row with ``task_id == ""`` is the
    claim of the body's firing, ``fired_by`` the call that made it.
    """

    # Not celery_*: Celery's backend never reads it, and the name says whose it is.
    __tablename__: ClassVar[str] = "rawbackend_chordmeta"
    table_name: ClassVar[str] = "rawbackend_chordmeta"

    group_id: str | None = None
    task_id: str | None = None
    date_done: datetime | None = None
    fired_by: str | None = None

    def __repr__(self) -> str:
        return f"<ChordPart {self.group_id}: {self.task_id}>"


@dataclass(repr=False, eq=False)
class Watermark(_Model):
    """The task table's largest row id at a moment (rawbackend's own table).

    Rows left unfinished (STARTED, RETRY, ...) have no ``date_done``; a row
    whose id is at most a watermark's ``max_id`` was first written before its
    ``recorded_at``, which gives their age without changing Celery's tables.
    """

    __tablename__: ClassVar[str] = "rawbackend_watermarks"
    table_name: ClassVar[str] = "rawbackend_watermarks"

    task_table: str | None = None  # whose ids: one table may serve several task tables
    recorded_at: datetime | None = None
    max_id: int | None = None

    def __repr__(self) -> str:
        return f"<Watermark {self.task_table}: {self.max_id} at {self.recorded_at}>"


class Capacity(NamedTuple):
    """What a column holds, as the server says: ``limit`` characters or bytes."""

    limit: int
    unit: str  # "characters" (VARCHAR) or "bytes" (BLOB, TEXT)

    def excess(self, value: str | bytes) -> int | None:
        """``value``'s size in ``unit`` when it is more than the column holds, else None."""
        size = len(value)
        if self.unit == "bytes" and isinstance(value, str) and size * 4 > self.limit:
            # Up to 4 bytes a character in UTF-8: encode only when it may matter.
            size = len(value.encode("utf-8", "surrogatepass"))
        return size if size > self.limit else None


CHANNEL_PREFIX = "rawbackend:"
_CHANNEL_SAFE = frozenset(string.ascii_letters + string.digits + "_.-$")


def channel_of(schema: str | None, table: str) -> str:
    """The notification channel of a task table: ``rawbackend:schema.table``,
    or a digest of that when it is longer than an identifier may be (63
    bytes) or holds characters that a quoted name or a literal would need
    escaped."""
    name = f"{schema}.{table}" if schema else table
    channel = CHANNEL_PREFIX + name
    if len(channel) > 63 or not set(name) <= _CHANNEL_SAFE:
        channel = CHANNEL_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()[:40]
    return channel


SLOT_KINDS = ("table", "table_name", "index", "index_name", "sequence", "sequence_name",
              "channel", "channel_name")
KNOWN_SLOTS = frozenset(
    {f"{prefix}_{kind}" for prefix in ("task", "group") for kind in SLOT_KINDS}
    | {f"{prefix}_{kind}" for prefix in ("chord", "watermark") for kind in SLOT_KINDS
       if not kind.startswith(("sequence", "channel"))}
)
REQUIRED = frozenset({
    "store_result", "store_result_extended", "get_task_meta", "get_task_meta_extended",
    "get_many", "get_many_extended",
    "task_result_exists", "forget", "delete_expired_tasks", "save_group", "restore_group",
    "delete_group", "delete_expired_groups", "table_columns", "max_statement",
    "create_chord_table", "add_chord_part", "chord_progress", "claim_chord", "chord_claimant",
    "end_chord", "delete_chord", "delete_expired_chords",
})
# Columns older Celery versions lack, added at set-up when missing.
MIGRATED_COLUMNS = ("children", "name", "args", "kwargs", "worker", "retries", "queue", "stamps")


class Tables:
    """One backend's tables on one dialect (Celery's two, and the chord table
    of rawbackend's own): names, and the SQL rendered for them."""

    def __init__(
        self, dialect: Dialect, task_cls: type[Task], taskset_cls: type[TaskSet],
        chord_cls: type[ChordPart] | None = None, watermark_cls: type[Watermark] | None = None,
    ):
        self.dialect = dialect
        self.task_cls = task_cls
        self.taskset_cls = taskset_cls
        if chord_cls is None:
            chord_cls = ChordPart.bound()
            chord_cls.configure(schema=taskset_cls.table_schema)
        self.chord_cls = chord_cls
        if watermark_cls is None:
            watermark_cls = Watermark.bound()
            watermark_cls.configure(schema=task_cls.table_schema)
        self.watermark_cls = watermark_cls
        self.key = (
            dialect.name, task_cls.table_schema, task_cls.table_name,
            taskset_cls.table_schema, taskset_cls.table_name,
            chord_cls.table_schema, chord_cls.table_name,
            watermark_cls.table_schema, watermark_cls.table_name,
        )
        self._filled = {
            **self._slots("task", task_cls), **self._slots("group", taskset_cls),
            **self._slots("chord", chord_cls), **self._slots("watermark", watermark_cls),
        }
        self.variant: str | None = None
        self.sql: dict[str, str] = self._render(None)
        # Read from the server by create(): the columns with a limit, and the
        # largest statement it takes (None: no limit).
        self.task_capacity: dict[str, Capacity] = {}
        self.group_capacity: dict[str, Capacity] = {}
        self.max_statement: int | None = None
        self.max_statement_setting: str | None = None

    @property
    def task_table(self) -> str:
        """The task table's name as it appears in SQL (quoted, with its schema)."""
        return self._filled["task_table"]

    @property
    def group_table(self) -> str:
        return self._filled["group_table"]

    def slot(self, name: str) -> str:
        """What ``{name}`` is filled with in the SQL (``chord_table``: the quoted table)."""
        return self._filled[name]

    def _render(self, variant: str | None) -> dict[str, str]:
        dialect = self.dialect
        statements = dict(load_dialect(dialect.name, dialect.paramstyle, KNOWN_SLOTS, REQUIRED))
        # The variant's statements first, in its files' order, then those of
        # the variant it refines (galera -> mariadb), then the dialect's own,
        # each adding what the ones before did not replace: where order matters
        # (CREATE SEQUENCE before the table that draws from it, so that a
        # process that sees the tables can use them), the variant's order holds.
        chain = []
        while variant is not None:
            chain.append(variant)
            variant = dialect.variant_bases.get(variant)
        for folder in reversed(chain):
            own = statements
            statements = dict(load_dialect(folder, dialect.paramstyle, KNOWN_SLOTS, frozenset()))
            for name, statement in own.items():
                statements.setdefault(name, statement)
        return {name: st.render(self._filled) for name, st in statements.items()}

    def use_variant(self, variant: str | None) -> None:
        """Use the statements of ``sql/<variant>/`` in place of the dialect's
        own of the same names (None: the dialect's own only)."""
        if variant != self.variant:
            self.sql = self._render(variant)  # one assignment: readers see old or new
            self.variant = variant

    def _slots(self, prefix: str, model: type[_Model]) -> dict[str, str]:
        dialect = self.dialect
        for value in (model.table_schema, model.table_name):
            if value is not None and len(value) > dialect.max_identifier:
                raise ImproperlyConfigured(
                    f"rawbackend: table name {value!r} is longer than the "
                    f"{dialect.max_identifier} characters {dialect.name} allows"
                )
        q = dialect.quote_identifier
        schema = f"{q(model.table_schema)}." if model.table_schema else ""
        index = f"ix_{model.table_name}_date_done"
        slots = {
            f"{prefix}_table": f"{schema}{q(model.table_name)}",
            f"{prefix}_table_name": q(model.table_name),
            f"{prefix}_index": f"{schema}{q(index)}",
            f"{prefix}_index_name": q(index),
            # The table's notification channel: LISTEN takes it quoted,
            # pg_notify() as a string.
            f"{prefix}_channel": q(channel_of(model.table_schema, model.table_name)),
            f"{prefix}_channel_name": f"'{channel_of(model.table_schema, model.table_name)}'",
        }
        if model.__sequence__ is not None:
            sequence = f"{schema}{q(model.__sequence__)}"
            slots[f"{prefix}_sequence_name"] = sequence
            # nextval() takes the sequence's name as a string.
            slots[f"{prefix}_sequence"] = f"'{sequence}'"
        return slots

    def columns(self, session, model: type[_Model]) -> dict[str, Capacity | None]:
        """The table's columns, each with what it holds (None: no limit)."""
        rows = session.fetch_all(
            self.sql["table_columns"], {"schema": model.table_schema, "table": model.table_name}
        )
        return {row["name"]: _capacity(row) for row in rows}

    def create(self, session) -> None:
        """Create what is missing: tables, indexes and sequences, or new columns;
        then read what the columns and the server hold."""
        # Known once connected: MariaDB behind a mysql:// URL has Celery's tables
        # of its own shape (ids from sequences).
        self.use_variant(self.dialect.variant_of(session.connection()))
        task_columns = self.columns(session, self.task_cls)
        group_columns = self.columns(session, self.taskset_cls)
        # Each object on its own, in order (sequence, table, index): what a
        # create that failed half-way left missing is made on the next try.
        sequences = self._create_sequences(session, task_columns, group_columns)
        changed = False
        if not task_columns or not group_columns:
            for name, sql in self.sql.items():
                if name.startswith("create_") and name not in sequences:
                    session.execute(sql)
            changed = True
            # An old task table next to a missing group table: the group
            # table is made above, and the task table still needs its columns.
        elif not self.columns(session, self.chord_cls):
            # Celery's tables (or an older rawbackend's), without the chord
            # table: add it alone, Celery's tables are left as they are.
            self._create_chord_table(session)
        for column in MIGRATED_COLUMNS if task_columns else ():
            if column not in task_columns:
                session.execute(self.sql[f"add_task_column_{column}"])
                changed = True
        if changed:
            # Read back, not assumed: another process (Celery's backend) may
            # have made the tables first, with its smaller columns.
            task_columns = self.columns(session, self.task_cls)
            group_columns = self.columns(session, self.taskset_cls)
        limit = session.fetch_one(self.sql["max_statement"]) or {}
        self.task_capacity = {k: v for k, v in task_columns.items() if v is not None}
        self.group_capacity = {k: v for k, v in group_columns.items() if v is not None}
        self.max_statement = None if limit.get("max_bytes") is None else int(limit["max_bytes"])
        self.max_statement_setting = limit.get("setting")

    def _create_sequences(self, session, task_columns, group_columns) -> set[str]:
        """Create the missing sequences where the statements can check for them
        (PostgreSQL, MariaDB): one left out by a create that failed half-way is
        made then, and starts past the ids of a table that already has rows.
        The names of the create statements handled here."""
        if "sequence_exists" not in self.sql:
            return set()  # no sequences on this dialect
        handled = set()
        for prefix, model, columns in (("task", self.task_cls, task_columns),
                                       ("group", self.taskset_cls, group_columns)):
            create = f"create_{prefix}_sequence"
            handled.add(create)
            params = {"schema": model.table_schema, "sequence": model.__sequence__}
            if session.fetch_one(self.sql["sequence_exists"], params):
                continue
            session.execute(self.sql[create])
            if columns:
                start = session.fetch_one(self.sql[f"restart_{prefix}_sequence_at"]) or {}
                session.execute(self.sql[f"restart_{prefix}_sequence"], {"start": start["start"]})
        return handled

    def _create_chord_table(self, session) -> None:
        """Add the chord table next to existing tables. A user who may not
        create tables (a reader of results) still gets a working backend:
        only chords need the table, and they fail naming it."""
        try:
            for name, sql in self.sql.items():
                if name.startswith("create_chord_"):
                    session.execute(sql)
        except Exception as exc:
            if self.columns(session, self.chord_cls):
                return  # another process made it meanwhile
            logger.warning(
                "rawbackend: could not create the chord table %s (%s); results are stored "
                "and read as usual, but chords need it: create it with %s",
                self._filled["chord_table"], exc, self.sql["create_chord_table"].rstrip(";"),
            )


def _capacity(row: dict) -> Capacity | None:
    if row.get("max_chars") is not None:
        return Capacity(int(row["max_chars"]), "characters")
    if row.get("max_bytes") is not None:
        return Capacity(int(row["max_bytes"]), "bytes")
    return None
