"""``rawbackend stats``: what the result tables hold, and what they take on disk."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta

from ..expiry import age_bounds, utc_now
from ..url import sanitize_url
from . import EXIT_OK, CommandError, _from_driver, session

HELP = ("rows by state, the oldest and newest date_done, rows that never finished and "
        "their age, table and index sizes (--json for machines)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(backend, args: argparse.Namespace) -> int:
    with session(backend) as s:
        require_task_table(backend, s)
        stats = gather(backend, s)
    print(json.dumps(stats, indent=2, default=_jsonable) if args.json else render(stats))
    return EXIT_OK


def gather(backend, s) -> dict:
    """Every figure, as plain data: seconds for ages, bytes for sizes, ISO times (UTC)."""
    tables, sql, decode = backend.tables, backend.tables.sql, backend.dialect.decode_datetime
    now = utc_now()
    states = {row["status"]: int(row["n"]) for row in s.fetch_all(sql["stats_task_states"])}
    dates = s.fetch_one(sql["stats_task_dates"]) or {}
    unfinished = s.fetch_one(sql["stats_unfinished_tasks"]) or {}
    marks = []
    has_marks = bool(tables.columns(s, tables.watermark_cls))
    if has_marks:
        rows = s.fetch_all(sql["watermarks"], {"task_table": _label(tables.task_cls)})
        marks = [(decode(row["recorded_at"]), int(row["max_id"])) for row in rows]
    oldest_id = unfinished.get("oldest_id")
    at_least, at_most = age_bounds(marks, int(oldest_id), now) if oldest_id is not None else (None, None)
    groups = s.fetch_one(sql["stats_groups"]) or {}
    stats: dict = {
        "dialect": tables.variant or backend.dialect.name,
        "measured_at": now,
        "tasks": {
            "table": _label(tables.task_cls),
            "rows": sum(states.values()),
            "by_state": states,
            "oldest_date_done": decode(dates.get("oldest")),
            "newest_date_done": decode(dates.get("newest")),
            "unfinished": {
                "rows": int(unfinished.get("n") or 0),
                # The oldest unfinished row's age, from the watermarks around
                # its id (None: no watermark on that side of it).
                "oldest_age_seconds": {"at_least": _seconds(at_least), "at_most": _seconds(at_most)},
                "expire_after_seconds": _seconds(backend.unfinished_expires),
            },
            "size": _size(backend, s, tables.task_cls),
        },
        "groups": {
            "table": _label(tables.taskset_cls),
            "rows": int(groups.get("n") or 0),
            "oldest_date_done": decode(groups.get("oldest")),
            "newest_date_done": decode(groups.get("newest")),
            "size": _size(backend, s, tables.taskset_cls),
        },
        "chords": None,
        "watermarks": {
            "table": _label(tables.watermark_cls),
            "count": len(marks),
            "oldest": marks[0][0] if marks else None,
            "newest": marks[-1][0] if marks else None,
        } if has_marks else None,
        "database_size": _measure(s, sql["database_size"], {"schema": _database_schema(backend)}),
    }
    if tables.columns(s, tables.chord_cls):  # Celery's tables may have none
        chords = s.fetch_one(sql["stats_chords"]) or {}
        stats["chords"] = {
            "table": _label(tables.chord_cls),
            "parts": int(chords.get("parts") or 0),
            "claims": int(chords.get("claims") or 0),
            "size": _size(backend, s, tables.chord_cls),
        }
    return stats


def require_task_table(backend, s) -> None:
    """A command on a database without the task table says so (a wrong URL,
    or tables not made yet), rather than the server's error from a statement."""
    if not backend.tables.columns(s, backend.tables.task_cls):
        raise CommandError(
            f"no task table {_label(backend.tables.task_cls)} in {sanitize_url(backend.url)} "
            "(a wrong database, or table names that the app's database_table_names would give?)"
        )


