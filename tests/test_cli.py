"""The ``rawbackend`` command's frame: where the database comes from, exit
codes, errors; and ``schema``. Through the installed console script."""
from __future__ import annotations

import textwrap

from conftest import run_command


def test_no_command_prints_usage_and_exits_2():
    done = run_command()
    assert done.returncode == 2
    assert "usage: rawbackend" in done.stderr


def test_help_lists_the_commands_and_exit_codes():
    done = run_command("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "schema" in text and "Exit codes: 0 ok, 1 a problem found, 2 usage or connection error" in text


def test_no_database_given_is_a_usage_error(monkeypatch):
    done = run_command("schema", env={"RAWBACKEND_URL": ""})
    assert done.returncode == 2
    assert "no database: give --url URL, -A APP, or set $RAWBACKEND_URL" in done.stderr


def test_unreachable_server_is_named_without_its_password():
    done = run_command("schema", "--url", "mysql://root:s3cret-pw@127.0.0.1:1/test")
    assert done.returncode == 2
    assert "could not connect to the mysql server at 127.0.0.1:1" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_malformed_url_is_a_usage_error_without_its_password():
    done = run_command("schema", "--url", "postgresql://u:s3cret-pw@host:notaport/db")
    assert done.returncode == 2
    assert "malformed URL" in done.stderr and "s3cret-pw" not in done.stderr


def test_not_a_database_url():
    done = run_command("--url", "redis://localhost:6379/0", "schema")
    assert done.returncode == 2
    assert "unknown scheme 'redis'" in done.stderr


def test_schema_follows_the_apps_table_names_and_schemas(db, tmp_path):
    (tmp_path / "proj.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        app = Celery("proj")
        app.conf.result_backend = {"rawdb+" + db.url!r}
        app.conf.update({db.conf()!r})
    """))
    done = run_command("-A", "proj", "schema", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("CREATE TABLE") == 4
    for table in (db.task_table, db.group_table, db.chord_table, db.watermark_table):
        assert table in done.stdout
    if db.schema:
        assert f'"{db.schema}"."{db.task_table}"' in done.stdout
    # Run as a DBA would, the DDL gives tables that a backend, forbidden to
    # create any, stores into and reads from.
    import sqlparse

    for statement in sqlparse.split(done.stdout):
        if sqlparse.format(statement, strip_comments=True).strip():
            db.query(statement)
    backend = db.backend(database_create_tables_at_setup=False)
    backend.store_result("id-1", 42, "SUCCESS")
    assert backend.get_task_meta("id-1")["result"] == 42


def test_an_app_that_cannot_be_loaded(tmp_path):
    done = run_command("-A", "no_such_project", "schema", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot load the Celery app 'no_such_project'" in done.stderr


def test_mysql_variant_asked_of_the_server_or_given():
    mysql = run_command("schema", "--url", "mysql://nobody@127.0.0.1:1/x", "--variant", "none")
    mariadb = run_command("schema", "--url", "mysql://nobody@127.0.0.1:1/x", "--variant", "mariadb")
    assert mysql.returncode == mariadb.returncode == 0
    assert "CREATE SEQUENCE" not in mysql.stdout and "CREATE SEQUENCE" in mariadb.stdout
    bad = run_command("schema", "--url", "sqlite:///x.db", "--variant", "mariadb")
    assert bad.returncode == 2 and "sqlite URLs take 'none'" in bad.stderr
