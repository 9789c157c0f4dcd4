"""Carrying out move steps on live Triton servers, one step at a time, never dropping a model.

Two ways a fleet is laid out, two executors:

- ``server-per-device`` (a): every device has its own server. Load on the target server, wait
  until the model is ready *and* answers an inference, keep both copies for a drain period so
  routers notice the new one, then unload from the source.
- ``multi-gpu`` (b): one server drives several GPUs. Reload the model with a config whose
  ``instance_group`` names the target GPUs; Triton keeps the old instances serving until the new
  ones are ready, and keeps the old model entirely if the new one fails to load.

A step that fails before the source copy is gone is rolled back: the source stays loaded, the
half-loaded target is unloaded, and :class:`StepFailedError` says what happened. The one
destructive act, unloading the source, re-checks its precondition at the moment it acts: the
target must still be ready and answer an inference after the drain (it may have died during it);
otherwise the source is left serving.

A step with a configuration loads its copy with a config override (``config_override``) built on
the config a server already runs the model with; a step that reconfigures a copy in place
reloads it so, and Triton keeps the old configuration serving until the new one is ready (and
keeps it entirely when the new one fails to load).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, NoReturn, Protocol

from gpupack.domain import Placement
from gpupack.errors import GpupackError
from gpupack.model_configs import ModelConfig
from gpupack.scheduler.rebalance.audit import AuditLog
from gpupack.scheduler.rebalance.config_override import triton_override
from gpupack.scheduler.rebalance.steps import Step
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.servers import ServerConfig

_POLL_SECONDS = 0.1


class StepFailedError(GpupackError):
    """A step did not complete; the message says whether the source is still serving.

    ``result`` is how ``gpupack_rebalance_moves_total`` counts it: ``target_lost`` when the target
    stopped serving before the source was unloaded (the source kept the model), else ``failed``.
    """

    def __init__(self, message: str, result: str = "failed") -> None:
        super().__init__(message)
        self.result = result


class Executor(Protocol):
    def execute(self, step: Step) -> None: ...


@dataclass(frozen=True)
class StepContext:
    """What every executor needs besides its fleet map: timing, and where to report."""

    audit: AuditLog
    step_timeout_seconds: float = 60.0
    drain_seconds: float = 5.0
    progress: Callable[[str], None] = lambda line: None
    control: Callable[[ServerConfig, float], TritonControl] = TritonControl
    configs: Mapping[str, Mapping[str, ModelConfig]] = field(default_factory=dict)  # model -> name -> profiled
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


class _Steps:
    """Shared mechanics: deadlines, waiting for readiness, and the audit trail of a step."""

    def __init__(self, context: StepContext) -> None:
        self.context = context

    def triton(self, endpoint: ServerConfig, deadline: float) -> TritonControl:
        return self.context.control(endpoint, max(1.0, deadline - self.context.clock()))

    def event(self, name: str, step: Step, **fields: Any) -> None:
        self.context.audit.record(
            name, step=step.describe(), model=step.model, source=step.source, target=step.target, **fields
        )

    def wait_serving(self, triton: TritonControl, model: str, deadline: float) -> None:
        """Ready, then one successful inference: ready alone does not prove a warm model."""
        while not triton.is_ready(model):
            if self.context.clock() >= deadline:
                raise TritonControlError(f"{triton.endpoint.name}: {model} not ready within the step timeout")
            self.context.sleep(_POLL_SECONDS)
        triton.probe(model)

    def override(self, step: Step, loaded: Mapping[str, Any]) -> dict[str, Any] | None:
        """The config ``step``'s copy loads with, edited from one the model is ``loaded`` with."""
        if step.config is None:
            return None
        known = self.context.configs.get(step.model, {})
        if step.config not in known:
            raise StepFailedError(f"{step.describe()}: the profile has no configuration {step.config!r} "
                                  f"of {step.model}")
        return triton_override(loaded, known[step.config])

    def wait_gone(self, triton: TritonControl, model: str, deadline: float) -> None:
        """Until the server says the model is not ready; a server that stops answering raises."""
        while triton.is_ready(model):
            if self.context.clock() >= deadline:
                raise TritonControlError(f"{triton.endpoint.name}: {model} still loaded after the step timeout")
            self.context.sleep(_POLL_SECONDS)


