"""Our surface against Celery 5.7.0's SQLAlchemy ``DatabaseBackend``, ``SessionManager`` and models.

A Celery engineer must find every name where Celery has it, callable the same
way: same parameter names and kinds in the same order, equal defaults; ours may
only add optional parameters after Celery's.
"""
from __future__ import annotations

import inspect
import uuid

import pytest
from celery import Celery, states
from celery.backends import database as celery_database
from celery.backends.base import BaseBackend
from celery.backends.database import models as celery_models
from celery.backends.database import session as celery_session

import rawbackend
from rawbackend import models as raw_models
from rawbackend import session as raw_session

CeleryBackend = celery_database.DatabaseBackend
RawBackend = rawbackend.DatabaseBackend

# The members Celery's DatabaseBackend defines itself (the rest is BaseBackend's, ours too).
BACKEND_MEMBERS = sorted(
    name for name in vars(CeleryBackend)
    if name not in ("__module__", "__doc__", "__dict__", "__weakref__")
)
# SPEC §1: the session manager's attributes and methods.
SESSION_MANAGER_METHODS = (
    "__init__", "_after_fork", "get_engine", "create_session", "session_factory",
    "prepare_models", "invalidate",
)
SESSION_MANAGER_ATTRIBUTES = ("forked", "prepared", "engine_callback", "_engines", "_sessions")


def assert_compatible(ours, theirs, where: str) -> None:
    """``ours`` can be called every way ``theirs`` can."""
    mine, celerys = inspect.signature(ours), inspect.signature(theirs)
    mine_params = list(mine.parameters.values())
    celery_params = list(celerys.parameters.values())
    extra = [p for p in mine_params if p.name not in celerys.parameters]
    for p in extra:
        assert p.kind is not p.VAR_POSITIONAL, f"{where}: adds *{p.name}"
        assert p.kind is p.VAR_KEYWORD or p.default is not p.empty, (
            f"{where}: adds a required parameter {p.name!r}: {mine} vs Celery's {celerys}"
        )
    shared = [p for p in mine_params if p.name in celerys.parameters]
    assert [(p.name, p.kind, p.default) for p in shared] == [
        (p.name, p.kind, p.default) for p in celery_params
    ], f"{where}: {mine} vs Celery's {celerys}"
    # Added parameters come after every one of Celery's that can be passed by
    # position, so that Celery's positional calls bind the same way.
    positional = [i for i, p in enumerate(mine_params)
                  if p.name in celerys.parameters
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for p in extra:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            assert mine_params.index(p) > max(positional, default=-1), f"{where}: {p.name!r} before Celery's"


def test_assert_compatible_can_fail():
    """The signature check refuses a renamed, a reordered, a new required parameter and another default."""
    def celerys(self, task_id, state=None, **kwargs): ...

    def renamed(self, tid, state=None, **kwargs): ...

    def reordered(self, state=None, task_id=None, **kwargs): ...

    def required(self, task_id, state=None, *, extra, **kwargs): ...

    def default(self, task_id, state=1, **kwargs): ...

    def no_kwargs(self, task_id, state=None): ...

    def fine(self, task_id, state=None, *, extra=False, **kwargs): ...

    for bad in (renamed, reordered, required, default, no_kwargs):
        with pytest.raises(AssertionError, match=bad.__name__):
            assert_compatible(bad, celerys, bad.__name__)
    assert_compatible(fine, celerys, "fine")


def test_backend_is_a_celery_backend():
    """Ours is a BaseBackend, so every inherited method is Celery's own."""
    assert issubclass(RawBackend, BaseBackend)
    assert RawBackend.__name__ == "DatabaseBackend"


@pytest.mark.parametrize("name", BACKEND_MEMBERS)
def test_backend_member(name):
    """Every member Celery's DatabaseBackend defines exists on ours, of the same kind and signature."""
    theirs = inspect.getattr_static(CeleryBackend, name)
    assert name in vars(RawBackend), f"DatabaseBackend.{name} is missing (or only inherited)"
    ours = inspect.getattr_static(RawBackend, name)
    if isinstance(theirs, property):
        assert isinstance(ours, property), f"{name} must be a property"
    elif inspect.isfunction(theirs):
        assert inspect.isfunction(ours), f"{name} must be a method"
        assert_compatible(ours, theirs, f"DatabaseBackend.{name}")
    elif isinstance(theirs, type):
        assert isinstance(ours, type), f"{name} must be a class"
        assert ours.__name__ == theirs.__name__
    else:
        assert ours == theirs, f"DatabaseBackend.{name}: {ours!r} vs Celery's {theirs!r}"


def test_class_attributes():
    """subpolling_interval, task_cls and taskset_cls as Celery has them."""
    assert RawBackend.subpolling_interval == CeleryBackend.subpolling_interval == 0.5
    assert RawBackend.task_cls is raw_models.Task
    assert RawBackend.taskset_cls is raw_models.TaskSet


def sqlite_app(tmp_path, **conf) -> Celery:
    app = Celery(f"parity-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"],
                    database_create_tables_at_setup=False, **conf)
    return app


@pytest.fixture
def both(tmp_path):
    """Celery's backend and ours, made the same way (no tables, nothing connected)."""
    made = []

    def make(**conf):
        app = sqlite_app(tmp_path, **conf)
        url = f"sqlite:///{tmp_path / 'parity.db'}"
        pair = CeleryBackend(url, app=app), RawBackend(url, app=app)
        made.append(pair[1])
        return pair

    yield make
    for backend in made:
        backend.session_manager.invalidate(backend.url)
    # Celery's models are configured by class: put its default names back.
    celery_models.Task.configure()
    celery_models.TaskSet.configure()


