"""Models measured together: a group loaded on one server, every model driven at the same time.

Profiling each model alone and adding the peaks (what the planner does) misses what models do to
each other: utilisation is not additive, and a model whose p99 is fine on a quiet device breaks
its budget once a neighbour brings the device near capacity, because queueing delay grows without
bound as load nears it. A :class:`GroupRun` measures that directly: it loads every member of a
group (each in its own configuration), drives them all at once (each at its request rate, open
loop, or its concurrency, closed loop) from one event loop, samples the device's peaks over the
same window, and unloads them all, however the run ends. ``gpupack verify`` replays a plan's
devices with it; ``gpupack profile --colocate`` records groups with it in the profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping, Sequence

from gpupack.errors import GpupackError
from gpupack.measurement import SourceError
from gpupack.profiler.control import ModelLoadError, ServerControl, ServerGoneError
from gpupack.profiler.guard import Guard
from gpupack.profiler.loadgen import (
    Load, LoadGenerator, LoadWindow, UnsupportedModelError, signature_from_config,
)
from gpupack.profiler.sampler import PeakSampler, Peaks, Probe
from gpupack.profiler.stats import PointResult, TritonCounters, measure_point

log = logging.getLogger(__name__)

RELEASE_TIMEOUT_SECONDS = 30.0
_BATCH_SIZE = 1  # rates are inferences per second, and a plan's rates are per single-item request


@dataclass(frozen=True)
class Member:
    """One model of a group, the configuration it is loaded in and the load it is driven at."""

    model: str
    load: Load  # no rate or concurrency: the model is loaded and left idle
    # Turns the model's own config (as the server reads it) into the one to load; None: as it is.
    configure: Callable[[Mapping[str, Any]], dict] | None = None

    @property
    def driven(self) -> bool:
        return bool(self.load.concurrency) or bool(self.load.request_rate_per_second)


@dataclass(frozen=True)
class GroupMeasurement:
    """What one window of a group did: each driven model's point and the device's peaks."""

    points: Mapping[str, PointResult]  # per driven model; its own memory and utilisation are not separable
    peaks: Peaks  # the device over the window, the server and every member included
    failures: Mapping[str, str] = field(default_factory=dict)  # model -> why it was not measured


class GroupRun:
    """Measures groups on the server at ``address``; collaborators are passed in as the sweep's are.

    ``on_loaded(model, loaded)`` hears of each load before it is made and of each unload once done
    (the guard that restores a server after ``kill -9`` listens to it).
    """

    def __init__(
        self,
        address: str,
        control: ServerControl,
        probe_factory: Callable[[], Probe],
        *,
        warmup_seconds: float,
        on_loaded: Callable[[str, bool], None] = lambda model, loaded: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.address = address
        self._control = control
        self._probe_factory = probe_factory
        self._warmup_seconds = warmup_seconds
        self._on_loaded = on_loaded
        self._clock = clock
        self._sleep = sleep
        self._own_configs: dict[str, dict] = {}  # model -> its config as the repository has it

    def measure(self, members: Sequence[Member], duration_seconds: float) -> GroupMeasurement:
        """Load the group, drive it for ``duration_seconds`` after a warm-up, unload it.

        A member that fails to load is named in ``failures`` and the rest are measured without it.
        Raises :class:`ServerGoneError` when the server dies, after unloading what it can."""
        loaded: list[str] = []
        failures: dict[str, str] = {}
        try:
            signatures = {}
            for member in members:
                try:
                    self._load(member, loaded)
                    signatures[member.model] = signature_from_config(self._control.config(member.model))
                except (ModelLoadError, UnsupportedModelError) as e:
                    failures[member.model] = str(e)
            driven = [m for m in members if m.driven and m.model in signatures]
            generators = {m.model: LoadGenerator(self.address, signatures[m.model]) for m in driven}
            peaks, windows, before, after = self._window(driven, generators, duration_seconds)
        finally:
            self._unload(loaded)
        points = {m.model: measure_point(m.model, windows[m.model], before[m.model], after[m.model], Peaks(), Peaks())
                  for m in driven}
        return GroupMeasurement(points, peaks, failures)

    def baseline(self, duration_seconds: float) -> Peaks:
        """The server alone (nothing loaded) over one window."""
        sampler = PeakSampler(self._probe_factory()).start()
        try:
            self._sleep(duration_seconds)
        finally:
            peaks = sampler.stop()
        self._raise_if_gone(sampler, "measuring the server alone")
        return peaks

    def _load(self, member: Member, loaded: list[str]) -> None:
        """Loaded as the repository has it, or reloaded in place with its configuration: the model's
        own config is read from the server once, the first time it is loaded."""
        self._on_loaded(member.model, True)
        loaded.append(member.model)
        own = self._own_configs.get(member.model)
        if member.configure is None or own is None:
            self._control.load(member.model)
            own = self._own_configs.setdefault(member.model, self._control.config(member.model))
        if member.configure is not None:
            self._control.load(member.model, member.configure(own))

    def _window(self, driven: list[Member], generators: Mapping[str, LoadGenerator], duration_seconds: float
                ) -> tuple[Peaks, dict[str, LoadWindow], dict[str, TritonCounters], dict[str, TritonCounters]]:
        # The warm-up is sampled too: a peak the group reaches then is a peak it reaches.
        sampler = PeakSampler(self._probe_factory()).start()
        try:
            if self._warmup_seconds > 0 and driven:
                _drive_together(driven, generators, self._warmup_seconds)
            before = {m.model: self._control.counters(m.model) for m in driven}
            windows = _drive_together(driven, generators, duration_seconds) if driven else {}
            if not driven:
                self._sleep(duration_seconds)
        finally:
            peaks = sampler.stop()
        self._raise_if_gone(sampler, f"driving {', '.join(m.model for m in driven) or 'an idle group'}")
        for model, window in windows.items():
            if window.error_count and not self._control.live():
                raise ServerGoneError(f"server {self.address} stopped answering while driving {model}: "
                                      f"{window.error_messages[0]}")
        after = {m.model: self._control.counters(m.model) for m in driven}
        return peaks, windows, before, after

    def _unload(self, loaded: list[str]) -> None:
        """Every member loaded, unloaded, even when one unload fails; then wait for their processes
        to exit, so the next group starts from the server alone."""
        error: GpupackError | None = None
        for model in loaded:
            try:
                self._control.unload(model)
                self._on_loaded(model, False)
            except ServerGoneError as e:
                if not self._control.live():
                    raise  # a dead server holds nothing; the caller reports the death
                error = error or e
        if error is not None:
            raise error
        if loaded:
            self._wait_released(loaded)

    def _wait_released(self, models: list[str]) -> None:
        """Triton reports a model unloaded before its backend process has exited and freed memory."""
        probe = self._probe_factory()
        deadline = self._clock() + RELEASE_TIMEOUT_SECONDS
        try:
            while not probe.released():
                if self._clock() > deadline:
                    log.warning("%s: backend processes still running %.0fs after unload; the next group's "
                                "peaks may include them", ", ".join(models), RELEASE_TIMEOUT_SECONDS)
                    return
                self._sleep(0.05)
        except SourceError as e:
            raise ServerGoneError(f"server {self.address} is gone after unloading {', '.join(models)}: {e}") from e

    def _raise_if_gone(self, sampler: PeakSampler, where: str) -> None:
        if sampler.error is not None and not self._control.live():
            raise ServerGoneError(f"server {self.address} died while {where}: {sampler.error}")


def _drive_together(members: Sequence[Member], generators: Mapping[str, LoadGenerator],
                    duration_seconds: float) -> dict[str, LoadWindow]:
    """Every member's load at once, from one event loop: the windows start within microseconds of
    each other, so each model meets its neighbours' traffic for the whole window."""

    async def drive() -> list[LoadWindow]:
        return await asyncio.gather(*(_drive(generators[m.model], m.load, duration_seconds) for m in members))

    return dict(zip((m.model for m in members), asyncio.run(drive())))


def _drive(generator: LoadGenerator, load: Load, duration_seconds: float) -> Coroutine[Any, Any, LoadWindow]:
    if load.request_rate_per_second:
        return generator.drive_at_rate(_BATCH_SIZE, load.request_rate_per_second, duration_seconds)
    assert load.concurrency is not None
    return generator.drive(_BATCH_SIZE, load.concurrency, duration_seconds)


class Guards:
    """One guard process per model loaded on a server we were given, told of each load and unload
    (``GroupRun``'s ``on_loaded``): a ``kill -9`` mid-group still leaves nothing loaded. The
    profiler's guard watches one model at a time, and a group has several."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._guards: dict[str, Guard] = {}

    def __enter__(self) -> "Guards":
        return self

    def loaded(self, model: str, loaded: bool) -> None:
        if model not in self._guards:
            self._guards[model] = Guard(self._address)
        self._guards[model].loaded(model if loaded else None)

    def __exit__(self, *exc_info: object) -> None:
        for guard in self._guards.values():
            guard.close()

