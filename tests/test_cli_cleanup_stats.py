"""``rawbackend cleanup`` and ``rawbackend stats`` through the installed console
script, on every dialect: what they print, what they delete, their exit codes."""
from __future__ import annotations

import json
import textwrap
import uuid
from datetime import timedelta

import pytest
from celery import states

from conftest import run_command
from rawbackend.cli.cleanup import duration
from rawbackend.expiry import utc_now


def tid() -> str:
    return uuid.uuid4().hex


def task_ids(db) -> set[str]:
    return {r[0] for r in db.query(f"SELECT task_id FROM {db.qualified(db.task_table)}")}


@pytest.fixture
def project(db, tmp_path):
    """A Celery project on the test's tables, as `-A proj` loads it; its
    backend, with one expired, one fresh and one old unfinished row."""
    (tmp_path / "proj.py").write_text(textwrap.dedent(f"""
        from celery import Celery
        app = Celery("proj")
        app.conf.result_backend = {"rawdb+" + db.url!r}
        app.conf.update({db.conf()!r})
    """))
    backend = db.backend()
    backend.store_result("unfinished", None, states.STARTED)
    backend._cleanup(now=utc_now() - timedelta(hours=3))  # a watermark, 3 hours ago
    backend.mark_as_done("fresh", 1)
    backend.mark_as_done("expired", 1)
    when = backend.dialect.encode_datetime(utc_now() - timedelta(days=3))
    mark = "?" if db.dialect == "sqlite" else "%s"
    db.query(f"UPDATE {db.qualified(db.task_table)} SET date_done = {mark} WHERE task_id = 'expired'",
             (when,))
    return tmp_path


def test_cleanup_dry_run_counts_and_deletes_nothing(db, project):
    done = run_command("-A", "proj", "cleanup", "--dry-run", "--unfinished-older-than", "2h",
                       cwd=project)
    assert done.returncode == 0, done.stderr
    assert "would delete 1 expired task rows" in done.stdout
    assert "would delete 1 unfinished task rows" in done.stdout
    assert task_ids(db) == {"unfinished", "fresh", "expired"}
    assert done.stderr == ""  # not a terminal: no progress bar


def test_cleanup_deletes_expired_and_old_unfinished_rows(db, project):
    done = run_command("-A", "proj", "cleanup", "--unfinished-older-than", "2h", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 expired task rows" in done.stdout
    assert "deleted 1 unfinished task rows" in done.stdout
    assert task_ids(db) == {"fresh"}


def test_cleanup_keeps_unfinished_rows_younger_than_asked(db, project):
    done = run_command("-A", "proj", "cleanup", "--unfinished-older-than", "4h", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "none known to be older than 4h yet" in done.stdout
    assert task_ids(db) == {"unfinished", "fresh"}


def test_cleanup_leaves_unfinished_rows_by_default(db, project):
    done = run_command("-A", "proj", "cleanup", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "database_unfinished_expires is off" in done.stdout
    assert task_ids(db) == {"unfinished", "fresh"}


def test_cleanup_bad_duration_is_a_usage_error(db, project):
    done = run_command("-A", "proj", "cleanup", "--unfinished-older-than", "soon", cwd=project)
    assert done.returncode == 2
    assert "'soon' is not a duration" in done.stderr
    assert task_ids(db) == {"unfinished", "fresh", "expired"}


def test_stats_json(db, project):
    done = run_command("-A", "proj", "stats", "--json", cwd=project)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    tasks = stats["tasks"]
    assert tasks["rows"] == 3 and tasks["by_state"] == {"STARTED": 1, "SUCCESS": 2}
    assert tasks["oldest_date_done"] < tasks["newest_date_done"]
    assert tasks["unfinished"]["rows"] == 1
    # Written before the watermark of 3 hours ago, after none: more than 3 h old.
    age = tasks["unfinished"]["oldest_age_seconds"]
    assert age["at_least"] >= 3 * 3600 and age["at_most"] is None
    for kind in ("tasks", "groups"):
        size = stats[kind]["size"]
        assert size["total_bytes"] > 0 and size["measured_by"]
    assert stats["chords"]["parts"] == 0 and stats["watermarks"]["count"] == 1
    assert stats["database_size"]["total_bytes"] > 0


def test_stats_for_people(db, project):
    done = run_command("-A", "proj", "stats", cwd=project)
    assert done.returncode == 0, done.stderr
    assert f"tasks ({db.qualified(db.task_table)}): 3 rows" in done.stdout
    assert "unfinished: 1 rows; the oldest first written more than 3h" in done.stdout


@pytest.mark.parametrize("command", ["cleanup", "stats"])
@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_wrong_url_is_named_without_its_password(command, dialect):
    done = run_command(command, "--url", f"{dialect}://me:s3cret-pw@127.0.0.1:1/results")
    assert done.returncode == 2
    assert f"could not connect to the {dialect} server at 127.0.0.1:1" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_progress_bar_on_a_terminal(db, project):
    """On a terminal, stderr gets a progress line redrawn with \r; stdout the summary."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("rawbackend")), "-A", "proj", "cleanup"],
            cwd=project, stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120,
            check=False,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert b"\rexpired task rows" in shown and b"1/1" in shown
    assert "deleted 1 expired task rows" in done.stdout


@pytest.mark.parametrize("command", ["cleanup", "stats"])
def test_a_database_without_the_tables_is_named(command, tmp_path):
    done = run_command(command, "--url", f"sqlite:///{tmp_path / 'empty.db'}")
    assert done.returncode == 2
    assert "no task table celery_taskmeta in sqlite:///" in done.stderr


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600),
    ("1d12h", 129600), ("1.5h", 5400), ("0", 0),
])
def test_durations(text, seconds):
    assert duration(text) == timedelta(seconds=seconds)
