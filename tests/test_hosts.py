"""Several hosts in one URL: the forms libpq, SQLAlchemy and MySQL users
write, and a connection that goes to the first host that answers."""
from __future__ import annotations

import socket

import pytest
from celery import Celery

from rawbackend.url import parse_url


def _refused_port() -> int:
    """A loopback port nothing listens on (bound and closed: refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
     {"host": "h1,h2", "port": "5432,5433", "target_session_attrs": "read-write"}),
    ("postgresql+psycopg://u@/db?host=h1:5432&host=h2:6432&load_balance_hosts=random",
     {"host": "h1,h2", "port": "5432,6432", "load_balance_hosts": "random"}),
    ("postgresql://u@h1,h2:6000/db", {"host": "h1,h2", "port": "5432,6000"}),
    ("postgresql://u@[::1]:5432,[fe80::2]/db", {"host": "::1,fe80::2", "port": "5432,5432"}),
    ("postgresql://u@/db?host=/var/run/postgresql", {"host": "/var/run/postgresql"}),
    ("mysql://root@n1:3306,n2:3307,n3/test", {"hosts": [("n1", 3306), ("n2", 3307), ("n3", 3306)]}),
    ("mysql://root@n1:3307/test", {"host": "n1", "port": 3307}),
])
def test_host_lists_are_parsed_in_order(url, expected):
    _, params = parse_url(url)
    assert {key: params.get(key) for key in expected} == expected
    assert "hosts" not in params or "host" not in params


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
@pytest.mark.parametrize("form", ["netloc", "query"])
def test_the_first_host_that_answers_is_used(request, dialect, form):
    """The first host refuses: the store goes to the second; when none
    answers, the error names every host tried."""
    db = request.getfixturevalue(f"{'pg' if dialect == 'postgresql' else 'mysql'}_db")
    scheme, rest = db.url.split("://", 1)
    userinfo, _, location = rest.rpartition("@")
    hostport, _, database = location.partition("/")
    refused = f"127.0.0.1:{_refused_port()}"
    if form == "netloc":
        url = f"{scheme}://{userinfo}@{refused},{hostport}/{database}"
    else:
        url = f"{scheme}://{userinfo}@/{database}?host={refused}&host={hostport}"
    app = Celery("hosts", set_as_current=False)
    app.conf.update(result_backend=f"rawdb+{url}", **db.conf())
    db.apps.append(app)  # its pools closed and its tables dropped after the test
    backend = app.backend
    backend.store_result("hosts-1", {"via": "second"}, "SUCCESS")
    assert backend.get_task_meta("hosts-1")["result"] == {"via": "second"}
    dead = f"{scheme}://{userinfo}@{refused},127.0.0.1:{_refused_port()}/{database}"
    app.conf.result_backend = f"rawdb+{dead}"
    from rawbackend import DatabaseBackend
    from rawbackend.errors import ConnectFailed

    with pytest.raises(ConnectFailed, match=r"at 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+") as caught:
        DatabaseBackend(app=app, url=dead).get_task_meta("x")
    assert refused in str(caught.value)


def test_connect_starts_at_the_host_after_one_that_failed(monkeypatch):
    """A connection that failed with a disconnect verdict (a Galera node cut
    off, a read-only server: both still accept connections) sends the next
    connect to the following host of the URL, and the host that answers is
    where connects start from then on; a failure on a connection to a host
    already left behind moves nothing."""
    import pymysql

    from rawbackend import dialects

    refused = {"b:2"}
    opened = []

    class Connection:
        def __init__(self, host, port):
            self.where = f"{host}:{port}"

    def connect_host(params):
        where = f"{params['host']}:{params['port']}"
        opened.append(where)
        if where in refused:
            raise pymysql.err.OperationalError(2003, f"Can't connect to {where}")
        return Connection(params["host"], params["port"])

    monkeypatch.setattr(dialects, "_connect_mysql_host", connect_host)
    hosts = [("a", 1), ("b", 2), ("c", 3)]
    monkeypatch.setattr(dialects, "_FIRST_HOST", {})
    connect = dialects.MYSQL.connect

    first = connect({"hosts": hosts, "user": "u"})
    assert first.where == "a:1"
    assert connect({"hosts": hosts}).where == "a:1"  # a answered: it stays first
    dialects.MYSQL.server_failed(first)
    opened.clear()
    moved = connect({"hosts": hosts})
    assert (moved.where, opened) == ("c:3", ["b:2", "c:3"])  # b refuses: c
    dialects.MYSQL.server_failed(first)  # a's old connection fails too: c stays first
    assert connect({"hosts": hosts}).where == "c:3"
    dialects.MYSQL.server_failed(moved)
    refused.clear()
    assert connect({"hosts": hosts}).where == "a:1"  # after the last host, the first
    single = dialects.MYSQL.connect({"host": "a", "port": 1})
    dialects.MYSQL.server_failed(single)  # one host: nothing to move
    assert dialects._FIRST_HOST == {tuple(hosts): 0}


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cret@h1:5432,h2:5433/db?target_session_attrs=read-write",
    "postgresql+psycopg://u:s3cret@/db?host=h1:5432&host=h2:5432",
    "mysql://root:s3cret@n1:3306,n2:3307/test",
])
def test_the_workers_banner_shows_a_host_list_without_its_password(url):
    """The worker prints ``backend.as_uri()`` at start: with several hosts it
    must neither raise (kombu's parser does) nor show the password."""
    from rawbackend import DatabaseBackend

    app = Celery("banner", set_as_current=False)
    backend = DatabaseBackend(app=app, url=f"rawdb+{url}", create_tables_at_setup=False)
    shown = backend.as_uri()
    assert "s3cret" not in shown and ":**@" in shown
    assert shown.replace(":**@", ":s3cret@") == url
    assert backend.as_uri(include_password=True) == url


def test_the_banner_of_one_host_is_as_celerys():
    from kombu.utils.url import maybe_sanitize_url

    from rawbackend import DatabaseBackend

    url = "postgresql://u:s3cret@db.example.com:5432/results"
    backend = DatabaseBackend(app=Celery("banner", set_as_current=False), url=url,
                              create_tables_at_setup=False)
    assert backend.as_uri() == maybe_sanitize_url(url)
