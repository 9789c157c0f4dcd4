"""The sweep's decisions, with small fakes of the control plane, probe and load generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gpupack.profiler.control import ModelLoadError
from gpupack.profiler.loadgen import LoadWindow, ModelSignature
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointStatus, TritonCounters
from gpupack.profiler.sweep import Progress, ServerNotIdleError, Sweep, SweepPlan

CONFIG = {"name": "m", "max_batch_size": 4, "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [2]}]}


@dataclass
class FakeControl:
    address: str = "fake:8000"
    refuse: set[str] = field(default_factory=set)
    loaded: list[str] = field(default_factory=list)
    served: int = 0

    def ready_models(self) -> list[str]:
        return list(self.loaded)

    def live(self) -> bool:
        return True

    def load(self, model: str) -> None:
        if model in self.refuse:
            raise ModelLoadError(f"model {model} failed to load: broken")
        self.loaded.append(model)

    def unload(self, model: str) -> None:
        self.loaded.remove(model)

    def config(self, model: str) -> dict:
        return dict(CONFIG, name=model)

    def counters(self, model: str) -> TritonCounters:
        return TritonCounters(self.served, 0, self.served)


class FakeProbe:
    def read(self) -> Peaks:
        return Peaks(memory_bytes=100, utilization_ratio=0.5)

    def released(self) -> bool:
        return True


@dataclass
class FakeLoad:
    """p99 latency grows with batch x concurrency: 1 ms per unit; an interrupt at a given point."""

    control: FakeControl
    interrupt_at: tuple[int, int] | None = None

    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        if (batch_size, concurrency) == self.interrupt_at:
            raise KeyboardInterrupt
        self.control.served += 10
        latency = batch_size * concurrency / 1000
        return LoadWindow(batch_size, concurrency, 1.0, (latency,) * 10, 0, ())


def _sweep(control: FakeControl, plan: SweepPlan, interrupt_at: tuple[int, int] | None = None,
           progress: list[Progress] | None = None) -> Sweep:
    def loadgen(signature: ModelSignature) -> FakeLoad:
        return FakeLoad(control, interrupt_at)

    return Sweep(plan, control, FakeProbe, loadgen, on_progress=(progress if progress is not None else []).append, sleep=lambda s: None)


def _plan(models: tuple[str, ...] = ("m",), latency_bound_seconds: float | None = None) -> SweepPlan:
    return SweepPlan(models, (1, 2, 4), (1, 2, 4), 0.0, 0.0, latency_bound_seconds)


def test_concurrency_ramp_stops_at_the_latency_bound_and_larger_batches_stop_when_the_first_point_passes() -> None:
    control = FakeControl()

    result = _sweep(control, _plan(latency_bound_seconds=0.0035)).run()

    measured = [(p.batch_size, p.concurrency, p.status) for p in result.models[0].points]
    assert measured == [
        (1, 1, PointStatus.OK), (1, 2, PointStatus.OK), (1, 4, PointStatus.OVER_LATENCY_BOUND),
        (2, 1, PointStatus.OK), (2, 2, PointStatus.OVER_LATENCY_BOUND),
        (4, 1, PointStatus.OVER_LATENCY_BOUND),
    ]
    assert "p99 latency 4.0 ms passed the bound at batch 4, concurrency 1" == result.models[0].stopped
    assert control.loaded == []


def test_batch_above_max_batch_size_ends_that_models_sweep() -> None:
    plan = SweepPlan(("m",), (2, 8), (1,), 0.0, 0.0)

    result = _sweep(FakeControl(), plan).run()

    assert [p.batch_size for p in result.models[0].points] == [2]
    assert result.models[0].stopped == "batch size 8 is above max_batch_size 4"


def test_model_that_fails_to_load_is_skipped_and_the_next_is_profiled() -> None:
    progress: list[Progress] = []

    result = _sweep(FakeControl(refuse={"bad"}), _plan(("bad", "good")), progress=progress).run()

    assert result.models[0].failure == "model bad failed to load: broken" and not result.models[0].points
    assert len(result.models[1].points) == 9
    assert (progress[-1].points_done, progress[-1].points_total) == (9, 9)


def test_interrupt_keeps_the_points_measured_and_unloads_the_model() -> None:
    control = FakeControl()

    result = _sweep(control, _plan(("m", "n")), interrupt_at=(2, 1)).run()

    assert result.interrupted
    assert len(result.models) == 1 and len(result.models[0].points) == 3
    assert control.loaded == []


def test_server_with_models_loaded_is_refused_before_anything_is_measured() -> None:
    with pytest.raises(ServerNotIdleError, match=r"already has other loaded.*give --shared-server"):
        _sweep(FakeControl(loaded=["other"]), _plan()).run()


def test_a_shared_server_keeps_the_models_it_had_loaded_and_measures_beside_them() -> None:
    control = FakeControl(loaded=["other"])

    result = Sweep(_plan(), control, FakeProbe, lambda signature: FakeLoad(control), sleep=lambda s: None,
                   shared_with=frozenset({"other"})).run()

    assert [o.model for o in result.models] == ["m"] and result.models[0].points
    assert control.loaded == ["other"]
