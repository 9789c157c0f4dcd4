"""Deadlines and waits, on one clock: ``time.monotonic``.

A deadline is a point on that clock, never a wall-clock time, so a clock step (NTP, a suspended
VM) neither cuts a solve short nor stretches a wait. Every solver phase, step timeout and poll
loop takes a :class:`Deadline`, and every "wait until this holds" goes through :func:`wait_until`,
so a timeout reads the same wherever it happens.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Deadline:
    """A moment on :data:`clock`: work stops when it has passed."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(clock() + seconds)

    def remaining(self) -> float:
        """Seconds left, never below zero."""
        return max(self.at - clock(), 0.0)

    def passed(self) -> bool:
        return clock() > self.at

    def share(self, ratio: float) -> Deadline:
        """A deadline ``ratio`` of the time left from now: a phase's part of a budget."""
        return Deadline(clock() + self.remaining() * ratio)


class WaitTimeout(TimeoutError):
    """What was waited for did not happen in time; the message says what it was."""


def wait_until(
    predicate: Callable[[], T],
    timeout_seconds: float,
    what: str,
    interval_seconds: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that.

    Raises :class:`WaitTimeout` naming ``what`` once ``timeout_seconds`` pass; the predicate is
    tried once more at the deadline, so a condition that holds by then is never reported late.
    """
    deadline = Deadline.after(timeout_seconds)
    while True:
        passed = deadline.passed()
        value = predicate()
        if value:
            return value
        if passed:
            raise WaitTimeout(f"{what} did not happen within {timeout_seconds:g} s")
        sleep(min(interval_seconds, max(deadline.remaining(), 0.001)))


def process_age_seconds(stat_path: str = "/proc/self/stat", uptime_path: str = "/proc/uptime") -> float:
    """How long this process has run, to the clock tick: ``/proc/self/stat``'s start time against
    ``/proc/uptime``, both since boot. (``psutil``'s create_time adds a boot time rounded to whole
    seconds, which overstated start-up by up to a second.)"""
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    started_after_boot = int(fields[19]) / ticks_per_second  # field 22, counted after "pid (comm)"
    with open(uptime_path) as uptime:
        since_boot = float(uptime.read().split()[0])
    return max(since_boot - started_after_boot, 0.0)