def reload_model(context: StepContext, endpoint: ServerConfig, model: str) -> None:
    """Load a model that has no ready copy anywhere, as the repository has it, until it answers."""
    steps = _Steps(context)
    deadline = context.clock() + context.step_timeout_seconds
    triton = steps.triton(endpoint, deadline)
    triton.load(model)
    steps.wait_serving(triton, model, deadline)


def serving(triton: TritonControl, model: str) -> bool | None:
    """For the audit trail of a step that went wrong: None when the server does not answer."""
    try:
        return triton.is_ready(model)
    except TritonControlError:
        return None


class ServerPerDeviceExecutor(_Steps):
    """Mode (a): device -> its own server."""

    def __init__(self, servers: Mapping[str, ServerConfig], context: StepContext) -> None:
        super().__init__(context)
        self.servers = MappingProxyType(dict(servers))

    def _server(self, device: str) -> ServerConfig:
        if device not in self.servers:
            raise StepFailedError(f"no Triton server is known for device {device}")
        return self.servers[device]

    def execute(self, step: Step) -> None:
        deadline = self.context.clock() + self.context.step_timeout_seconds + self.context.drain_seconds
        self.event("step_started", step, mode="server-per-device")
        if step.target is not None:
            self._arrive(step, deadline)
        if step.source is not None and step.kind != "reconfigure":
            self._leave(step, deadline)
        self.event("step_succeeded", step)

    def _loaded_config(self, step: Step, deadline: float) -> dict[str, Any]:
        """The config of a copy already serving: the source's, else any managed server's."""
        candidates = [d for d in (step.source, *sorted(self.servers)) if d is not None and d in self.servers]
        for device in candidates:
            triton = self.triton(self.servers[device], deadline)
            if triton.is_ready(step.model):
                return dict(triton.model_config(step.model))
        raise StepFailedError(f"{step.describe()}: no server runs {step.model}, so there is no config to change")

    def _arrive(self, step: Step, deadline: float) -> None:
        assert step.target is not None
        target = self.triton(self._server(step.target), deadline)
        override = self.override(step, self._loaded_config(step, deadline)) if step.config is not None else None
        try:
            target.load(step.model, override)
            self.wait_serving(target, step.model, deadline)
        except TritonControlError as e:
            if step.kind == "reconfigure":  # Triton kept the old configuration: nothing to undo
                still_serving = target.is_ready(step.model)
                self.event("step_failed", step, error=str(e), source_serving=still_serving)
                where = f"; {step.model} still serving on {step.source}" if still_serving else ""
                raise StepFailedError(f"{step.describe()}: {e}{where}") from e
            self._roll_back(step, target, e)
        if step.kind == "reconfigure":
            self.event("target_ready", step, server=target.endpoint.name, config=step.config)
            self.context.progress(f"  {step.model} serving as {step.config} on {step.target} ({target.endpoint.name})")
            return
        source_serving = None
        if step.source is not None:
            source_serving = serving(self.triton(self._server(step.source), deadline), step.model)
        self.event("target_ready", step, server=target.endpoint.name, source_serving=source_serving)
        self.context.progress(f"  {step.model} ready on {step.target} ({target.endpoint.name})")
        if step.source is not None and self.context.drain_seconds > 0:
            self.context.progress(f"  draining {step.model} on {step.source} for {self.context.drain_seconds:g}s")
            self.context.sleep(self.context.drain_seconds)

    def _leave(self, step: Step, deadline: float) -> None:
        assert step.source is not None
        source = self.triton(self._server(step.source), deadline)
        if step.target is not None:
            self._confirm_target(step, source, deadline)
        else:
            self._confirm_other_copy(step, deadline)
        try:
            source.unload(step.model)
            self.wait_gone(source, step.model, deadline)
        except TritonControlError as e:
            self.event("step_failed", step, error=str(e), source_serving=serving(source, step.model))
            raise StepFailedError(f"{step.describe()}: {e}; the model may be loaded on both devices") from e
        self.event("source_unloaded", step, server=source.endpoint.name)

    def _confirm_target(self, step: Step, source: TritonControl, deadline: float) -> None:
        """The target answered before the drain; a target that died since must not cost the source copy."""
        assert step.target is not None
        target = self.triton(self._server(step.target), deadline)
        try:
            if not target.is_ready(step.model):
                raise TritonControlError(f"{target.endpoint.name}: {step.model} is no longer ready")
            target.probe(step.model)
        except TritonControlError as e:
            source_serving = serving(source, step.model)
            self.event("step_failed", step, error=str(e), reason="target_lost", source_serving=source_serving)
            where = f"{step.model} still serving on {step.source}" if source_serving else \
                f"{step.source} does not answer either"
            raise StepFailedError(f"{step.describe()}: the target stopped serving before the source was unloaded "
                                  f"({e}); {where}", result="target_lost") from e

    def _confirm_other_copy(self, step: Step, deadline: float) -> None:
        """Dropping a replica is only safe while another copy answers right now."""
        for device, endpoint in sorted(self.servers.items()):
            if device == step.source:
                continue
            other = self.triton(endpoint, deadline)
            try:
                if other.is_ready(step.model):
                    other.probe(step.model)
                    return
            except TritonControlError:
                continue
        self.event("step_failed", step, error="no other copy answers", reason="target_lost", source_serving=True)
        raise StepFailedError(f"{step.describe()}: no other copy of {step.model} answers now; "
                              f"it stays on {step.source}", result="target_lost")

    def _roll_back(self, step: Step, target: TritonControl, error: TritonControlError) -> NoReturn:
        try:
            target.unload(step.model)
            target_cleared = True
        except TritonControlError:
            target_cleared = False
        source_serving = (
            serving(self.triton(self._server(step.source), self.context.clock() + self.context.step_timeout_seconds),
                    step.model)
            if step.source is not None
            else None
        )
        self.event("step_failed", step, error=str(error), source_serving=source_serving, target_cleared=target_cleared)
        where = f"; {step.model} still serving on {step.source}" if source_serving else ""
        raise StepFailedError(f"{step.describe()}: {error}{where}") from error


