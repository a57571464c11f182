"""The ``rawbackend`` command: what an operator does to the result tables.

``rawbackend [--url URL | -A APP] COMMAND [options]``; each command is a
module of this package with ``HELP``, ``add_arguments(parser)`` and
``run(backend, args) -> int``. Exit codes are for scripts: 0 all is well,
1 the command found a problem (``check``), 2 usage or connection error.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from ..errors import ConnectFailed
from ..session import Session
from ..url import sanitize_url, strip_prefix

__all__ = ("main", "open_backend", "session", "EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE",
           "CommandError")

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

# The commands, in the order --help lists them: modules of this package.
COMMANDS = ("schema", "check", "migrate", "cleanup", "stats")

URL_VARIABLE = "RAWBACKEND_URL"


class CommandError(Exception):
    """A usage or connection error: its message is printed, the exit code is 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    backend = None
    try:
        backend = open_backend(args)
        return args.module.run(backend, args)
    except (CommandError, ImproperlyConfigured, ConnectFailed) as exc:
        message = str(exc).removeprefix("rawbackend: ")
        print(f"rawbackend {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not _from_driver(exc):
            raise
        # The server said no (no such database, no privilege, ...): its words.
        print(f"rawbackend {args.command}: error: the database said: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"rawbackend {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if backend is not None:
            # Say goodbye to the server: a connection dropped at exit is an
            # "Aborted connection" warning in MariaDB's log for each run.
            backend.session_manager.invalidate(backend.url)


def _from_driver(exc: BaseException) -> bool:
    return type(exc).__module__.partition(".")[0] in {"psycopg", "pymysql", "sqlite3"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawbackend",
        description="Schema, migrations, checks, cleanup and statistics of rawbackend's "
                    "(and Celery's database backend's) result tables.",
        epilog=f"The database: --url, else -A's result_backend, else ${URL_VARIABLE}. "
               "Exit codes: 0 ok, 1 a problem found, 2 usage or connection error.",
    )
    _add_location(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        # The same options after the command too (rawbackend check --url ...):
        # SUPPRESS keeps what was given before it when they are not repeated.
        _add_location(sub, argparse.SUPPRESS)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def _add_location(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url", default=default,
        help="the database URL, in the forms result_backend takes "
             "(rawdb+postgresql://..., db+mysql://..., sqlite:///results.db)",
    )
    parser.add_argument(
        "-A", "--app", default=default, metavar="APP",
        help="a Celery app (module or module:attribute, as `celery -A` takes it): its "
             "result_backend and database_* settings (table names, schemas, ...); "
             "--url, if given too, replaces its result_backend",
    )


def open_backend(args: argparse.Namespace):
    """The backend the command works on: the app's settings, the URL's database.

    No tables are made here (``database_create_tables_at_setup`` is off): a
    command creates nothing it was not asked to.
    """
    from ..backend import DatabaseBackend

    if args.app:
        app = _load_app(args.app)
        url = args.url or app.conf.result_backend or app.conf.database_url
        if not url:
            raise CommandError(f"the app {args.app!r} has no result_backend nor database_url")
    else:
        url = args.url or os.environ.get(URL_VARIABLE)
        if not url:
            raise CommandError(f"no database: give --url URL, -A APP, or set ${URL_VARIABLE}")
        app = Celery("rawbackend", set_as_current=False)
    url = _database_url(url)
    return DatabaseBackend(app=app, url=url, create_tables_at_setup=False)


def session(backend) -> Session:
    """A session on the backend's database that creates nothing, its
    statements those of the server behind it (MariaDB behind mysql://)."""
    session = backend.session_manager.session_factory(dburi=backend.url, **backend.engine_options)
    backend.tables.use_variant(backend.dialect.variant_of(session.connection()))
    return session


def _database_url(url: str) -> str:
    """``url`` without Celery's ``db+`` or our ``rawdb+`` prefix: both backends
    use the same tables, so the command serves either."""
    url = url[len("db+"):] if url.startswith("db+") else strip_prefix(url)
    if "://" not in url:
        raise CommandError(f"{sanitize_url(url)!r} is not a database URL")
    return url


def _load_app(name: str) -> Celery:
    from celery.app.utils import find_app

    sys.path.insert(0, os.getcwd())  # as `celery -A` finds the project
    try:
        app = find_app(name)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot load the Celery app {name!r}: {exc}") from None
    if not isinstance(app, Celery):
        raise CommandError(f"{name!r} is not a Celery app (it is {type(app).__name__})")
    return app
