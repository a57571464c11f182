"""The SQL loader: named statements from files, every mistake caught at load with file:line."""
from __future__ import annotations

import re

import pytest

from rawbackend.dialects import DIALECTS
from rawbackend.loader import SQLFileError, load_folder, parse_file, sql_root
from rawbackend.models import KNOWN_SLOTS, REQUIRED

SLOTS = frozenset({"task_table"})


def write(tmp_path, text, name="q.sql"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_statements_with_name_doc_params_and_slots(tmp_path):
    path = write(tmp_path, (
        "-- A preamble comment is allowed.\n"
        "\n"
        "-- name: store\n"
        "-- Store one row.\n"
        "-- why: a dialect note, not part of the doc\n"
        "INSERT INTO {task_table} (a, b) VALUES (%(a)s, %(b)s);\n"
        "\n"
        "-- name: read\n"
        "-- Read one row.\n"
        "SELECT a FROM {task_table} WHERE a = %(a)s\n"
    ))
    store, read = parse_file(path, "pyformat", SLOTS)
    assert (store.name, store.doc, store.line) == ("store", "Store one row.", 3)
    assert store.params == {"a", "b"}
    assert store.slots == {"task_table"}
    assert store.render({"task_table": '"t"'}) == 'INSERT INTO "t" (a, b) VALUES (%(a)s, %(b)s)'
    assert (read.name, read.line) == ("read", 8)
    assert read.render({"task_table": "x"}) == "SELECT a FROM x WHERE a = %(a)s"


@pytest.mark.parametrize("text, line, name, reason", [
    ("-- name: a\n-- A.\nSELECT 1;\n-- name: a\n-- Again.\nSELECT 2;\n", 4, "a", "duplicate name"),
    ("SELECT 1;\n", 1, "?", "text outside"),
    ("-- name: a\n-- A.\nSELECT 1;\nSELECT 2;\n", 4, "?", "text outside"),
    ("-- name: a\n-- A.\n;\n", 1, "a", "empty body"),
    ("-- name: a\n-- A.\n-- name: b\n-- B.\nSELECT 1;\n", 1, "a", "empty body"),
    ("-- name: a\n-- A.\nSELECT * FROM {nope};\n", 3, "a", r"unknown slot \{nope\}"),
    ("-- name: a\n-- A.\nSELECT * FROM {task_table;\n", 3, "a", "unclosed"),
    ("-- name: a\n-- A.\nSELECT :x;\n", 3, "a", "placeholder :x is not in this driver's style"),
    ("-- name: a\nSELECT 1;\n", 1, "a", "one-line description"),
    ("-- name: not-an-identifier\n-- A.\nSELECT 1;\n", 1, "not-an-identifier", "identifier"),
])
def test_malformed_files_fail_at_load_with_file_line_name(tmp_path, text, line, name, reason):
    write(tmp_path, text)
    with pytest.raises(SQLFileError, match=rf"^q\.sql:{line} {re.escape(name)}: .*{reason}"):
        load_folder(tmp_path, "pyformat", SLOTS, frozenset())


def test_named_style_rejects_pyformat(tmp_path):
    write(tmp_path, "-- name: a\n-- A.\nSELECT %(x)s;\n")
    with pytest.raises(SQLFileError, match=r"q\.sql:3 a: placeholder %\(x\)s"):
        load_folder(tmp_path, "named", SLOTS, frozenset())


def test_missing_required_statement(tmp_path):
    write(tmp_path, "-- name: a\n-- A.\nSELECT 1;\n")
    with pytest.raises(SQLFileError, match="required statement missing.*b"):
        load_folder(tmp_path, "pyformat", SLOTS, frozenset({"a", "b"}))


def test_duplicate_across_files_names_both(tmp_path):
    write(tmp_path, "-- name: a\n-- A.\nSELECT 1;\n", "one.sql")
    write(tmp_path, "\n\n-- name: a\n-- A.\nSELECT 1;\n", "two.sql")
    with pytest.raises(SQLFileError, match=r"two\.sql:3 a: duplicate name \(first at one\.sql:1\)"):
        load_folder(tmp_path, "pyformat", SLOTS, frozenset())


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_shipped_sql_loads_with_the_same_names_everywhere(dialect):
    statements = load_folder(sql_root() / dialect.name, dialect.paramstyle, KNOWN_SLOTS, REQUIRED)
    assert REQUIRED <= statements.keys()
    sqlite = load_folder(sql_root() / "sqlite", "named", KNOWN_SLOTS, REQUIRED)
    # Schema creation may take more statements on one dialect (PostgreSQL's
    # sequences), widening columns only where columns have limits,
    # notifying stores only where the server notifies (PostgreSQL), and the
    # lock budget is a statement only where no connect keyword takes it;
    # sequences are looked at and restarted only where there are some, and an
    # index dropped only where a failed build leaves it invalid (PostgreSQL);
    # everything else has the same names everywhere.
    own = ("create_", "widen_", "notify_", "sequence_", "restart_", "drop_")
    assert {n for n in statements if not n.startswith(own)} == {
        n for n in sqlite if not n.startswith(own)
    } | ({"set_lock_timeout"} if dialect.lock_timeout_param is None else set())


def test_variant_creates_sequences_before_the_tables_that_use_them():
    """MariaDB's CREATEs run in sql/mariadb/'s order: a process that sees the
    tables made by another (and so skips creating) must find their sequences
    too. In the dialect's order, tables came first, and a store racing the
    creation failed with 1146 "Table 'task_id_sequence' doesn't exist"."""
    from rawbackend.dialects import MYSQL
    from rawbackend.models import Tables, Task, TaskSet

    tables = Tables(MYSQL, Task.bound(), TaskSet.bound())
    tables.use_variant("mariadb")
    creates = [name for name in tables.sql if name.startswith("create_")]
    assert creates == ["create_task_sequence", "create_task_table",
                       "create_group_sequence", "create_group_table",
                       "create_chord_table", "create_watermark_table"]  # sql/mysql/'s: no sequence


def test_galera_refines_mariadb_and_keeps_sequences_first():
    """A Galera node's statements are sql/galera/'s, then sql/mariadb/'s, then
    sql/mysql/'s: its own sequences (INCREMENT BY 0), MariaDB's inserts that
    draw from them, reads with the causality check, MySQL's chords."""
    from rawbackend.dialects import MYSQL
    from rawbackend.models import Tables, Task, TaskSet

    tables = Tables(MYSQL, Task.bound(), TaskSet.bound())
    tables.use_variant("galera")
    creates = [name for name in tables.sql if name.startswith("create_")]
    assert creates == ["create_task_sequence", "create_group_sequence",
                       "create_task_table", "create_group_table", "create_chord_table",
                       "create_watermark_table"]
    assert "INCREMENT BY 0" in tables.sql["create_task_sequence"]
    assert "NEXTVAL" in tables.sql["store_result"]  # sql/mariadb/'s
    assert "wsrep_sync_wait" not in tables.sql["store_result"]
    for read in ("get_task_meta", "get_task_meta_extended", "get_many", "get_many_extended",
                 "task_result_exists", "restore_group", "chord_progress", "chord_claimant"):
        assert tables.sql[read].startswith("SET STATEMENT wsrep_sync_wait = 1 FOR\nSELECT"), read
    assert tables.sql["add_chord_part"].startswith("INSERT")  # sql/mysql/'s