@dataclass(frozen=True)
class GpuSlot:
    """Mode (b): a device is a server plus the instance_group entry that puts instances on it."""

    server: ServerConfig
    instance_group: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"kind": "KIND_GPU", "gpus": [1]}


class MultiGpuExecutor(_Steps):
    """Mode (b): reload with a new instance_group; Triton swaps instances without a gap."""

    def __init__(self, slots: Mapping[str, GpuSlot], current: Placement, context: StepContext) -> None:
        super().__init__(context)
        self.slots = MappingProxyType(dict(slots))
        self.placement = current

    def _server_of(self, step: Step) -> ServerConfig:
        servers = {self.slots[d].server for d in (step.source, step.target) if d is not None and d in self.slots}
        if len(servers) != 1 or any(d is not None and d not in self.slots for d in (step.source, step.target)):
            raise StepFailedError(f"{step.describe()}: source and target must be GPUs of one known server")
        return servers.pop()

    def instance_groups(self, config: Mapping[str, Any], devices: tuple[str, ...]) -> list[dict[str, Any]]:
        """One group per device; the instance count per device stays what it was."""
        groups = config.get("instance_group") or [{}]
        count = int(groups[0].get("count", 1))
        return [{"count": count, **self.slots[device].instance_group} for device in devices]

    def execute(self, step: Step) -> None:
        deadline = self.context.clock() + self.context.step_timeout_seconds
        triton = self.triton(self._server_of(step), deadline)
        kept = [*self.placement.assignments.get(step.model, ()), step.target]
        leaving = step.source if step.kind != "reconfigure" else None
        devices = tuple(sorted({d for d in kept if d is not None and d != leaving}))
        self.event("step_started", step, mode="multi-gpu", server=triton.endpoint.name)
        try:
            config = dict(triton.model_config(step.model))
            config = self.override(step, config) or config
            config["instance_group"] = self.instance_groups(config, devices)
            triton.load(step.model, config)
            self.wait_serving(triton, step.model, deadline)
        except TritonControlError as e:
            # Triton keeps the previous instances when a reload fails: nothing to undo but to check.
            still = serving(triton, step.model)
            self.event("step_failed", step, error=str(e), source_serving=still)
            where = f"; {step.model} still serving on {step.source}" if still else ""
            raise StepFailedError(f"{step.describe()}: {e}{where}") from e
        self.placement = Placement({**self.placement.assignments, step.model: devices})
        self.event("step_succeeded", step, instance_group=config["instance_group"])

