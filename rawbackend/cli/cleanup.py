"""``rawbackend cleanup``: what ``backend.cleanup()`` does (celery.backend_cleanup),
from a shell, with a progress bar, a dry run, and an age for unfinished rows."""
from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from typing import TextIO

from ..expiry import Report
from . import EXIT_OK, session
from .stats import require_task_table, span

HELP = ("delete expired results (result_expires) in short batches, and rows left "
        "unfinished for longer than --unfinished-older-than")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
KINDS = {
    "tasks": "expired task rows",
    "groups": "expired group rows",
    "chords": "expired chord rows",
    "unfinished": "unfinished task rows",
}


def duration(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or ``1d12h``: a timedelta."""
    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or "".join(number + unit for number, unit in parts) != spec:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds or a number with s, m, h, d or w "
            "(90, 30m, 12h, 7d, 1d12h); 0 turns it off"
        )
    return timedelta(seconds=sum(float(number) * UNITS[unit or "s"] for number, unit in parts))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be deleted, by table; delete nothing")
    parser.add_argument(
        "--unfinished-older-than", type=duration, metavar="DURATION",
        help="also delete rows left unfinished (STARTED, RETRY, RECEIVED, PENDING) first "
             "written longer ago than this (e.g. 7d), to within the spacing of cleanups; "
             "default: the app's database_unfinished_expires, off unless set",
    )


def run(backend, args: argparse.Namespace) -> int:
    unfinished = backend.unfinished_expires
    if args.unfinished_older_than is not None:
        unfinished = args.unfinished_older_than or None
    with session(backend) as s:
        require_task_table(backend, s)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        report = backend._ensure_retryable(
            backend._cleanup, unfinished_expires=unfinished, dry_run=args.dry_run,
            totals=bar is not None, progress=bar, open_session=lambda: session(backend),
        )
    finally:
        if bar is not None:
            bar.close()
    print(summary(backend, report, unfinished))
    return EXIT_OK


def summary(backend, report: Report, unfinished: timedelta | None) -> str:
    verb = "would delete" if report.dry_run else "deleted"
    lines = []
    if not backend.expires:
        lines.append("expired results: kept (result_expires is None or 0: results never expire)")
    for kind, what in KINDS.items():
        if kind in report.rows:
            lines.append(f"{verb} {report.rows[kind]:,} {what}")
    if unfinished is None:
        lines.append("unfinished rows: kept (database_unfinished_expires is off; "
                     "--unfinished-older-than DURATION sets an age)")
    elif report.unfinished_before is None:
        lines.append(f"unfinished rows: none known to be older than {span(unfinished.total_seconds())} "
                     "yet: their age comes from the watermarks each cleanup records")
    else:
        when = f"{report.unfinished_before:%Y-%m-%d %H:%M:%S}"
        lines.append(f"unfinished rows: those first written before {when} UTC (ids up to "
                     f"{report.unfinished_max_id}), older than {span(unfinished.total_seconds())}")
    return "\n".join(lines)


class ProgressBar:
    """A one-line progress bar, redrawn in place with ``\\r`` (for a terminal)."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.kind: str | None = None

    def __call__(self, kind: str, done: int, total: int | None) -> None:
        if kind != self.kind:
            self.close()
            self.kind = kind
        label = f"{KINDS[kind]:<22}"
        if total:
            filled = min(self.WIDTH, self.WIDTH * done // total)
            line = f"{label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done:,}/{total:,}"
        else:
            line = f"{label} {done:,}"
        self.stream.write(f"\r{line}")
        self.stream.flush()

    def close(self) -> None:
        if self.kind is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.kind = None
