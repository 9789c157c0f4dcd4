"""The schedule the closed loop follows: what ``gpupack plan --demand-series FILE --schedule
--format json`` writes, read and checked once, into typed steps in base units.

Only what following needs is read: ``start`` (when step 0 begins), ``step_seconds``, and per step
its ``devices`` with each copy's ``model``, ``config`` and ``rate_per_second``. The devices are
the plan's abstract ones (``gpu-1``...); the follower maps them onto the live fleet. The moves
between steps are not read: they are re-planned from the placement live at the time.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpupack.demand_series import parse_timestamp
from gpupack.errors import InputError


@dataclass(frozen=True)
class ScheduledCopy:
    model: str
    config: str  # the profiled configuration it runs in this step
    rate_per_second: float  # what it serves in this step


@dataclass(frozen=True)
class ScheduledStep:
    index: int
    devices: Mapping[str, tuple[ScheduledCopy, ...]]  # the plan's device name -> its copies

    def models_on(self, device: str) -> frozenset[str]:
        return frozenset(c.model for c in self.devices[device])


@dataclass(frozen=True)
class FollowedSchedule:
    path: str
    start_seconds: float  # when step 0 begins (epoch seconds)
    step_seconds: float
    steps: tuple[ScheduledStep, ...]
    digest: str  # of the file's bytes: a schedule planned anew is followed anew, even at the same path

    def start_of(self, index: int) -> float:
        return self.start_seconds + index * self.step_seconds

    def due(self, now_seconds: float, lead_seconds: float) -> int:
        """The step whose start lies within ``lead_seconds`` of now: start + k·step <= now + lead <
        start + (k+1)·step. Below 0 before the schedule, ``len(steps)`` or more after it."""
        return math.floor((now_seconds + lead_seconds - self.start_seconds) / self.step_seconds)


def load_schedule(path: str | Path) -> FollowedSchedule:
    """Raises :class:`InputError` (exit 2) naming the file and the field."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the schedule: {e.strerror or e}", path=where) from e
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise InputError("not JSON: write it with gpupack plan --demand-series FILE --schedule --format json",
                         path=where, line=line) from e
    return parse_schedule(document, where, hashlib.sha256(data).hexdigest())


def parse_schedule(document: Any, path: str, digest: str = "") -> FollowedSchedule:
    if not isinstance(document, dict) or not isinstance(document.get("schedule"), list):
        raise InputError("not a schedule (no 'schedule' list): write it with gpupack plan --demand-series FILE "
                         "--schedule --format json", path=path)
    if document.get("start") is None:
        raise InputError("missing: when step 0 begins. Give the demand series a start: (like "
                         "start: 2026-12-07T00:00:00Z) and plan again, or plan with --forecast-weeks, whose "
                         "forecast starts where the history ends", path=path, field="start")
    try:
        start = parse_timestamp(document["start"])
    except ValueError as e:
        raise InputError(str(e), path=path, field="start") from e
    step_seconds = _number(document.get("step_seconds"))
    if step_seconds is None or step_seconds <= 0:
        raise InputError("must be a number of seconds above 0", path=path, field="step_seconds")
    if not document["schedule"]:
        raise InputError("has no step", path=path, field="schedule")
    steps = tuple(_step(entry, k, path) for k, entry in enumerate(document["schedule"]))
    return FollowedSchedule(path, start, step_seconds, steps, digest)


def _step(entry: Any, k: int, path: str) -> ScheduledStep:
    field = f"schedule[{k}]"
    if not isinstance(entry, dict):
        raise InputError("must be a step: {step, devices, ...}", path=path, field=field)
    if entry.get("step") != k:
        raise InputError(f"step must be {k}: steps are listed in order from 0", path=path, field=f"{field}.step")
    devices = entry.get("devices")
    if not isinstance(devices, list):
        raise InputError("must be a list of devices, each with its copies", path=path, field=f"{field}.devices")
    placed: dict[str, tuple[ScheduledCopy, ...]] = {}
    for d, device in enumerate(devices):
        at = f"{field}.devices[{d}]"
        if not isinstance(device, dict) or not isinstance(device.get("name"), str) or not device["name"]:
            raise InputError("must have a name", path=path, field=f"{at}.name")
        if device["name"] in placed:
            raise InputError(f"device {device['name']} is listed twice", path=path, field=f"{at}.name")
        copies = device.get("copies")
        if not isinstance(copies, list):
            raise InputError("must be a list of copies", path=path, field=f"{at}.copies")
        placed[device["name"]] = tuple(_copy(c, f"{at}.copies[{n}]", path) for n, c in enumerate(copies))
    return ScheduledStep(k, placed)


def _copy(copy: Any, field: str, path: str) -> ScheduledCopy:
    if not isinstance(copy, dict):
        raise InputError("must be a copy: {model, config, rate_per_second}", path=path, field=field)
    for key in ("model", "config"):
        if not isinstance(copy.get(key), str) or not copy[key]:
            raise InputError("must be a name", path=path, field=f"{field}.{key}")
    rate = _number(copy.get("rate_per_second"))
    if rate is None or rate < 0:
        raise InputError("must be a rate per second, 0 or above", path=path, field=f"{field}.rate_per_second")
    return ScheduledCopy(copy["model"], copy["config"], rate)


def _number(value: Any) -> float | None:
    """A finite JSON number, or None (a boolean is not one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
