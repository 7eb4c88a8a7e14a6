"""Clocks the runner ticks on.

A real bench runs on the wall clock. A simulated bench runs on a virtual clock that the
runner advances tick by tick: `speed=None` runs as fast as the CPU allows, `speed=1` in real
time, `speed=k` k times faster than real time. Both sleep in short slices so that a stop
request (Ctrl+C, SIGTERM) is honoured within a fraction of a second.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

STOP_POLL_S = 0.05


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock started (test time)."""

    def unix_time(self) -> float:
        """Unix time of now()."""

    def sleep_until(self, t: float, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Return at test time `t`, or earlier once `should_stop()` is true."""


def _sleep_wall(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep in slices; True if it was cut short by a stop request."""
    deadline = time.monotonic() + seconds
    while True:
        if should_stop():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(remaining, STOP_POLL_S))


class WallClock:
    """Test time on the wall clock; `start_s` continues a resumed test at its test time."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._start_monotonic = time.monotonic() - start_s
        self._start_unix = time.time() - start_s

    def now(self) -> float:
        return time.monotonic() - self._start_monotonic

    def unix_time(self) -> float:
        return self._start_unix + self.now()

    def sleep_until(self, t: float, should_stop: Callable[[], bool] = lambda: False) -> None:
        _sleep_wall(t - self.now(), should_stop)


class VirtualClock:
    """Virtual test time; `speed` real-time multiplier, None for as fast as possible."""

    def __init__(self, speed: float | None = None, start_unix: float | None = None, start_s: float = 0.0) -> None:
        """`start_unix`: the Unix time of test time 0; `start_s`: the test time to start at."""
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive or None (as fast as possible), got {speed}")
        self.speed = speed
        self._t = start_s
        self._start_unix = time.time() if start_unix is None else start_unix

    def now(self) -> float:
        return self._t

    def unix_time(self) -> float:
        return self._start_unix + self._t

    def sleep_until(self, t: float, should_stop: Callable[[], bool] = lambda: False) -> None:
        if t <= self._t:
            return
        if self.speed is not None and _sleep_wall((t - self._t) / self.speed, should_stop):
            return  # stopped early: virtual time stays where it was
        self._t = t
