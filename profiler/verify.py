"""Verifying a plan before it is applied: each planned device replayed on a scratch server.

A plan adds up peaks each model reached alone; whether the models keep their latency budgets
together is only known by running them together. :class:`PlanVerifier` takes each device of a
plan in turn, loads its copies together (each in its planned configuration, through a config
override as the configuration search loads its variants), drives every copy at its planned rate
at the same time (open loop) for the duration, unloads them, and judges the device: it passes
when every copy served its rate without errors and within its p99 budget. Predicted and measured
memory and utilisation are reported side by side; they inform, the copies judge.

It implements :class:`gpupack.verification.Verifier` for ``gpupack verify`` and for the planner's
``plan --verify`` / ``rebalance --verify-on``::

    target = verify_target(server="http://canary:8000", model_repository=None, models=names)
    with PlanVerifier(target, duration_seconds=10.0, profile=profile) as verifier:
        verdicts = verifier.verify(devices)

Nothing stays loaded, however the run ends: each device's copies are unloaded before the next is
loaded, on errors and stop signals too, and with ``--server`` a guard process per model unloads
what a killed verifier left (a server started over a repository dies with its starter).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

from gpupack.profiler.colocate import GroupMeasurement, GroupRun, Guards, Member
from gpupack.profiler.control import ServerControl
from gpupack.profiler.loadgen import Load
from gpupack.profiler.session import default_backend, probe_factory, server_under_test
from gpupack.profiler.stats import PointResult
from gpupack.profiler.target import Target, resolve_target
from gpupack.profiler.variants import Batching, Variant

from gpupack.config import ConfigFile
from gpupack.errors import InputError
from gpupack.model_configs import DEFAULT_CONFIG_NAME, ModelConfig
from gpupack.profiles import Profile
from gpupack.units import counted
from gpupack.verification import DeviceVerdict, ModelVerdict, PlannedCopy, PlannedDevice

# Served below this share of its planned rate, a copy did not keep up (as the profiler's rate ramp says).
SHORTFALL_RATIO = 0.1
_WARMUP_SHARE = 0.25
_WARMUP_AT_MOST_SECONDS = 2.0
# Keys of predicted and measured, as a plan's ``totals`` names them.
MEMORY = "gpu_memory_bytes"
UTILIZATION = "gpu_utilization_ratio"
BANDWIDTH = "memory_bandwidth_utilization_ratio"


def verify_target(server: str | None, model_repository: str | None, models: Sequence[str],
                  config: ConfigFile | None = None) -> Target:
    """The scratch server (``--server`` URL or name) or a repository to start one over, checked as
    the profiler checks its target: every model known there, no other model loaded (exit 2)."""
    values = {"server": server, "model_repository": model_repository, "models": tuple(dict.fromkeys(models))}
    return resolve_target(values, config, shared=False)


class PlanVerifier:
    """A :class:`~gpupack.verification.Verifier` over one scratch server (see the module's docstring).

    ``profile`` resolves the configuration a copy names (its ``configs``); without one, only copies
    with no configuration (or the profile's default, ``profiled``) can be loaded. ``on_device``
    hears each device's name and models as it starts (for a progress line).
    """

    def __init__(
        self,
        target: Target,
        duration_seconds: float,
        *,
        profile: Profile | None = None,
        backend: str | None = None,
        warmup_seconds: float | None = None,
        on_device: Callable[[PlannedDevice], None] = lambda device: None,
    ) -> None:
        if duration_seconds <= 0:
            raise InputError(f"the duration must be positive, not {duration_seconds:g} s", field="--duration")
        self.target = target
        self.duration_seconds = duration_seconds
        self.warmup_seconds = (min(_WARMUP_AT_MOST_SECONDS, duration_seconds * _WARMUP_SHARE)
                               if warmup_seconds is None else warmup_seconds)
        self._configs = dict(profile.configs) if profile is not None else {}
        self._backend = backend
        self._on_device = on_device
        self._stack: contextlib.ExitStack | None = None
        self._run: GroupRun | None = None

    def __enter__(self) -> "PlanVerifier":
        stack = contextlib.ExitStack()
        try:
            address, pid = stack.enter_context(server_under_test(self.target))
            probes = probe_factory(self._backend or default_backend(), address, pid, frozenset())
            guards = stack.enter_context(Guards(address)) if self.target.server is not None else None
            self._run = GroupRun(address, ServerControl(address), probes, warmup_seconds=self.warmup_seconds,
                                 on_loaded=guards.loaded if guards is not None else lambda model, loaded: None)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._stack, self._run = self._stack, None, None
        if stack is not None:
            stack.close()

    def check(self, devices: Sequence[PlannedDevice]) -> None:
        """Raises InputError for what cannot be replayed (a configuration the profile lacks, a model
        twice on one device), before a server is started or anything loaded."""
        for device in devices:
            self._members(device)

    def verify(self, devices: Sequence[PlannedDevice]) -> list[DeviceVerdict]:
        """Each device replayed in turn and judged; :meth:`check`'s refusals come before anything is loaded."""
        members = [self._members(device) for device in devices]
        if self._run is None:
            with self:
                return self.verify(devices)
        verdicts = []
        for device, group in zip(devices, members):
            self._on_device(device)
            verdicts.append(judge(device, self._run.measure(group, self.duration_seconds)))
        return verdicts

    def _members(self, device: PlannedDevice) -> list[Member]:
        seen: set[str] = set()
        members = []
        for copy in device.copies:
            if copy.model in seen:
                raise InputError(f"device {device.name} holds two copies of {copy.model}: Triton serves one model "
                                 "name once per server, so a device has at most one copy of each")
            seen.add(copy.model)
            if copy.rate_per_second < 0:
                raise InputError(f"device {device.name}: {copy.model}'s rate {copy.rate_per_second:g}/s is negative")
            members.append(Member(copy.model, Load(request_rate_per_second=copy.rate_per_second or None),
                                  configure=self._configure(device, copy)))
        return members

    def _configure(self, device: PlannedDevice, copy: PlannedCopy) -> Callable[[Mapping[str, Any]], dict] | None:
        if copy.config is None:
            return None
        for config in self._configs.get(copy.model, ()):
            if config.name == copy.config:
                return lambda own: override(own, config)
        if copy.config == DEFAULT_CONFIG_NAME:  # a profile without configs: the model as its repository has it
            return None
        known = [c.name for c in self._configs.get(copy.model, ())]
        raise InputError(f"device {device.name}: {copy.model} is planned in configuration {copy.config!r}, which "
                         + (f"its profile does not have (it has {', '.join(known)})" if known else
                            "no profile given describes (give --profile, the one the plan was made from)"))


def override(own: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
    """The model's own config with a profiled configuration's settings in place, built as the
    configuration search built it when it measured that configuration (what it leaves unsaid, the
    model's own config says)."""
    groups = own.get("instance_group") or [{}]
    batching = own.get("dynamic_batching")
    own_delay = int((batching or {}).get("max_queue_delay_microseconds", 0)) / 1e6
    dynamic = batching is not None if config.dynamic_batching is None else config.dynamic_batching
    variant = Variant(
        instance_count=config.instance_count or int(groups[0].get("count", 1)),
        instance_kind=None,
        max_batch_size=int(own.get("max_batch_size", 0)) if config.max_batch_size is None else config.max_batch_size,
        batching=Batching(dynamic, own_delay if config.max_queue_delay_seconds is None
                          else config.max_queue_delay_seconds),
    )
    return variant.override(own)


def judge(device: PlannedDevice, measurement: GroupMeasurement) -> DeviceVerdict:
    """A device passes when every copy served its planned rate within its budget, without errors."""
    models = tuple(_judge_copy(copy, measurement.points.get(copy.model), measurement.failures.get(copy.model))
                   for copy in device.copies)
    peaks = measurement.peaks
    readings = ((MEMORY, peaks.memory_bytes), (UTILIZATION, peaks.utilization_ratio),
                (BANDWIDTH, peaks.memory_bandwidth_utilization_ratio))
    measured = {key: float(value) for key, value in readings if value is not None}
    return DeviceVerdict(device.name, all(m.passed for m in models), dict(device.predicted), measured, models)


def _judge_copy(copy: PlannedCopy, point: PointResult | None, failure: str | None) -> ModelVerdict:
    def verdict(served: float, p99: float | None, reasons: list[str]) -> ModelVerdict:
        return ModelVerdict(copy.model, copy.rate_per_second, served, p99, copy.budget_seconds, not reasons,
                            "; ".join(reasons))

    if failure is not None:
        return verdict(0.0, None, [failure])
    if point is None:  # planned idle: loaded, sent nothing
        return verdict(0.0, None, [])
    p99 = point.latencies.p99_seconds if point.latencies else None
    served = point.throughput_per_second
    reasons = []
    if point.error_count:
        reasons.append(f"{counted(point.error_count, 'request')} failed" + (f": {point.errors[0]}" if point.errors else ""))
    if point.dropped_count or served < copy.rate_per_second * (1 - SHORTFALL_RATIO):
        reasons.append(f"served {served:.3g}/s of its {copy.rate_per_second:g}/s")
    if copy.budget_seconds is not None and (p99 is None or p99 > copy.budget_seconds):
        reasons.append(f"p99 {latency_text(p99)} over its {latency_text(copy.budget_seconds)} budget")
    return verdict(served, p99, reasons)


def latency_text(seconds: float | None) -> str:
    """A latency as people read it: ``52.4 ms``, ``1.21 s``; ``-`` when it was not measured."""
    if seconds is None:
        return "-"
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"

