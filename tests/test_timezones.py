"""date_done is naive UTC on every dialect, whatever the app's, the server's
or the session's time zone (SPEC §3), and cleanup() measures age in UTC too.

Each test stores a task and a group, reads date_done behind the backend
with a bare driver, and runs cleanup() with result_expires=3600: a result
stored now must survive it, one backdated two hours (naive UTC) must go.
"""
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlsplit

import pytest
from celery import states

from conftest import Database

# "Within a few seconds" of now: far below the hours a time zone shifts by.
CLOSE = timedelta(seconds=30)
TOKYO = "Asia/Tokyo"  # UTC+9, no daylight saving time
NEW_YORK = "America/New_York"  # UTC-5/-4: stored local time would look hours old


def tid(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def utcnow_naive() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def ph(db: Database) -> str:
    return "?" if db.dialect == "sqlite" else "%s"


def with_query(db: Database, **params: str) -> Database:
    """``db`` with connect parameters added to its URL (same tables, same apps list)."""
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in params.items())
    return dataclasses.replace(db, url=db.url + ("&" if "?" in db.url else "?") + query)


def stored(db: Database, table: str, key: str, value: str) -> datetime:
    """date_done of one row as the bare driver reads it (SQLite: its text)."""
    (when,), = db.query(
        f"SELECT date_done FROM {db.qualified(table)} WHERE {key} = {ph(db)}", (value,)
    )
    return datetime.fromisoformat(when) if isinstance(when, str) else when


def backdate(db: Database, table: str, key: str, value: str, when: datetime) -> None:
    written = when.strftime("%Y-%m-%d %H:%M:%S.%f") if db.dialect == "sqlite" else when
    db.query(
        f"UPDATE {db.qualified(table)} SET date_done = {ph(db)} WHERE {key} = {ph(db)}",
        (written, value),
    )


def ids(db: Database, table: str, key: str) -> set[str]:
    return {row[0] for row in db.query(f"SELECT {key} FROM {db.qualified(table)}")}


def assert_naive_utc(db: Database, **conf) -> None:
    """Store, read back, and clean up tasks and groups: all in naive UTC."""
    app = db.app(result_expires=3600, **conf)
    backend = app.backend
    fresh, old = tid("fresh"), tid("old")
    fresh_group, old_group = tid("fresh-group"), tid("old-group")
    for task_id in (fresh, old):
        backend.store_result(task_id, 42, states.SUCCESS)
    for group_id in (fresh_group, old_group):
        backend.save_group(group_id, app.GroupResult(group_id, [app.AsyncResult(tid("child"))]))
    now = utcnow_naive()

    task_done = stored(db, db.task_table, "task_id", fresh)
    group_done = stored(db, db.group_table, "taskset_id", fresh_group)
    for when in (task_done, group_done):
        assert when.tzinfo is None
        assert abs(when - now) < CLOSE, f"stored {when}, UTC now {now}"
    # Read back as stored: naive, unshifted.
    assert backend.get_task_meta(fresh, cache=False)["date_done"] == task_done
    assert backend._restore_group(fresh_group)["date_done"] == group_done

    two_hours_ago = now - timedelta(hours=2)
    backdate(db, db.task_table, "task_id", old, two_hours_ago)
    backdate(db, db.group_table, "taskset_id", old_group, two_hours_ago)
    backend.cleanup()
    assert ids(db, db.task_table, "task_id") == {fresh}
    assert ids(db, db.group_table, "taskset_id") == {fresh_group}


@pytest.mark.parametrize("enable_utc", [True, False], ids=["enable_utc", "local"])
def test_app_timezone_west_of_utc(db, enable_utc):
    """An app in New York (app.now() aware, five hours behind) stores UTC."""
    assert_naive_utc(db, timezone=NEW_YORK, enable_utc=enable_utc)


def session_timezone(db: Database) -> str:
    (zone,), = db.query("SHOW TimeZone")
    return zone


def test_postgresql_session_timezone_from_url(pg_db):
    """A session in Tokyo (libpq options in the URL) must not shift date_done."""
    db = with_query(pg_db, options=f"-c TimeZone={TOKYO}")
    assert session_timezone(db) == TOKYO
    assert_naive_utc(db)


def test_postgresql_database_timezone(pg_db):
    """A database whose default time zone is Tokyo must not shift date_done."""
    name = urlsplit(pg_db.url).path.lstrip("/")
    pg_db.query(f"ALTER DATABASE \"{name}\" SET timezone = '{TOKYO}'")
    try:
        assert session_timezone(pg_db) == TOKYO  # every new session gets it
        assert_naive_utc(pg_db)
    finally:
        pg_db.query(f'ALTER DATABASE "{name}" RESET timezone')
    assert session_timezone(pg_db) != TOKYO


def test_mysql_session_time_zone_from_url(mysql_db):
    """A MariaDB session at +09:00 (init_command in the URL, which PyMySQL
    runs on connect) with an app in New York still stores UTC. DATETIME
    columns take no time zone from the session: this guards that nothing
    of ours (NOW(), a TIMESTAMP column) ever makes them."""
    db = with_query(mysql_db, init_command="SET time_zone = '+09:00'")
    (zone,), = db.query("SELECT @@session.time_zone")
    assert zone == "+09:00"
    assert_naive_utc(db, timezone=NEW_YORK)


def test_every_dialect_encodes_naive_utc():
    """The one conversion, as each dialect row hands it to its driver."""
    from zoneinfo import ZoneInfo

    from rawbackend.dialects import DIALECTS, SQLITE, naive_utc

    utc = datetime(2024, 1, 15, 17, 30, 0, 123456)
    in_new_york = utc.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(NEW_YORK))
    assert in_new_york.hour == 12
    assert naive_utc(in_new_york) == utc and naive_utc(utc) == utc and naive_utc(None) is None
    for dialect in DIALECTS:
        expected = "2024-01-15 17:30:00.123456" if dialect is SQLITE else utc
        assert dialect.encode_datetime(in_new_york) == expected, dialect.name
        assert dialect.encode_datetime(utc) == expected, dialect.name
        assert dialect.encode_datetime(None) is None
