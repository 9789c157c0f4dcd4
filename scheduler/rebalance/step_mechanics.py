"""What every executor shares: the context a step runs in (servers' deadlines, the audit log, the
router, the publish hook), the failure a step reports, the phases it announces, and the mechanics
of loading, waiting for a model to serve or be gone, and reloading a lost model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from gpupack.errors import GpupackError
from gpupack.model_configs import ModelConfig
from gpupack.router import Router
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
class Phase:
    """One phase of a step done (named as its audit event): how the step's model is routed now
    on the servers the phase changed (SERVING, DRAINING or OFF; a server left out is unchanged)."""

    event: str
    model: str
    routes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepContext:
    """What every executor needs besides its fleet map: timing, routing, and where to report."""

    audit: AuditLog
    step_timeout_seconds: float = 60.0
    drain_seconds: float = 5.0  # without a router: how long both copies serve before the source goes
    progress: Callable[[str], None] = lambda line: None
    control: Callable[[ServerConfig, float], TritonControl] = TritonControl
    configs: Mapping[str, Mapping[str, ModelConfig]] = field(default_factory=dict)  # model -> name -> profiled
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    router: Router | None = None
    publish: Callable[[Phase], None] = lambda phase: None
    # (model, server) -> what the copy loaded there serves per second (None: unknown): the copies
    # a move weights the router by, as the run found them.
    copies: Mapping[tuple[str, str], float | None] = field(default_factory=dict)


class StepMechanics:
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
    steps = StepMechanics(context)
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
