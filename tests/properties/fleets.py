"""Random small fleets and random scoped policies of every kind, for the property tests, and
random fleets in whole units of memory that can be given at any scale.

Sizes are whole GiB and ratios multiples of 1/8, so that sums are exact in floating point and the
evaluator (floats) and the planner (integers) see the same boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    Policy,
    PolicySet,
    ReplicasPolicy,
    Selector,
)
from gpupack.scheduler.packing.problem import PlacementProblem

GIB = 2**30
MEM, UTIL = Resource.GPU_MEMORY, Resource.GPU_UTILIZATION
MODEL_NAMES = ("seg_a", "seg_b", "cls_a", "cls_b", "det_a")
MODEL_GLOBS = ("seg_*", "cls_*", "*_a", "det_a")
SERVERS = ("s0", "s1", "s2")


@dataclass(frozen=True)
class Case:
    devices: tuple[DevicePeaks, ...]
    models: tuple[ModelFootprint, ...]
    policies: PolicySet

    def snapshot(self) -> PeaksSnapshot:
        """The fleet as the evaluator reads it; no model loaded (a placement is judged as given)."""
        return PeaksSnapshot(self.devices, tuple(ModelPeaks(m.model, "", m.peaks, loaded=False) for m in self.models))

    @property
    def servers(self) -> dict[str, tuple[str, ...]]:
        return {d.device.name: d.servers for d in self.devices}

    @property
    def baselines(self) -> dict[str, dict[Resource, float]]:
        return {d.device.name: dict(d.server_baseline) for d in self.devices}


@st.composite
def devices(draw: st.DrawFn, max_devices: int) -> tuple[DevicePeaks, ...]:
    count = draw(st.integers(1, max_devices))
    result = []
    for k in range(count):
        # Some servers share a device; some devices run two servers.
        servers = tuple(sorted(draw(st.sets(st.sampled_from(SERVERS), min_size=1, max_size=2))))
        memory = draw(st.sampled_from((8, 16))) * GIB
        labels = {"class": draw(st.sampled_from(("A", "B")))}
        baseline = {MEM: draw(st.integers(0, 2)) * GIB / 4, UTIL: draw(st.integers(0, 1)) / 8}
        result.append(DevicePeaks(Device(f"gpu-{k}", {MEM: memory}, labels), servers, baseline))
    return tuple(result)


@st.composite
def models(draw: st.DrawFn, max_models: int) -> tuple[ModelFootprint, ...]:
    names = draw(st.lists(st.sampled_from(MODEL_NAMES), min_size=1, max_size=max_models, unique=True))
    return tuple(ModelFootprint(n, {MEM: draw(st.integers(1, 6)) * GIB, UTIL: draw(st.integers(1, 5)) / 8})
                 for n in sorted(names))


def device_scopes(with_models: bool) -> st.SearchStrategy[Selector]:
    return st.builds(
        Selector,
        devices=st.sampled_from(((), (), ("gpu-0",), ("gpu-[01]",))),
        device_labels=st.sampled_from(({}, {}, {"class": "A"})),
        servers=st.sampled_from(((), (), ("s0",), ("s[12]",))),
        models=st.sampled_from(((), ("seg_*",), ("cls_*",), ("*_a",))) if with_models else st.just(()),
    )


@st.composite
def policy(draw: st.DrawFn, index: int, exact: bool) -> Policy:
    """One random policy; ``exact`` leaves out the scopes the planner reads more strictly than the
    evaluator (a scoped fleet maximum, replicas scoped to some devices)."""
    name = f"p{index}"
    kind = draw(st.sampled_from(("capacity", "capacity", "model-limit", "fleet", "pin", "anti", "replicas")))
    if kind == "capacity":
        resource = draw(st.sampled_from((MEM, UTIL)))
        selector = draw(device_scopes(with_models=True))
        if resource is MEM and draw(st.booleans()):
            return CapacityPolicy(name=name, resource=MEM, max_bytes=draw(st.integers(5, 12)) * GIB, selector=selector)
        return CapacityPolicy(name=name, resource=resource, max_ratio=draw(st.sampled_from((0.5, 0.75, 1.0))),
                              selector=selector)
    if kind == "model-limit":
        selector = draw(device_scopes(with_models=True))
        return ModelLimitPolicy(name=name, resource=MEM, max_value=float(draw(st.integers(2, 6)) * GIB),
                                selector=selector)
    if kind == "fleet":
        selector = Selector() if exact else draw(device_scopes(with_models=True))
        return FleetPolicy(name=name, max_devices=draw(st.integers(1, 3)), selector=selector)
    if kind == "pin":
        return PinPolicy(name=name, selector=Selector(models=(draw(st.sampled_from(MODEL_GLOBS)),)),
                         to=draw(device_scopes(with_models=False)))
    if kind == "anti":
        globs = tuple(draw(st.lists(st.sampled_from(MODEL_GLOBS), min_size=2, max_size=2, unique=True)))
        return AntiAffinityPolicy(name=name, models=globs, selector=draw(device_scopes(with_models=False)))
    scope = Selector() if exact else draw(device_scopes(with_models=False))
    return ReplicasPolicy(name=name, count=2,
                          selector=Selector(scope.devices, scope.device_labels, scope.servers,
                                            (draw(st.sampled_from(MODEL_GLOBS)),)))


@st.composite
def cases(draw: st.DrawFn, max_devices: int = 4, max_models: int = 5, exact: bool = False) -> Case:
    count = draw(st.integers(0, 3))
    # The device's memory, always: the planner never overfills a device, so the judge must not either.
    physical = CapacityPolicy(name="memory", resource=MEM, max_ratio=1.0)
    policies = (physical, *(draw(policy(k, exact)) for k in range(count)))
    return Case(draw(devices(max_devices)), draw(models(max_models)), PolicySet(policies))


@dataclass(frozen=True)
class ScalableFleet:
    """A placement problem in whole units of memory, so that it can be given in any unit exactly:
    ``problem(k)`` is the same problem with every size, capacity and baseline times ``k`` bytes."""

    device_memory: tuple[int, ...]
    model_memory: tuple[int, ...]
    model_utilization: tuple[float, ...]  # 0: the model does not measure it
    baseline: int

    def problem(self, k: int) -> PlacementProblem:
        devices = tuple(Device(f"gpu-{j}", {MEM: float(m * k)}) for j, m in enumerate(self.device_memory))
        models = tuple(
            ModelFootprint(f"m{i}", {MEM: float(m * k), **({UTIL: u} if u else {})})
            for i, (m, u) in enumerate(zip(self.model_memory, self.model_utilization))
        )
        return PlacementProblem(devices, models, server_baseline={MEM: float(self.baseline * k)})


@st.composite
def scalable_fleets(draw: st.DrawFn, max_models: int = 10) -> ScalableFleet:
    """Up to ``max_models`` models on as many devices, all alike (column generation's case) or of
    two sizes, with utilisation in eighths on some of them; every model fits a device alone."""
    count = draw(st.integers(1, max_models))
    sizes = st.sampled_from((48, 64))
    same = draw(st.booleans())
    first = draw(sizes)
    device_memory = tuple(first if same else draw(sizes) for _ in range(count))
    model_memory = tuple(draw(st.integers(5, 40)) for _ in range(count))
    model_utilization = tuple(draw(st.integers(0, 6)) / 8 for _ in range(count))
    return ScalableFleet(device_memory, model_memory, model_utilization, draw(st.integers(0, 4)))
