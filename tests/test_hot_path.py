"""The hot path's shortcuts keep Celery's behaviour: the bound encoder and
decoder (``DatabaseBackend.encode`` / ``decode``), and the cursor a server
connection keeps for its next statement."""
from __future__ import annotations

import uuid

import pytest
from celery import states
from celery.backends.base import BaseBackend
from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError


def test_encode_writes_what_celery_writes(db):
    """The same bytes as Celery's own ``encode``, for JSON and for pickle."""
    value = {"n": 1, "text": "é", "items": [1.5, None, True]}
    for serializer in ("json", "pickle"):
        backend = db.backend(result_serializer=serializer, accept_content=[serializer],
                             result_accept_content=[serializer])
        assert backend.encode(value) == BaseBackend.encode(backend, value)
        task_id = str(uuid.uuid4())
        backend.store_result(task_id, value, states.SUCCESS)
        assert backend.get_task_meta(task_id)["result"] == value


def test_encode_error_is_kombus(sqlite_db):
    """What the serializer can't encode is kombu's EncodeError, its cause kept."""
    backend = sqlite_db.backend()
    with pytest.raises(EncodeError, match="not JSON serializable") as info:
        backend.encode(object())
    assert isinstance(info.value.__cause__, TypeError)


def test_decode_refuses_a_content_type_not_accepted(sqlite_db):
    """A backend that writes pickle but accepts only JSON refuses to read
    pickle, as Celery's ``decode`` does (kombu's ContentDisallowed)."""
    backend = sqlite_db.backend(result_serializer="pickle", result_accept_content=["json"])
    payload = BaseBackend.encode(backend, {"a": 1})
    with pytest.raises(ContentDisallowed):
        backend.decode(payload)
    accepting = sqlite_db.backend(result_serializer="pickle", result_accept_content=["pickle"])
    assert accepting.decode(payload) == {"a": 1}


def test_decode_error_is_kombus(sqlite_db):
    backend = sqlite_db.backend()
    with pytest.raises(DecodeError):
        backend.decode(b"{not json")
    assert backend.decode(None) is None


def _idle(backend):
    pool = backend.session_manager.get_engine(backend.url)
    return list(pool._idle)


def test_server_connection_keeps_one_cursor(server_db):
    """On a server, a connection's statements share one cursor; after an error
    the next statement gets a new one, and works."""
    backend = server_db.backend()
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, 1, states.SUCCESS)
    (pooled,) = _idle(backend)
    cursor = pooled.cursor
    assert cursor is not None
    assert backend.get_task_meta(task_id)["result"] == 1
    assert pooled.cursor is cursor
    with backend.ResultSession() as session:
        with pytest.raises(Exception, match="no_such_table"):  # the driver's own error class
            session.fetch_one("SELECT no_such_column FROM no_such_table")
    assert pooled.cursor is None
    assert backend.get_task_meta(task_id)["result"] == 1
    assert pooled.cursor is not None and pooled.cursor is not cursor


def test_sqlite_keeps_no_cursor(sqlite_db):
    """On SQLite, each statement's cursor is closed (an open one could hold a
    read transaction)."""
    backend = sqlite_db.backend()
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, 1, states.SUCCESS)
    assert backend.get_task_meta(task_id)["result"] == 1
    assert all(pooled.cursor is None for pooled in _idle(backend))