def _label(model) -> str:
    return f"{model.table_schema}.{model.table_name}" if model.table_schema else model.table_name


def _database_schema(backend) -> str | None:
    # MySQL's "schema" is a database: the task table's, or the URL's (NULL).
    return backend.tables.task_cls.table_schema


def _size(backend, s, model) -> dict:
    q = backend.dialect.quote_identifier
    qualified = f"{q(model.table_schema)}.{q(model.table_name)}" if model.table_schema \
        else q(model.table_name)
    params = {"schema": model.table_schema, "table": model.table_name, "qualified": qualified}
    return _measure(s, backend.tables.sql["stats_table_size"], params)


def _measure(s, sql: str, params: dict) -> dict:
    try:
        row = s.fetch_one(sql, params) or {}
    except Exception as exc:
        if not _from_driver(exc):
            raise
        # SQLite without dbstat: the database's size is all there is.
        return {"table_bytes": None, "index_bytes": None, "total_bytes": None,
                "measured_by": f"unavailable ({exc})"}
    sizes = {key: None if row.get(key) is None else int(row[key])
             for key in ("table_bytes", "index_bytes", "total_bytes")}
    return {**sizes, "measured_by": row.get("measured_by")}


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def render(stats: dict) -> str:
    """The figures for people: one table per line, sizes in MiB."""
    tasks, unfinished = stats["tasks"], stats["tasks"]["unfinished"]
    lines = [f"{stats['dialect']}, at {stats['measured_at']:%Y-%m-%d %H:%M:%S} UTC"]
    lines.append(f"tasks ({tasks['table']}): {tasks['rows']:,} rows, done "
                 f"{_when(tasks['oldest_date_done'])} .. {_when(tasks['newest_date_done'])}")
    lines += [f"  {state:<10} {count:,}" for state, count in tasks["by_state"].items()]
    age = unfinished["oldest_age_seconds"]
    lines.append(f"  unfinished: {unfinished['rows']:,} rows; the oldest first written "
                 f"{_age(age['at_least'], age['at_most'])}; expire after "
                 f"{span(unfinished['expire_after_seconds']) or 'never (off)'}")
    lines.append(f"  size: {_bytes(tasks['size'])}")
    groups = stats["groups"]
    lines.append(f"groups ({groups['table']}): {groups['rows']:,} rows, done "
                 f"{_when(groups['oldest_date_done'])} .. {_when(groups['newest_date_done'])}; "
                 f"size: {_bytes(groups['size'])}")
    chords = stats["chords"]
    lines.append("chords: no chord table" if chords is None else
                 f"chords ({chords['table']}): {chords['parts']:,} finished parts, "
                 f"{chords['claims']:,} claims; size: {_bytes(chords['size'])}")
    marks = stats["watermarks"]
    lines.append("watermarks: no watermark table yet (the first cleanup makes it)" if marks is None
                 else f"watermarks ({marks['table']}): {marks['count']} recorded, "
                      f"{_when(marks['oldest'])} .. {_when(marks['newest'])}")
    lines.append(f"database: {_bytes(stats['database_size'])}")
    return "\n".join(lines)


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def span(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return " ".join(parts) or f"{secs}s"


def _age(at_least: float | None, at_most: float | None) -> str:
    if at_least is None and at_most is None:
        return "at an unknown time (no watermark yet)"
    if at_most is None:
        return f"more than {span(at_least)} ago"
    if at_least is None:
        return f"less than {span(at_most)} ago"
    return f"{span(at_least)} to {span(at_most)} ago"


def _bytes(size: dict) -> str:
    def mib(n: int | None) -> str:
        return "?" if n is None else f"{n / 2**20:,.2f} MiB"

    if size["table_bytes"] is None:
        return f"{mib(size['total_bytes'])} ({size['measured_by']})"
    return (f"{mib(size['total_bytes'])} (rows {mib(size['table_bytes'])}, indexes "
            f"{mib(size['index_bytes'])}; {size['measured_by']})")
