"""``rawbackend schema``: the DDL, for a DBA to run where the app may not create tables."""
from __future__ import annotations

import argparse

from . import EXIT_OK, session

HELP = ("print the DDL of every table, index and sequence that rawbackend would create "
        "(Celery's two tables and its own), with the configured names and schemas")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant", metavar="SERVER",
        help="the server the DDL is for, where a URL may mean more than one "
             "(mysql://: 'mariadb', 'galera' for a Galera cluster node, or 'none' for "
             "MySQL); default: ask the server",
    )


def run(backend, args: argparse.Namespace) -> int:
    tables = backend.tables
    variants = backend.dialect.variants
    if args.variant is not None:
        if args.variant not in (*variants, "none"):
            from . import CommandError
            raise CommandError(
                f"--variant {args.variant!r}: {backend.dialect.name} URLs take "
                f"{', '.join(repr(v) for v in (*variants, 'none'))}"
            )
        tables.use_variant(None if args.variant == "none" else args.variant)
    elif variants:
        session(backend).close()  # asks the server which it is
    print(f"-- rawbackend schema for {backend.dialect.name}"
          f"{f' ({tables.variant})' if tables.variant else ''}: run once, in this order.")
    for name, sql in tables.sql.items():
        if name.startswith("create_"):
            print(f"\n-- {name}\n{sql.strip().rstrip(';')};")
    return EXIT_OK
