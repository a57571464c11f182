"""``rawbackend migrate``: bring existing tables up to date, step by step.

Tables made by Celery 5.x's backend or by an older rawbackend get what this
version needs (rawbackend.migrations); the plan is printed first, and nothing
changes without ``--apply``. Every step is safe while workers write (columns
are added without a rewrite, indexes built online), except widening MySQL's
BLOB/TEXT columns, which copies the table and so needs ``--rewrite-tables``.
Running it again does nothing: each run starts from what the server has.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from ..errors import classify
from ..migrations import ACTIONS, Difference, differences, fix_params, table_size
from . import EXIT_OK, EXIT_PROBLEM, session
from .check import describe

HELP = ("bring tables made by Celery 5.x or an older rawbackend up to date: print the plan; "
        "--apply runs it")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apply", action="store_true",
                        help="run the plan (without it, nothing is changed)")
    parser.add_argument("--rewrite-tables", action="store_true",
                        help="run the steps that rewrite a whole table too (MySQL/MariaDB: "
                             "BLOB/TEXT widened to LONGBLOB/LONGTEXT; writes wait until each ends)")


@dataclass
class Step:
    """The statements that fix one or more differences (a rewrite fixes several columns)."""

    fix: tuple[str, ...]
    fixes: list[Difference]
    note: str = ""

    @property
    def title(self) -> str:
        first = self.fixes[0]
        if len(self.fixes) == 1:
            return first.action
        # One statement for several columns of a table (a rewrite widens them all).
        table = first.where.rpartition(".")[0]
        columns = ", ".join(d.where.rpartition(".")[2] for d in self.fixes)
        return f"{ACTIONS[first.what]}s of {table}: {columns}"

    @property
    def rewrite(self) -> bool:
        return self.fixes[0].rewrite


def run(backend, args: argparse.Namespace) -> int:
    tables = backend.tables
    with session(backend) as conn:
        found = differences(conn, tables)
        steps = _steps(found)
        unfixable = [d for d in found if not d.fix]
        print(f"rawbackend migrate: {describe(backend)}")
        if not found:
            print("The tables are up to date: nothing to do.")
            return EXIT_OK
        for step in steps:
            if step.rewrite:
                step.note = _rewrite_note(conn, tables, step)
        runnable = [s for s in steps if args.rewrite_tables or not s.rewrite]
        _print_plan(tables, steps, runnable, unfixable)
        if not args.apply:
            print("\nNothing was changed: run again with --apply to make these changes.")
            return EXIT_OK
        print()
        for number, step in enumerate(runnable, 1):
            print(f"step {number}/{len(runnable)}: {step.title} ...", end=" ", flush=True)
            started = time.monotonic()
            outcome, error, tries = _run_step(conn, backend, step)
            if outcome == "meanwhile":
                # Another process did it: a worker setting up (it adds
                # columns and the chord table), a second migrate.
                print("done meanwhile by another process")
                continue
            if outcome == "failed":
                print("failed")
                done = ", ".join(str(n) for n in range(1, number)) or "none"
                print(f"rawbackend migrate: step {number} ({step.title}) failed: {error}\n"
                      f"Steps done before it: {done}; nothing after it was run. Fix the cause "
                      "and run rawbackend migrate again: it starts from what the tables have now.")
                return EXIT_PROBLEM
            again = f", {tries} tries" if tries > 1 else ""
            print(f"done ({time.monotonic() - started:.2f} s{again})")
        left = [s for s in steps if s not in runnable]
        if left:
            print(f"Not run: {len(left)} step{'s' * (len(left) != 1)} that rewrite a table; "
                  "run again with --apply --rewrite-tables when writes may wait.")
        if unfixable:
            print(f"{len(unfixable)} difference{'s' * (len(unfixable) != 1)} left to fix by hand.")
            return EXIT_PROBLEM
        print(f"Done: {len(runnable)} step{'s' * (len(runnable) != 1)}.")
    return EXIT_OK


ATTEMPTS = 3


def _run_step(conn, backend, step: Step) -> tuple[str, Exception | None, int]:
    """Run the step's statements: ("done", None, tries), ("meanwhile", ...)
    when another process did it first, or ("failed", the error, tries). A transient error
    (a deadlock with a worker's set-up, a lock timeout) is tried again with
    what the tables need by then (an index build that failed left an invalid
    index: drop it, build it again)."""
    tables, fix = backend.tables, step.fix
    for attempt in range(1, ATTEMPTS + 1):
        try:
            for name in fix:
                conn.execute(tables.sql[name], fix_params(conn, tables, name))
            return "done", None, attempt
        except Exception as exc:
            try:
                left = [d for d in differences(conn, tables) if _within(d, step)]
            except Exception:  # the server is gone: the step's own error says more
                return "failed", exc, attempt
            if not left:
                return "meanwhile", None, attempt
            fix = tuple(name for d in left for name in d.fix)
            if attempt == ATTEMPTS or not fix or classify(backend.dialect.errors, exc) is None:
                return "failed", exc, attempt
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def _within(difference: Difference, step: Step) -> bool:
    """Whether ``difference`` is at a place the step fixes (a created table's
    columns and index are within it)."""
    return any(difference.where == d.where or difference.where.startswith((d.where + ".", d.where + " "))
               for d in step.fixes)


def _steps(found: list[Difference]) -> list[Step]:
    """One step per distinct fix, in the differences' order."""
    steps: dict[tuple[str, ...], Step] = {}
    for difference in found:
        if difference.fix:
            steps.setdefault(difference.fix, Step(difference.fix, [])).fixes.append(difference)
    return list(steps.values())


def _rewrite_note(conn, tables, step: Step) -> str:
    size = table_size(conn, tables, step.fixes[0].table)
    held = "" if size is None else f" (about {size[0]:,} rows, {size[1] / 1e6:,.1f} MB)"
    return (f"rewrites the table{held}: a copy, during which reads go on and writes wait "
            "until it ends")


def _print_plan(tables, steps: list[Step], runnable: list[Step],
                unfixable: list[Difference]) -> None:
    print(f"Plan: {len(steps)} step{'s' * (len(steps) != 1)}.")
    for number, step in enumerate(steps, 1):
        print(f"\n{number}. {step.title}")
        if len(step.fixes) == 1:
            print(f"   why: {step.fixes[0].why}")
        else:
            for difference in step.fixes:
                print(f"   {difference.where.rpartition('.')[2]}: {difference.why}")
        if step.note:
            print(f"   {step.note}")
        if step not in runnable:
            print("   (not run without --rewrite-tables)")
        for name in step.fix:
            print(f"   {tables.sql[name].strip()};".replace("\n", "\n   "))
    for difference in unfixable:
        print(f"\nNo automatic fix: {difference}")
