"""``rawbackend check``: do the tables have what this version needs?"""
from __future__ import annotations

import argparse

from ..migrations import NEEDED, differences
from ..url import sanitize_url
from . import EXIT_OK, EXIT_PROBLEM, session

HELP = ("compare the tables, columns, types, indexes and sequences with what this version "
        "needs; print each difference and what fixes it; exit 1 if there is any")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(backend, args: argparse.Namespace) -> int:
    tables = backend.tables
    with session(backend) as conn:
        found = differences(conn, tables)
    where = describe(backend)
    if not found:
        print(f"rawbackend check: {where}: the tables are as this version needs them.")
        return EXIT_OK
    print(f"rawbackend check: {where}: {len(found)} difference{'s' * (len(found) != 1)}.")
    shown: set[tuple[str, ...]] = set()
    for difference in found:
        print(f"\n{difference}")
        if not difference.fix:
            print("  fix: none that rawbackend migrate runs")
        elif difference.fix in shown:
            print("  fix: the same as above")
        else:
            shown.add(difference.fix)
            for name in difference.fix:
                print(f"  fix: {tables.sql[name].strip()};")
        if difference.rewrite:
            print("  (rewrites the table: rawbackend migrate --apply --rewrite-tables)")
    print("\n`rawbackend migrate` shows the plan; `rawbackend migrate --apply` runs it.")
    return EXIT_PROBLEM


def describe(backend) -> str:
    """The database and tables a command works on, without the password."""
    tables = backend.tables
    names = ", ".join(tables.slot(f"{kind}_table") for kind in (n.kind for n in NEEDED))
    return f"{sanitize_url(backend.url)} ({names})"
