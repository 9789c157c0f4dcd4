"""The measurement plan: the server alone first, then each model alone, batch x load.

A load is a concurrency (closed loop) or, with ``request_rates_per_second``, a request rate (open
loop); a rate the server serves short of ends that batch size's ramp, as saturation does.

Per model: explicit load, a warm-up (once per load: a model already warm needs no second one),
then for each batch size a rising concurrency ramp (each point measured in windows until stable,
:class:`~gpupack.profiler.stats.Stability`, while the sampler records peaks), then unload and wait
until the model's backend processes are gone, so the next model starts from the baseline again.

The run always ends in a :class:`SweepResult` holding what was measured, whatever stopped it:
Ctrl-C (``interrupted``), a dead server (``server_error``) or the end of the plan. Whatever it
loaded, it unloads (a dead server has nothing left to unload).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from gpupack.errors import ExitStatus, GpupackError
from gpupack.measurement import SourceError
from gpupack.profiler.control import ModelLoadError, ServerControl, ServerGoneError
from gpupack.profiler.loadgen import Load, LoadWindow, ModelSignature, UnsupportedModelError, signature_from_config
from gpupack.profiler.sampler import PeakSampler, Peaks, Probe
from gpupack.profiler.stats import PointResult, PointStatus, Stability, WindowSeries
from gpupack.units import counted

log = logging.getLogger(__name__)

RELEASE_TIMEOUT_SECONDS = 30.0


class ServerNotIdleError(GpupackError):
    exit_status = ExitStatus.USAGE


@dataclass(frozen=True)
class SweepPlan:
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    concurrencies: tuple[int, ...]
    duration_seconds: float
    warmup_seconds: float
    latency_bound_seconds: float | None = None
    request_rates_per_second: tuple[float, ...] = ()  # given: the load levels are these rates instead
    stability_tolerance_ratio: float = 0.10  # --stability-percentage, as a ratio

    @property
    def stability(self) -> Stability:
        """``duration_seconds`` is the most a point measures: windows of a tenth of it, until stable."""
        return Stability.within(self.duration_seconds, self.stability_tolerance_ratio)

    @property
    def loads(self) -> tuple[Load, ...]:
        if self.request_rates_per_second:
            return tuple(Load(request_rate_per_second=r) for r in self.request_rates_per_second)
        return tuple(Load(concurrency=c) for c in self.concurrencies)

    @property
    def point_count(self) -> int:
        return len(self.models) * len(self.batch_sizes) * len(self.loads)


@dataclass
class ModelOutcome:
    model: str
    points: list[PointResult] = field(default_factory=list)
    failure: str | None = None  # why the model was skipped (it did not load, ...)
    stopped: str | None = None  # why its sweep ended before the plan did


@dataclass
class SweepResult:
    baseline: Peaks | None = None
    models: list[ModelOutcome] = field(default_factory=list)
    interrupted: bool = False
    server_error: str | None = None


class LoadRunner(Protocol):
    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow: ...

    def run_at_rate(self, batch_size: int, rate_per_second: float, duration_seconds: float) -> LoadWindow: ...


def run_load(loadgen: LoadRunner, batch_size: int, load: Load, duration_seconds: float) -> LoadWindow:
    if load.request_rate_per_second is not None:
        return loadgen.run_at_rate(batch_size, load.request_rate_per_second, duration_seconds)
    assert load.concurrency is not None
    return loadgen.run(batch_size, load.concurrency, duration_seconds)


@dataclass(frozen=True)
class Progress:
    points_done: int
    points_total: int
    model: str | None
    elapsed_seconds: float
    remaining_seconds: float | None


class Sweep:
    """Collaborators are passed in: the control plane, a probe factory (a fresh probe per model,
    so it sees that model's new processes at once) and a load-generator factory."""

    def __init__(
        self,
        plan: SweepPlan,
        control: ServerControl,
        probe_factory: Callable[[], Probe],
        loadgen_factory: Callable[[ModelSignature], LoadRunner],
        *,
        on_progress: Callable[[Progress], None] = lambda progress: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        shared_with: frozenset[str] = frozenset(),
    ) -> None:
        self.plan = plan
        self.shared_with = shared_with  # models loaded before the run (--shared-server): left alone
        self._control = control
        self._probe_factory = probe_factory
        self._loadgen_factory = loadgen_factory
        self._on_progress = on_progress
        self._clock = clock
        self._sleep = sleep
        self._started = 0.0
        self._done = 0
        self._total = plan.point_count

    def run(self) -> SweepResult:
        result = SweepResult()
        self._started = self._clock()
        already = [model for model in self._control.ready_models() if model not in self.shared_with]
        if already:
            raise ServerNotIdleError(
                f"server {self._control.address} already has {', '.join(already)} loaded, which would count in "
                "every number: profile on a server with no model loaded, or give --shared-server to measure "
                "beside them, leaving them alone")
        try:
            result.baseline = self._baseline()
            for model in self.plan.models:
                outcome = ModelOutcome(model)
                result.models.append(outcome)
                self._profile_model(outcome, result.baseline)
        except KeyboardInterrupt:
            result.interrupted = True
        except ServerGoneError as e:
            result.server_error = str(e)
        return result

    def _baseline(self) -> Peaks:
        """Table 1: the server alone, for as long as a stable point measures."""
        self._report(None)
        sampler = PeakSampler(self._probe_factory()).start()
        try:
            self._sleep(self.plan.stability.shortest_seconds)
        finally:
            peaks = sampler.stop()
        self._raise_if_gone(sampler, "measuring the server alone")
        return peaks

    def _profile_model(self, outcome: ModelOutcome, baseline: Peaks) -> None:
        model = outcome.model
        self._report(model)
        try:
            self._control.load(model)
        except ModelLoadError as e:
            outcome.failure = str(e)
            log.warning("%s; skipping it", e)
            self._skip(len(self.plan.batch_sizes) * len(self.plan.loads), model)
            self._wait_released(model)
            return
        try:
            signature = signature_from_config(self._control.config(model))
            self._sweep(outcome, signature, baseline)
        except UnsupportedModelError as e:
            outcome.failure = str(e)
            log.warning("%s; skipping it", e)
        finally:
            self._unload(model)

    def _sweep(self, outcome: ModelOutcome, signature: ModelSignature, baseline: Peaks) -> None:
        probe = self._probe_factory()
        loadgen = self._loadgen_factory(signature)
        per_batch = len(self.plan.loads)
        warm_up = True
        for b, batch_size in enumerate(self.plan.batch_sizes):
            if not signature.supports_batch(batch_size):
                outcome.stopped = f"batch size {batch_size} is above max_batch_size {signature.max_batch_size}"
                self._skip(per_batch * (len(self.plan.batch_sizes) - b), outcome.model)
                return
            for c, load in enumerate(self.plan.loads):
                point = self._point(outcome.model, loadgen, probe, batch_size, load, baseline, warm_up)
                warm_up = False
                outcome.points.append(point)
                self._done += 1
                self._report(outcome.model)
                if point.status is PointStatus.OK and not point.short_of_rate:
                    continue
                if point.status is PointStatus.OK:  # a higher rate would only be dropped too
                    outcome.stopped = f"saturated: served short of the offered rate at batch {batch_size}, {load}"
                    self._skip(per_batch - c - 1, outcome.model)
                    break
                # More concurrency only queues more; more batch only costs more per request.
                ends_model = point.status is PointStatus.ERRORS or c == 0
                outcome.stopped = _why_stopped(point)
                self._skip(per_batch - c - 1, outcome.model)
                if ends_model:
                    self._skip(per_batch * (len(self.plan.batch_sizes) - b - 1), outcome.model)
                    return
                break

    def _point(self, model: str, loadgen: LoadRunner, probe: Probe, batch_size: int, load: Load,
               baseline: Peaks, warm_up: bool) -> PointResult:
        """One point, measured in windows until stable; ``warm_up`` for the first point after a load."""
        stability = self.plan.stability
        # The warm-up is sampled too: a peak it reaches is a peak the model reaches at this point.
        sampler = PeakSampler(probe).start()
        try:
            if warm_up and self.plan.warmup_seconds > 0:
                run_load(loadgen, batch_size, load, self.plan.warmup_seconds)
            series = WindowSeries(model, self._control.counters(model), stability)
            lost: str | None = None  # a failed request's message, the server having died
            while not series.done and lost is None:
                window = run_load(loadgen, batch_size, load, stability.window_seconds)
                if window.error_count and not self._control.live():
                    lost = window.error_messages[0] if window.error_messages else "no answer"
                else:
                    series.add(window, self._control.counters(model))
        finally:
            peaks = sampler.stop()
        where = f"profiling {model} at batch {batch_size}, {load}"
        self._raise_if_gone(sampler, where)
        if lost is not None:
            raise ServerGoneError(f"server {self._control.address} stopped answering while {where}: {lost}")
        return series.point(peaks, baseline, self.plan.latency_bound_seconds)

    def _unload(self, model: str) -> None:
        try:
            self._control.unload(model)
        except ServerGoneError:
            if self._control.live():
                raise
            return  # a dead server holds nothing; the caller reports the death
        self._wait_released(model)

    def _wait_released(self, model: str) -> None:
        """Triton reports a model unloaded before its backend process has exited and freed memory."""
        probe = self._probe_factory()
        deadline = self._clock() + RELEASE_TIMEOUT_SECONDS
        try:
            while not probe.released():
                if self._clock() > deadline:
                    log.warning("%s: backend processes still running %.0fs after unload; the next model's "
                                "peaks may include them", model, RELEASE_TIMEOUT_SECONDS)
                    return
                self._sleep(0.05)
        except SourceError as e:
            raise ServerGoneError(f"server {self._control.address} is gone after unloading {model}: {e}") from e

    def _raise_if_gone(self, sampler: PeakSampler, where: str) -> None:
        if sampler.error is not None and not self._control.live():
            raise ServerGoneError(f"server {self._control.address} died while {where}: {sampler.error}")

    def _skip(self, points: int, model: str) -> None:
        self._total -= points
        self._report(model)

    def _report(self, model: str | None) -> None:
        elapsed = self._clock() - self._started
        remaining = elapsed / self._done * (self._total - self._done) if self._done else None
        self._on_progress(Progress(self._done, self._total, model, elapsed, remaining))


def _why_stopped(point: PointResult) -> str:
    where = f"batch {point.batch_size}, {point.load}"
    if point.status is PointStatus.ERRORS:
        return f"{counted(point.error_count, 'failed request')} at {where}" + (f": {point.errors[0]}" if point.errors else "")
    p99 = point.latencies.p99_seconds if point.latencies else 0.0
    return f"p99 latency {p99 * 1000:.1f} ms passed the bound at {where}"
