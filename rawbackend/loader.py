"""SQL files -> named statements.

A file under ``sql/<dialect>/`` holds blocks like::

    -- name: store_result
    -- Insert a task's state, or update it unless a SUCCESS is stored already.
    -- why: (optional) why this dialect must differ
    INSERT INTO {task_table} ... VALUES (%(task_id)s, ...);

Statements are found and tokenized by sqlparse, never by regexes: ``{slot}``
is a table (or sequence) name filled in later with a quoted identifier, and a
placeholder must be in the driver's own parameter style. Everything is checked
at load time, and every error names ``file:line name``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sqlparse import tokens as T
from sqlparse.engine import FilterStack

__all__ = ("Statement", "SQLFileError", "load_dialect", "sql_root")

HEADER = "-- name:"

# The placeholder shapes of each DB-API paramstyle that we use.
PARAMSTYLE_PREFIX = {"pyformat": "%(", "named": ":"}


class SQLFileError(ValueError):
    """A malformed SQL file; the message starts with ``file:line name:``."""

    def __init__(self, path: Path | str, line: int, name: str, reason: str):
        super().__init__(f"{Path(path).name}:{line} {name}: {reason}")


@dataclass(frozen=True)
class Statement:
    """One named statement: its SQL split into text and ``{slot}`` parts."""

    name: str
    doc: str
    parts: tuple[str, ...]  # even indexes: SQL text; odd indexes: slot names
    params: frozenset[str]
    file: str
    line: int

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(self.parts[1::2])

    def render(self, slots: dict[str, str]) -> str:
        """The SQL with every ``{slot}`` replaced by ``slots[slot]``."""
        return "".join(
            part if i % 2 == 0 else slots[part] for i, part in enumerate(self.parts)
        )


def sql_root() -> Path:
    """Where the SQL files are: inside the installed package, or in a checkout."""
    packaged = Path(__file__).resolve().parent / "sql"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "sql"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"rawbackend's SQL files are missing: looked in {packaged} and {checkout}"
    )


def parse_file(path: Path, paramstyle: str, known_slots: frozenset[str]) -> list[Statement]:
    """Parse one SQL file into statements, checking everything."""
    text = path.read_text(encoding="utf-8")
    prefix = PARAMSTYLE_PREFIX[paramstyle]
    statements: list[Statement] = []
    line = 1
    # sqlparse's statement splitter without its grouping pass: the tokens are
    # all we need, and grouping would triple the load time of every worker.
    for raw in FilterStack().run(text):
        # Each token with the line it starts on.
        tokens = []
        for tok in raw.flatten():
            tokens.append((line, tok))
            line += tok.value.count("\n")
        lead = 0
        while lead < len(tokens) and (
            tokens[lead][1].is_whitespace or tokens[lead][1].ttype in T.Comment
        ):
            lead += 1
        comments = [(n, t.value.strip()) for n, t in tokens[:lead] if t.ttype in T.Comment]
        body = [t for _, t in tokens[lead:]]
        if body and body[-1].match(T.Punctuation, ";"):
            body = body[:-1]
        headers = [k for k, (_, c) in enumerate(comments) if c.startswith(HEADER)]
        if not headers:
            if body:
                raise SQLFileError(path, tokens[lead][0], "?", "text outside a '-- name:' block")
            continue  # comments alone: a file preamble or trailing notes
        header_line, header = comments[headers[0]]
        name = header[len(HEADER):].strip()
        if not name.isidentifier():
            raise SQLFileError(path, header_line, name or "?", "a statement name must be an identifier")
        if len(headers) > 1 or not "".join(t.value for t in body).strip():
            raise SQLFileError(path, header_line, name, "empty body")
        doc = [
            c[2:].strip() for _, c in comments[headers[0] + 1:]
            if not c[2:].strip().startswith("why:")
        ]
        if not doc or not doc[0]:
            raise SQLFileError(path, header_line, name, "needs a one-line description under its header")
        parts, params = _split(body, path, tokens[lead][0], name, prefix, known_slots)
        statements.append(Statement(name, doc[0], parts, params, path.name, header_line))
    return statements


def _split(body, path, line, name, prefix, known_slots):
    """Cut the body's tokens into text and slots; collect placeholders."""
    parts: list[str] = [""]
    params: set[str] = set()
    k = 0
    while k < len(body):
        tok = body[k]
        if tok.match(T.Error, "{"):
            if k + 2 >= len(body) or not body[k + 2].match(T.Error, "}"):
                raise SQLFileError(path, line, name, "an unclosed '{' slot")
            slot = body[k + 1].value
            if slot not in known_slots:
                raise SQLFileError(
                    path, line, name,
                    f"unknown slot {{{slot}}}; known: {', '.join(sorted(known_slots))}",
                )
            parts += [slot, ""]
            k += 3
            continue
        if tok.ttype in T.Comment:
            # Comments inside a body are kept out of the SQL sent to the server.
            k += 1
            continue
        if tok.ttype is T.Name.Placeholder:
            if not tok.value.startswith(prefix) or tok.value == "?":
                raise SQLFileError(
                    path, line, name,
                    f"placeholder {tok.value} is not in this driver's style ({prefix}name...)",
                )
            params.add(tok.value[2:-2] if prefix == "%(" else tok.value[1:])
        elif tok.ttype is T.Error:
            raise SQLFileError(path, line, name, f"unexpected {tok.value!r}")
        parts[-1] += tok.value
        k += 1
    parts[0] = parts[0].lstrip()
    parts[-1] = parts[-1].rstrip()
    return tuple(parts), frozenset(params)


@functools.cache
def load_dialect(
    dialect: str, paramstyle: str, known_slots: frozenset[str], required: frozenset[str]
) -> dict[str, Statement]:
    """Every statement of ``sql/<dialect>/*.sql``, by name."""
    return load_folder(sql_root() / dialect, paramstyle, known_slots, required)


def load_folder(
    folder: Path, paramstyle: str, known_slots: frozenset[str], required: frozenset[str]
) -> dict[str, Statement]:
    registry: dict[str, Statement] = {}
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise SQLFileError(folder, 0, "?", "no .sql files here")
    for path in files:
        for st in parse_file(path, paramstyle, known_slots):
            if st.name in registry:
                first = registry[st.name]
                raise SQLFileError(
                    path, st.line, st.name,
                    f"duplicate name (first at {first.file}:{first.line})",
                )
            registry[st.name] = st
    missing = sorted(required - registry.keys())
    if missing:
        raise SQLFileError(
            folder, 0, missing[0],
            f"required statement missing from {folder.name}/ (all missing: {', '.join(missing)})",
        )
    return registry
