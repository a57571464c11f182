"""What this version's tables need, how the live ones differ, and what fixes them.

One description serves both commands: ``rawbackend check`` reports the
differences, ``rawbackend migrate`` runs their fixes. The description is
data: ``NEEDED`` lists the tables (their columns and types are the models'
dataclass fields), ``CHARACTERS`` the sizes of the VARCHAR columns; a table
with a date_done column needs its index, and a model with a sequence needs
it where the dialect's SQL creates one. The live schema is read with the statements of
``sql/<dialect>/migrate.sql``, and every fix is a statement there too, found
by name: ``create_<table>_*``, ``add_<table>_column_<column>``,
``add_<table>_index``, ``widen_<table>_table``...
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from datetime import datetime

from .backend import LEFT_OUT_IF_TOO_LARGE
from .models import Capacity, ChordPart, Tables, Task, TaskExtended, TaskSet, _Model

__all__ = ("Needed", "NEEDED", "Difference", "differences", "fix_params", "table_size")


@dataclass(frozen=True)
class Needed:
    """A table this version needs."""

    kind: str  # its slot prefix in sql/ (task_table, add_task_index, ...)
    model: type[_Model]  # its columns and what they hold: the dataclass's fields
    configured: str  # the Tables attribute whose class has its configured name and schema
    purpose: str  # what fails without it


# Adding a table of rawbackend's own is adding a row here (and its create_
# statements to sql/*/schema.sql).
NEEDED: tuple[Needed, ...] = (
    Needed("task", TaskExtended, "task_cls", "no task result can be stored or read"),
    Needed("group", TaskSet, "taskset_cls", "no group result can be saved or restored"),
    Needed("chord", ChordPart, "chord_cls", "chords fail: rawbackend counts their parts there"),
)

# The VARCHAR(n) columns rawbackend (and Celery) create, n characters. Every
# other column holds any size: BYTEA/TEXT, LONGBLOB/LONGTEXT, SQLite's any.
# 155 for name, worker and queue is Celery's size too: a longer value is
# left out with a warning (models.Capacity), so 155 is not "too small".
CHARACTERS = {
    "task_id": 155, "taskset_id": 155, "group_id": 155, "status": 50,
    "name": 155, "worker": 155, "queue": 155, "fired_by": 36,
}

# What table_columns' ``kind`` says for each Python type a model holds.
KINDS = {int: "integer", str: "string", bytes: "bytes", datetime: "datetime"}

# Why a missing task column matters, where it is not the table's purpose.
COLUMN_PURPOSE = {
    "children": "every store writes it: no task result can be stored",
    **{column: "every store with result_extended writes it: those stores fail"
       for column in TaskExtended.columns() if column not in Task.columns()},
}


@dataclass(frozen=True)
class Difference:
    """One way the live schema differs from what this version needs."""

    what: str  # "missing table", "missing column", "too small column", ...
    where: str  # the table, column or sequence, as SQL names it
    why: str  # what goes wrong because of it
    fix: tuple[str, ...]  # the statements (by name) that migrate runs; () none known
    rewrite: bool = False  # the fix rewrites the table: migrate runs it only if told
    table: str = ""  # the table's kind (task, group, chord)

    def __str__(self) -> str:
        return f"{self.what} {self.where}: {self.why}"

    @property
    def action(self) -> str:
        """What its fix does, in words."""
        return f"{ACTIONS[self.what]} {self.where}"


ACTIONS = {
    "missing table": "create table",
    "missing sequence": "create sequence",
    "missing column": "add column",
    "wrong type": "convert column",
    "too small column": "widen column",
    "missing index": "create the index on",
    "invalid index": "rebuild the index on",
}


def differences(session, tables: Tables) -> list[Difference]:
    """Every difference between the live schema and ``NEEDED``, rewrites last."""
    found: list[Difference] = []
    for needed in NEEDED:
        found += _table_differences(session, tables, needed)
    return sorted(found, key=lambda d: d.rewrite)  # stable: the rest keep their order


def _table_differences(session, tables: Tables, needed: Needed) -> list[Difference]:
    sql, kind = tables.sql, needed.kind
    model = getattr(tables, needed.configured)
    where = tables.slot(f"{kind}_table")
    columns = _live_columns(session, sql, model)
    if not columns:
        creates = tuple(name for name in sql if name.startswith(f"create_{kind}_"))
        return [Difference("missing table", where, needed.purpose, creates, table=kind)]

    found: list[Difference] = []
    sequence = model.__sequence__
    if sequence is not None and f"create_{kind}_sequence" in sql:
        present = session.fetch_one(
            sql["sequence_exists"], {"schema": model.table_schema, "sequence": sequence}
        )
        if present is None:
            found.append(Difference(
                "missing sequence", tables.slot(f"{kind}_sequence_name"),
                f"the ids of {where}'s new rows come from it: {needed.purpose}",
                (f"create_{kind}_sequence", f"restart_{kind}_sequence"), table=kind,
            ))

    hints = typing.get_type_hints(needed.model)
    for field in fields(needed.model):
        name = field.name
        live = columns.get(name)
        column = f"{where}.{name}"
        if live is None:
            fix = f"add_{kind}_column_{name}"
            why = (kind == "task" and COLUMN_PURPOSE.get(name)) or needed.purpose
            found.append(Difference("missing column", column, why,
                                    (fix,) if fix in sql else (), table=kind))
            continue
        wanted = _kind_of(hints[name])
        if live["kind"] != wanted:
            found.append(Difference(
                "wrong type", column,
                f"it is {live['type']}, rawbackend reads and writes {wanted} there",
                (), table=kind,
            ))
            continue
        capacity = live["capacity"]
        if _too_small(capacity, CHARACTERS.get(name)):
            fix = f"widen_{kind}_table"
            fate = "is left out" if kind == "task" and name in LEFT_OUT_IF_TOO_LARGE else "is refused"
            found.append(Difference(
                "too small column", column,
                f"it holds at most {capacity.limit:,} {capacity.unit} ({live['type']}), "
                f"rawbackend's {_size_words(name)}: a larger value {fate}",
                (fix,) if fix in sql else (), rewrite=fix in sql, table=kind,
            ))

    if "date_done" not in hints:
        return found  # rows that never expire by date: no index to find them
    indexes = session.fetch_all(
        sql["date_done_indexes"], {"schema": model.table_schema, "table": model.table_name}
    )
    if not indexes:
        found.append(Difference(
            "missing index", f"{where} (date_done)",
            "cleanup() reads the whole table to find expired rows",
            (f"add_{kind}_index",), table=kind,
        ))
    elif not any(_truthy(row["valid"]) for row in indexes):
        found.append(Difference(
            "invalid index", f"{where} (date_done)",
            f"{indexes[0]['name']} is marked invalid (a concurrent build failed): "
            "it slows every write and is never used",
            (f"drop_{kind}_index", f"add_{kind}_index"), table=kind,
        ))
    return found


def _live_columns(session, sql: dict[str, str], model: type[_Model]) -> dict[str, dict]:
    rows = session.fetch_all(
        sql["table_columns"], {"schema": model.table_schema, "table": model.table_name}
    )
    columns = {}
    for row in rows:
        capacity = None
        if row.get("max_chars") is not None:
            capacity = Capacity(int(row["max_chars"]), "characters")
        elif row.get("max_bytes") is not None:
            capacity = Capacity(int(row["max_bytes"]), "bytes")
        columns[row["name"]] = {"capacity": capacity, "type": row["type"], "kind": row["kind"]}
    return columns


def _kind_of(hint) -> str:
    held = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return KINDS[held[0]]


def _too_small(capacity: Capacity | None, characters: int | None) -> bool:
    if capacity is None:
        return False  # no limit
    if characters is None:
        return True  # rawbackend's is unlimited
    return capacity.unit != "characters" or capacity.limit < characters


def _size_words(column: str) -> str:
    characters = CHARACTERS.get(column)
    return f"holds {characters} characters" if characters else "has no limit"


def _truthy(value) -> bool:
    return value not in (None, 0, False, "0")


def fix_params(session, tables: Tables, statement: str) -> dict | None:
    """The parameters a fix statement takes: a sequence restarts after its
    table's largest id (a new one would start at 1, on ids already taken)."""
    if statement.startswith("restart_"):
        row = session.fetch_one(tables.sql[f"{statement}_at"]) or {}
        return {"start": int(row.get("start") or 1)}
    return None


def table_size(session, tables: Tables, kind: str) -> tuple[int, int] | None:
    """About how many rows and bytes a table holds, where the server says cheaply."""
    statement = tables.sql.get("widen_estimate")
    if statement is None:
        return None
    model = getattr(tables, next(n.configured for n in NEEDED if n.kind == kind))
    row = session.fetch_one(statement, {"schema": model.table_schema, "table": model.table_name})
    if row is None:
        return None
    return int(row["row_estimate"] or 0), int(row["bytes"] or 0)
