"""Database URLs -> a dialect and the driver's connect parameters."""
from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from celery.exceptions import ImproperlyConfigured

from .dialects import BY_SCHEME, Dialect

__all__ = ("ACCEPTED_FORMS", "parse_url", "sanitize_url", "strip_prefix")

PREFIX = "rawdb+"

ACCEPTED_FORMS = (
    "rawdb+postgresql://user:password@host:5432/dbname (also postgres://, "
    "postgresql+psycopg://, postgresql+psycopg2://), "
    "rawdb+mysql://user:password@host:3306/dbname (also mysql+pymysql://, mariadb://), "
    "rawdb+sqlite:///relative/path.db, rawdb+sqlite:////absolute/path.db, "
    "rawdb+sqlite:// (in memory); query parameters go to the driver, "
    "e.g. ?sslmode=require, ?charset=utf8mb4, ?connect_timeout=5"
)


def strip_prefix(url: str) -> str:
    return url[len(PREFIX):] if url.startswith(PREFIX) else url


def sanitize_url(url: str) -> str:
    """``url`` with its password replaced by ``**``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, _, location = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:**@{location}"))
    except ValueError:
        return "<a malformed URL>"


def _bad(url: str, problem: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"rawbackend: {problem} in database URL {sanitize_url(url)!r}. "
        f"Accepted forms: {ACCEPTED_FORMS}"
    )


def parse_url(url: str) -> tuple[Dialect, dict]:
    """The dialect of ``url`` and the keyword arguments of its driver's connect."""
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "no scheme (expected something like postgresql://)")
    url = strip_prefix(url)
    scheme = url.partition("://")[0].lower()
    dialect = BY_SCHEME.get(scheme)
    if dialect is None:
        raise _bad(url, f"unknown scheme {scheme!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, f"malformed URL ({exc})") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if not dialect.has_host:
        params = _file_params(url, parts, dialect)
    else:
        if parts.path.count("/") > 1:
            raise _bad(url, "a database name may not contain '/'")
        location = {
            "host": parts.hostname,
            "port": port,
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
            dialect.database_param: unquote(parts.path[1:]) or None,
        }
        params = {**dialect.connect_defaults, **{k: v for k, v in location.items() if v is not None}}
    try:
        params.update(dialect.typed(query))
    except ValueError as exc:
        raise _bad(url, f"a query parameter has a bad value ({exc})") from None
    return dialect, params


def _file_params(url: str, parts, dialect: Dialect) -> dict:
    if parts.netloc:
        raise _bad(url, f"{dialect.name} URLs have no host (use three slashes: {dialect.name}:///file.db)")
    # sqlite:///relative.db -> "relative.db"; sqlite:////abs.db -> "/abs.db";
    # sqlite:// -> in memory.
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    return {dialect.database_param: path or ":memory:"}
