"""Classify driver errors: is it worth trying again, must the connection go?
And the error for a value the database can't hold."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import BackendError
from kombu.exceptions import EncodeError

from .errcodes import DISCONNECT, Verdict

__all__ = ("ConnectFailed", "ErrorRules", "ReadOnlyServer", "Verdict", "ValueTooLarge", "classify")


class ConnectFailed(BackendError):
    """A new connection could not be made; says to what, and why (the
    driver's error is the cause). Classified as that error is."""

    def __init__(self, message: str, verdict: Verdict | None):
        super().__init__(message)
        self.verdict = verdict


class ReadOnlyServer(BackendError):
    """A write reached a server that takes none (a standby); says which, and
    how to reach the primary (the driver's error is the cause). Classified
    as that error is: the connection is dropped and the next one may reach a
    new primary."""

    def __init__(self, message: str, verdict: Verdict):
        super().__init__(message)
        self.verdict = verdict


class ValueTooLarge(EncodeError, ValueError):
    """A result or traceback larger than its column, or a row larger than the
    server takes in one statement: nothing was written.

    A ``ValueError`` (the value is wrong, not the database: never retried),
    and kombu's ``EncodeError``: Celery's worker (``celery/app/trace.py``)
    handles an ``EncodeError`` from ``mark_as_done`` as the task's failure
    and stores it with this message, as it does a result its serializer
    can't encode, instead of reporting an internal error.
    """


@dataclass(frozen=True)
class ErrorRules:
    """How one driver reports errors, and which of them are retryable."""

    driver: str  # the module whose exceptions these are
    code_of: Callable[[BaseException], Any]  # the code an exception carries, or None
    codes: dict  # exact code -> Verdict
    classes: dict = field(default_factory=dict)  # code prefix -> Verdict
    class_width: int = 0  # how many leading characters make a code's class
    # Exceptions that carry no code, by class name in the driver module: a
    # connection closed under us, a socket that died.
    codeless: dict[str, Verdict] = field(default_factory=dict)
    # Codeless exceptions of this class (by name in the driver module) told
    # apart by the start of their message, lowercase -> Verdict: the driver's
    # documented texts only, never a guess on an arbitrary exception.
    message_class: str = ""
    messages: dict[str, Verdict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.messages and not self.message_class:
            raise ValueError(f"ErrorRules({self.driver}): messages need the message_class they apply to")
        for start in self.messages:
            if start != start.lower():
                raise ValueError(f"ErrorRules({self.driver}): message {start!r} must be lowercase")

    def verdict(self, exc: BaseException) -> Verdict | None:
        code = self.code_of(exc)
        if code:
            found = self.codes.get(code)
            if found is None and self.class_width:
                found = self.classes.get(str(code)[: self.class_width])
            return found
        module = importlib.import_module(self.driver)
        if self.messages and isinstance(exc, getattr(module, self.message_class)):
            message = str(exc).lower()
            for start, found in self.messages.items():
                if message.startswith(start):
                    return found
        for name, found in self.codeless.items():
            if isinstance(exc, getattr(module, name)):
                return found
        return None


def classify(rules: ErrorRules, exc: BaseException) -> Verdict | None:
    """The verdict on ``exc`` (None: not retryable, let it propagate)."""
    if isinstance(exc, (ConnectFailed, ReadOnlyServer)):
        return exc.verdict
    if isinstance(exc, ConnectionError):
        # An OSError from a socket the driver did not wrap.
        return DISCONNECT
    return rules.verdict(exc)
