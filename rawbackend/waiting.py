"""How long a waiter pauses between polls for a result.

Celery's ``wait_for`` sleeps ``interval`` (0.5 s) between polls, so a result
stored just after a poll reaches its waiter half a second late. Here the first
re-check comes after a few milliseconds and the pauses grow geometrically up
to ``interval``: a quick task is seen within milliseconds, and a long wait
costs no more than one poll per ``interval`` once it is past its first second.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

__all__ = ("pauses", "FIRST_PAUSE", "BACKOFF")

FIRST_PAUSE = 0.002  # seconds before the first re-check
BACKOFF = 2.0  # each pause this much longer than the one before, up to interval
# With interval 0.5: 9 polls in the first second (2, 6, 14 ... 510 ms), then 2
# a second. (x1.5 took 1.7 s to reach the interval: 2.5 polls a second there.)


def pauses(interval: float, timeout: float | None = None, first: float = FIRST_PAUSE,
           factor: float = BACKOFF) -> Iterator[float]:
    """The pauses between polls, in seconds; with ``timeout``, none reaches
    past the deadline (counted from this call), and they end when it has
    passed: the caller then raises its timeout error."""
    if interval is None:
        interval = 0.5  # as Celery's get_many
    if not interval >= 0:
        raise ValueError(f"rawbackend: the interval between polls must be >= 0 seconds, got {interval!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    return _pauses(min(first, interval), interval, factor, deadline)


def _pauses(pause: float, interval: float, factor: float, deadline: float | None) -> Iterator[float]:
    while True:
        if deadline is None:
            yield pause
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            yield min(pause, left)
        pause = min(pause * factor, interval)
