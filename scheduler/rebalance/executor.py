"""Carrying out move steps on live Triton servers, one step at a time, never dropping a model.

Two ways a fleet is laid out, two executors:

- ``server-per-device`` (a): every device has its own server. Load on the target server, wait
  until the model is ready *and* answers an inference, then hand clients over, then unload from
  the source. With a router (:mod:`gpupack.router`), the hand-over is exact: the target is
  enabled and seen up by the router, the other copies re-weighted by what each serves
  (:mod:`gpupack.scheduler.traffic`), the source drained until the router holds nothing for it,
  then taken out of rotation. Without one, both copies are kept for a fixed drain period, and
  clients must find the new copy themselves (the placement document names it).
- ``multi-gpu`` (b): one server drives several GPUs
  (:mod:`gpupack.scheduler.rebalance.multi_gpu`).

A step that fails before the source copy is gone is rolled back: the source stays loaded, the
half-loaded target is unloaded, and :class:`StepFailedError` says what happened. The one
destructive act, unloading the source, re-checks its precondition at the moment it acts: the
target must still be ready and answer an inference after the drain (it may have died during it);
otherwise the source is left serving. Whatever fails, the source is left serving *and* in the
router: a drain is undone by setting it back to serving.

After every phase the context's ``publish`` hook hears of it (:class:`Phase`), so that the
placement document routers poll changes with the step, not only after it.

A step with a configuration loads its copy with a config override (``config_override``) built on
the config a server already runs the model with; a step that reconfigures a copy in place
reloads it so, and Triton keeps the old configuration serving until the new one is ready (and
keeps it entirely when the new one fails to load).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, NoReturn

from gpupack.errors import GpupackError
from gpupack.router import DRAINING, OFF, SERVING
from gpupack.scheduler.demand.cost import capacity_per_second
from gpupack.scheduler.rebalance.routing import Routes, RoutingFailed
from gpupack.scheduler.rebalance.steps import Step
from gpupack.servers import ServerConfig
from gpupack.scheduler.traffic import router_weights
from gpupack.triton.control import TritonControl, TritonControlError
from gpupack.scheduler.rebalance.step_mechanics import (
    Phase, StepContext, StepFailedError, StepMechanics, serving,
)


class ServerPerDeviceExecutor(StepMechanics):
    """Mode (a): device -> its own server."""

    def __init__(self, servers: Mapping[str, ServerConfig], context: StepContext) -> None:
        super().__init__(context)
        self.servers = MappingProxyType(dict(servers))
        self.routes = Routes(context.router, context.clock, context.sleep) if context.router is not None else None
        self.copies = dict(context.copies)  # kept up to date step by step: later steps weight by it

    def _server(self, device: str) -> ServerConfig:
        if device not in self.servers:
            raise StepFailedError(f"no Triton server is known for device {device}")
        return self.servers[device]

    def execute(self, step: Step) -> None:
        # With a router the drain ends when the router says so, within the step timeout.
        routed = self.routes is not None and step.kind != "reconfigure"
        deadline = self.context.clock() + self.context.step_timeout_seconds + \
            (0.0 if routed else self.context.drain_seconds)
        self.event("step_started", step, mode="server-per-device")
        if step.target is not None:
            self._arrive(step, deadline)
        if step.source is not None and step.kind != "reconfigure":
            self._leave(step, deadline)
        if step.target is not None:
            self.copies[step.model, self._server(step.target).name] = self._arriving_capacity(step)
        if step.source is not None and step.kind != "reconfigure":
            self.copies.pop((step.model, self._server(step.source).name), None)
        self.event("step_succeeded", step)

    def _published(self, event: str, step: Step, routes: Mapping[str, str] | None = None) -> None:
        self.context.publish(Phase(event, step.model, MappingProxyType(dict(routes or {}))))

    def _arriving_capacity(self, step: Step) -> float | None:
        """What the arriving copy serves: its configuration's profiled rate, else the source copy's."""
        config = self.context.configs.get(step.model, {}).get(step.config) if step.config is not None else None
        if config is not None:
            return capacity_per_second(config, None)
        if step.source is not None and step.source in self.servers:
            return self.copies.get((step.model, self.servers[step.source].name))
        return None

    def _weights(self, step: Step, leaving: str | None, arriving: str | None) -> dict[str, int]:
        """Router weights of the step's model over its copies, less the one leaving, plus the one arriving."""
        copies = {server: c for (model, server), c in self.copies.items() if model == step.model}
        if step.source is not None and step.source in self.servers:
            copies.setdefault(self.servers[step.source].name, None)
        if leaving is not None:
            del copies[leaving]
        if arriving is not None:
            copies[arriving] = self._arriving_capacity(step)
        return router_weights(copies)

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
        if step.kind == "reconfigure":  # the same copy, the same router entry: routing stays as it is
            self.event("target_ready", step, server=target.endpoint.name, config=step.config)
            self.context.progress(f"  {step.model} serving as {step.config} on {step.target} ({target.endpoint.name})")
            return
        source_serving = None
        if step.source is not None:
            source_serving = serving(self.triton(self._server(step.source), deadline), step.model)
        self.event("target_ready", step, server=target.endpoint.name, source_serving=source_serving)
        self.context.progress(f"  {step.model} ready on {step.target} ({target.endpoint.name})")
        self._published("target_ready", step, {target.endpoint.name: OFF if self.routes is not None else SERVING})
        if self.routes is not None:
            self._route_in(step, target, deadline)
        elif step.source is not None and self.context.drain_seconds > 0:
            # No router to ask: routers that poll the placement document see the source draining.
            self._published("source_draining", step, {self._server(step.source).name: DRAINING})
            self.context.progress(f"  draining {step.model} on {step.source} for {self.context.drain_seconds:g}s")
            self.context.sleep(self.context.drain_seconds)

    def _route_in(self, step: Step, target: TritonControl, deadline: float) -> None:
        """The target into rotation and up, then the other copies weighted for the copies to come."""
        assert self.routes is not None
        name = target.endpoint.name
        leaving = self._server(step.source).name if step.source is not None else None
        weights = self._weights(step, leaving=leaving, arriving=name)
        try:
            self.routes.enable(step.model, name, weights[name], deadline)
        except RoutingFailed as e:  # never up: it took no request, so it may go at once
            self._roll_back(step, target, e, phase="target_enabled")
        self.event("target_enabled", step, server=name, weight=weights[name])
        self.context.progress(f"  {step.model} up in {self.routes.router.describe()} on {step.target} "
                              f"(weight {weights[name]})")
        self._published("target_enabled", step, {name: SERVING})
        others = {server: weight for server, weight in weights.items() if server != name}
        if others:
            try:
                self.routes.reweight(step.model, others)
            except RoutingFailed as e:
                self._roll_back(step, target, e, phase="copies_reweighted")
            self.event("copies_reweighted", step, weights=others)
            self._published("copies_reweighted", step)

    def _leave(self, step: Step, deadline: float) -> None:
        assert step.source is not None
        source = self.triton(self._server(step.source), deadline)
        name = source.endpoint.name
        if self.routes is not None:
            self._route_out(step, source, deadline)
        try:
            if step.target is not None:
                self._confirm_target(step, source, deadline)
            else:
                self._confirm_other_copy(step, deadline)
        except StepFailedError:
            self._restore_source(step, name)
            raise
        try:
            source.unload(step.model)
            self.wait_gone(source, step.model, deadline)
        except TritonControlError as e:
            still_serving = serving(source, step.model)
            if still_serving:
                self._restore_source(step, name)
            self.event("step_failed", step, error=str(e), source_serving=still_serving)
            where = f"{step.model} still serving on {step.source}" if still_serving else \
                "the model may be loaded on both devices"
            raise StepFailedError(f"{step.describe()}: {e}; {where}") from e
        self.event("source_unloaded", step, server=name)
        self._published("source_unloaded", step, {name: OFF})

    def _route_out(self, step: Step, source: TritonControl, deadline: float) -> None:
        """The source out of rotation with nothing in flight: drained until the router holds no
        session and nothing queued for it, then off. A failure sets it back to serving."""
        assert self.routes is not None and step.source is not None
        name = source.endpoint.name
        try:
            if step.target is None:  # dropping a copy: the others take its part first
                weights = self._weights(step, leaving=name, arriving=None)
                if weights:
                    self.routes.reweight(step.model, weights)
                    self.event("copies_reweighted", step, weights=weights)
                    self._published("copies_reweighted", step)
            started = self.context.clock()
            self.routes.drain(step.model, name)
            self.event("source_draining", step, server=name)
            self.context.progress(f"  draining {step.model} on {step.source}: until the router holds no request for it")
            self._published("source_draining", step, {name: DRAINING})
            self.routes.wait_drained(step.model, name, deadline)
            self.event("source_drained", step, server=name, seconds=round(self.context.clock() - started, 3))
            self._published("source_drained", step)
            self.routes.disable(step.model, name)
            self.event("source_disabled", step, server=name)
            self._published("source_disabled", step, {name: OFF})
        except RoutingFailed as e:
            self._restore_source(step, name)
            still_serving = serving(source, step.model)
            self.event("step_failed", step, error=str(e), source_serving=still_serving)
            where = f"{step.model} still serving on {step.source}" if still_serving else \
                f"{step.source} does not answer"
            raise StepFailedError(f"{step.describe()}: {e}; {where}") from e

    def _restore_source(self, step: Step, name: str) -> None:
        """After a failure once the hand-over began: the source back in rotation at its weight."""
        if self.routes is not None:
            arriving = self._server(step.target).name if step.target is not None else None
            weight = self._weights(step, leaving=None, arriving=arriving)[name]
            try:
                self.routes.router.enable(step.model, name, weight)
                restored, error = True, ""
            except GpupackError as e:
                restored, error = False, str(e)
            self.event("source_restored", step, server=name, weight=weight, restored=restored, error=error)
        self._published("source_restored", step, {name: SERVING})

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

    def _roll_back(self, step: Step, target: TritonControl, error: GpupackError, phase: str = "target_ready") -> NoReturn:
        """The target goes, the source stays. A target that took requests through the router is
        drained first; one that cannot be drained stays loaded rather than fail its requests."""
        name = target.endpoint.name
        withdrawn = True
        if self.routes is not None and phase == "copies_reweighted":
            try:
                self.routes.withdraw(step.model, name, self.context.clock() + self.context.step_timeout_seconds)
            except RoutingFailed:
                withdrawn = False
        elif self.routes is not None and phase == "target_enabled":
            try:
                self.routes.router.disable(step.model, name)
            except GpupackError:
                pass  # never up, so the router sends it nothing either way
        target_cleared = False
        if withdrawn:
            try:
                target.unload(step.model)
                target_cleared = True
            except TritonControlError:
                pass
        if self.routes is not None:
            self._published("target_withdrawn", step, {name: OFF})
        source_serving = (
            serving(self.triton(self._server(step.source), self.context.clock() + self.context.step_timeout_seconds),
                    step.model)
            if step.source is not None
            else None
        )
        self.event("step_failed", step, error=str(error), source_serving=source_serving, target_cleared=target_cleared,
                   phase=phase)
        where = f"; {step.model} still serving on {step.source}" if source_serving else ""
        raise StepFailedError(f"{step.describe()}: {error}{where}") from error
