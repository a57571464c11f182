"""rawbackend: Celery's database result backend on raw DB-API drivers.

Use it with ``result_backend = "rawdb+postgresql://..."`` (or ``rawdb+mysql://``,
``rawdb+sqlite:///results.db``), or import ``DatabaseBackend`` directly.
"""
from .backend import DatabaseBackend
from .models import Task, TaskExtended, TaskSet
from .session import Session, SessionManager

__all__ = ("DatabaseBackend", "SessionManager", "Session", "Task", "TaskExtended", "TaskSet")
__version__ = "0.1.0"
