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
    "rawdb+sqlite:// (in memory); several servers: host1:5432,host2:5432 where the host "
    "goes (PostgreSQL also ?host=host1:5432&host=host2:5432); query parameters go to the driver, "
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
    except ValueError as exc:
        raise _bad(url, f"malformed URL ({exc})") from None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(pairs)
    if not dialect.has_host:
        params = _file_params(url, parts, dialect)
    else:
        if parts.path.count("/") > 1:
            raise _bad(url, "a database name may not contain '/'")
        hosts = _hosts(url, parts, [value for key, value in pairs if key == "host"], dialect)
        if len(hosts) > 1:
            assert dialect.several_hosts is not None  # _hosts refuses several hosts otherwise
            query.pop("host", None)
            location = dialect.several_hosts(hosts)
        elif hosts:
            query.pop("host", None)
            # "postgresql://:5433/db": the driver's default host, on that port.
            location = {"host": hosts[0][0] or None, "port": hosts[0][1]}
        else:
            location = {"host": None, "port": None}
        location.update({
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
            dialect.database_param: unquote(parts.path[1:]) or None,
        })
        params = {**dialect.connect_defaults, **{k: v for k, v in location.items() if v is not None}}
    try:
        params.update(dialect.typed(query))
    except ValueError as exc:
        raise _bad(url, f"a query parameter has a bad value ({exc})") from None
    return dialect, params


def _hosts(url: str, parts, query_hosts: list[str], dialect: Dialect) -> list[tuple[str, int]]:
    """The servers a URL names, in order: ``h1:5432,h2:5433`` where the host
    goes, or SQLAlchemy's ``?host=h1:5432&host=h2:5433`` (an empty list: the
    driver's default, or a lone ``?host=`` such as a socket directory, which
    goes to the driver as it is)."""
    location = parts.netloc.rpartition("@")[2]
    several_in_query = len(query_hosts) > 1 or any(
        not h.startswith("/") and ":" in h for h in query_hosts
    )
    if location and several_in_query:
        raise _bad(url, "hosts given both before the database name and as ?host=")
    entries = location.split(",") if location else query_hosts if several_in_query else []
    if len(entries) > 1 and dialect.several_hosts is None:
        raise _bad(url, f"{dialect.name} takes one host")
    hosts = [_host_port(url, entry, dialect) for entry in entries]
    if len(hosts) > 1 and not all(host for host, _ in hosts):
        raise _bad(url, "a host of the host list is empty")
    return hosts


def _host_port(url: str, entry: str, dialect: Dialect) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``, with the default port."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _bad(url, f"malformed host {entry!r}")
        port = rest[1:]
    else:
        host, _, port = entry.partition(":")
    if not port:
        assert dialect.default_port is not None  # every dialect with hosts has one
        return unquote(host), dialect.default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"malformed URL (port {port!r} of host {host!r} is not a port number)")
    return unquote(host), int(port)


def _file_params(url: str, parts, dialect: Dialect) -> dict:
    if parts.netloc:
        raise _bad(url, f"{dialect.name} URLs have no host (use three slashes: {dialect.name}:///file.db)")
    # sqlite:///relative.db -> "relative.db"; sqlite:////abs.db -> "/abs.db";
    # sqlite:// -> in memory.
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    return {dialect.database_param: path or ":memory:"}