def test_instance_attributes(both):
    """Every attribute Celery's constructor sets exists on ours, and the settings have equal values."""
    celerys, ours = both()
    missing = set(vars(celerys)) - set(vars(ours))
    assert not missing, f"attributes Celery's backend has and ours lacks: {sorted(missing)}"
    for name in ("always_retry", "max_retries", "engine_options", "short_lived_sessions",
                 "expires", "serializer", "accept", "extended_result"):
        assert getattr(ours, name) == getattr(celerys, name), name
    assert ours.url == celerys.url
    assert isinstance(ours.session_manager, raw_session.SessionManager)


def test_retry_defaults(both):
    """always_retry True and max_retries 3 unless the user set them; as set otherwise."""
    celerys, ours = both()
    assert (ours.always_retry, ours.max_retries) == (celerys.always_retry, celerys.max_retries) == (True, 3)
    celerys, ours = both(result_backend_always_retry=False, result_backend_max_retries=7)
    assert (ours.always_retry, ours.max_retries) == (celerys.always_retry, celerys.max_retries) == (False, 7)


def test_engine_options_merge(tmp_path):
    """engine_options: conf database_engine_options merged with the constructor's, the constructor winning."""
    app = sqlite_app(tmp_path, database_engine_options={"pool_size": 3, "pool_recycle": 60})
    url = f"sqlite:///{tmp_path / 'parity.db'}"
    ours = RawBackend(url, app=app, engine_options={"pool_recycle": 15, "echo": True})
    celerys = CeleryBackend(url, app=app, engine_options={"pool_recycle": 15, "echo": True})
    assert ours.engine_options == celerys.engine_options == {"pool_size": 3, "pool_recycle": 15, "echo": True}
    default = RawBackend(url, app=sqlite_app(tmp_path))
    assert default.engine_options == {"pool_pre_ping": True, "pool_recycle": 3600}


def test_extended_task_cls(both):
    """result_extended switches task_cls to TaskExtended in both."""
    celerys, ours = both(result_extended=True)
    assert celerys.task_cls.__name__ == "TaskExtended"
    assert issubclass(ours.task_cls, raw_models.TaskExtended)
    celerys, ours = both()
    assert not issubclass(ours.task_cls, raw_models.TaskExtended)


@pytest.mark.parametrize("name", SESSION_MANAGER_METHODS)
def test_session_manager_method(name):
    """SessionManager's methods of SPEC §1 have Celery's signatures."""
    theirs = inspect.getattr_static(celery_session.SessionManager, name)
    ours = inspect.getattr_static(raw_session.SessionManager, name, None)
    assert inspect.isfunction(ours), f"SessionManager.{name} is missing"
    assert_compatible(ours, theirs, f"SessionManager.{name}")


def test_session_manager_attributes():
    """A new SessionManager has Celery's attributes, with Celery's initial values."""
    callback = object()
    celerys = celery_session.SessionManager(engine_callback=callback)
    ours = raw_session.SessionManager(engine_callback=callback)
    for name in SESSION_MANAGER_ATTRIBUTES:
        assert getattr(ours, name) == getattr(celerys, name), name
    assert ours.engine_callback is callback
    assert raw_session.PREPARE_MODELS_MAX_RETRIES == celery_session.PREPARE_MODELS_MAX_RETRIES


MODELS = [
    ("Task", ("tid-1",)),
    ("TaskExtended", ("tid-1",)),
    ("TaskSet", ("gid-1", b"payload")),
]


@pytest.mark.parametrize("name, args", MODELS, ids=[m[0] for m in MODELS])
def test_model_to_dict_and_repr(name, args):
    """Each model is made with Celery's positional arguments, and has its to_dict() keys and __repr__."""
    theirs = getattr(celery_models, name)(*args)
    ours = getattr(raw_models, name)(*args)
    if hasattr(theirs, "status"):
        theirs.status = ours.status = states.STARTED
    assert list(ours.to_dict()) == list(theirs.to_dict())
    assert repr(ours) == repr(theirs)
    for key in ("task_id", "taskset_id", "result"):
        if hasattr(theirs, key):
            assert getattr(ours, key) == getattr(theirs, key)


@pytest.mark.parametrize("name", ["Task", "TaskExtended", "TaskSet"])
def test_model_configure(name):
    """configure(schema=None, name=None), as Celery's; it sets the table of a bound copy only."""
    theirs = inspect.getattr_static(getattr(celery_models, name), "configure")
    ours = inspect.getattr_static(getattr(raw_models, name), "configure")
    assert isinstance(ours, classmethod)
    assert_compatible(ours.__func__, theirs.__func__, f"{name}.configure")
    model = getattr(raw_models, name)
    bound = model.bound()
    bound.configure(schema="s1", name="n1")
    assert (bound.table_schema, bound.table_name) == ("s1", "n1")
    assert (model.table_schema, model.table_name) == (None, model.__tablename__)
    bound.configure()
    assert (bound.table_schema, bound.table_name) == (None, model.__tablename__)


@pytest.mark.parametrize("name", ["Task", "TaskExtended", "TaskSet"])
def test_model_table_names(name):
    """Default table names and the columns of each model are Celery's."""
    theirs = getattr(celery_models, name)
    ours = getattr(raw_models, name)
    assert ours.__tablename__ == theirs.__tablename__
    # The mapper's columns: Celery's Task and TaskExtended share one Table object.
    assert set(ours.columns()) | {"id"} == {a.key for a in theirs.__mapper__.column_attrs}
