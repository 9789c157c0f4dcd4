"""The configuration search's decisions, with small fakes: where the climb goes, when a ramp stops,
what ranks, what a checkpoint brings back, and what the profile's ``configs:`` say."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gpupack.profiler.checkpoint import Checkpoint
from gpupack.profiler.control import ModelLoadError
from gpupack.profiler.loadgen import LoadWindow, ModelSignature
from gpupack.profiler.output import model_config, to_search_profile
from gpupack.profiler.rank import Constraints, MeasuredConfig, rank
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.search import ConfigSearch, exhaustive, hill_climb, search_loads
from gpupack.profiler.stats import PointResult, TritonCounters, measure_point
from gpupack.profiler.sweep import SweepPlan
from gpupack.profiler.variants import Batching, SearchSpace, Variant, batchings, config_pbtxt
from gpupack.profiles import load_profile, write_profile

MIB = 2**20
BASE = {"name": "m", "backend": "python", "max_batch_size": 8,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": ["2"]}],
        "instance_group": [{"name": "m_0", "kind": "KIND_CPU", "count": 1, "gpus": []}],
        "dynamic_batching": {"max_queue_delay_microseconds": "0"}}
ON, OFF = Batching(True, 0.0005), Batching(False)


def _point(concurrency: int, throughput: float, p99: float = 0.005, memory: int = 100 * MIB,
           errors: int = 0, bound: float | None = None) -> PointResult:
    requests = int(throughput)
    window = LoadWindow(1, concurrency, 1.0, (p99,) * requests, errors, ("boom",) if errors else ())
    return measure_point("m", window, TritonCounters(0, 0, 0), TritonCounters(requests, errors, requests, (4000, 0, 9000, 0)),
                         Peaks(memory + 30 * MIB, 0.5), Peaks(30 * MIB, 0.0), bound)


def _config(name_count: int, *points: PointResult, batch: int = 8, batching: Batching = ON) -> MeasuredConfig:
    return MeasuredConfig(Variant(name_count, None, batch, batching), {}, list(points))


def test_variant_override_sets_instances_batch_and_batching_and_leaves_the_models_config_alone() -> None:
    on = Variant(4, "KIND_CPU", 4, Batching(True, 0.001)).override(BASE)
    off = Variant(2, None, 1, OFF).override(BASE)

    assert on["instance_group"] == [{"kind": "KIND_CPU", "count": 4}]
    assert on["max_batch_size"] == 4
    assert on["dynamic_batching"] == {"max_queue_delay_microseconds": "1000", "preferred_batch_size": [4]}
    assert "dynamic_batching" not in off and off["instance_group"][0]["count"] == 2
    assert BASE["instance_group"][0]["count"] == 1 and "dynamic_batching" in BASE


def test_chosen_config_is_written_as_the_protobuf_text_triton_reads() -> None:
    text = config_pbtxt(Variant(2, None, 4, Batching(True, 0.0001)).override(BASE))

    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (parsed.max_batch_size, parsed.instance_group[0].count) == (4, 2)
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4]


def _searched(*points: PointResult) -> tuple[str | None, list[int | None]]:
    """What :func:`search_loads` says over the loads of ``points`` (concurrency 1, 2, 4 ...), and which it measured."""
    seen: list[int | None] = []
    reason = search_loads([p.load for p in points], lambda i: seen.append(points[i].concurrency) or points[i])
    return reason, seen


def test_ramp_stops_when_throughput_stops_growing_or_p99_passes_the_budget_or_requests_fail() -> None:
    assert _searched(_point(1, 100), _point(2, 180)) == (None, [1, 2])
    assert _searched(_point(1, 100), _point(2, 180), _point(4, 182), _point(8, 400)) == (
        "saturated: throughput stopped growing at concurrency 2", [1, 2, 4])
    reason, _ = _searched(_point(1, 100), _point(2, 300, p99=0.05, bound=0.02))
    assert reason == "p99 50.0 ms passed the budget at concurrency 2"
    assert _searched(_point(1, 100, errors=2), _point(2, 180)) == ("2 failed requests at concurrency 1: boom", [1])


def test_quick_search_climbs_to_the_best_config_measuring_fewer_than_all() -> None:
    space = SearchSpace((1, 2, 4), (1, 4, 8), batchings((False, True), (0.0,)))
    # Throughput grows with batch (dynamic batching on) and instances up to 2 (the cores).
    def truth(index: tuple[int, ...]) -> float:
        instances, _, batch, batching = index
        gain = (1 + batch) if batching == 1 else 1
        return 100.0 * gain * min(instances + 1, 2)

    seen: list[tuple[int, ...]] = []
    hill_climb(space, lambda index: seen.append(index) or truth(index))
    every: list[tuple[int, ...]] = []
    exhaustive(space, lambda index: every.append(index) or truth(index))

    best = max(space.indexes(), key=truth)
    assert truth(max(set(seen), key=truth)) == truth(best)
    assert len(set(seen)) < len(space.indexes()) == len(every) == 18


def test_ranking_keeps_configs_meeting_the_constraints_and_says_why_the_others_failed() -> None:
    fast_big = _config(4, _point(1, 300, memory=400 * MIB), _point(2, 500, memory=400 * MIB))
    good = _config(2, _point(1, 200), _point(2, 350))
    slow = _config(1, _point(1, 40, p99=0.030, bound=0.02))
    low = _config(1, _point(1, 60), batch=1, batching=OFF)
    broken = MeasuredConfig(Variant(8, None, 8, ON), {}, [], failure="i8-b8-dyn-500us: failed to load")

    ranked, rejected = rank([fast_big, good, slow, low, broken],
                            Constraints(0.02, min_throughput_per_second=50, max_memory_bytes=256 * MIB))

    assert [r.config for r in ranked] == [good, low]
    assert ranked[0].point.concurrency == 2 and ranked[0].score == 350
    reasons = {c.name: why for c, why in rejected}
    assert "over --max-memory 256.0 MiB" in reasons[fast_big.name]
    assert "p99 30.0 ms at its lightest load is over the 20 ms budget" == reasons[slow.name]
    assert reasons[broken.name] == "i8-b8-dyn-500us: failed to load"
    per_gib, _ = rank([fast_big, good], Constraints(objective="throughput-per-gib"))
    assert per_gib[0].config is good


def test_profile_carries_every_config_with_exactly_the_agreed_fields_and_plan_reads_it(tmp_path: Path) -> None:
    good = _config(2, _point(2, 350), _point(1, 200), _point(4, 340))
    off = _config(1, _point(1, 90), batch=4, batching=OFF)
    search = type("S", (), {"configs": [good, off]})()
    result = type("R", (), {"baseline": Peaks(30 * MIB), "models": [type("O", (), {"model": "m"})()]})()
    ranked, _ = rank([good, off], Constraints())
    out = tmp_path / "profile.yaml"

    write_profile(to_search_profile(result, {"m": search}, {"m": ranked[0]}), out)  # type: ignore[arg-type]

    entry = yaml.safe_load(out.read_text())["models"][0]
    assert entry["throughput_per_second"] == 350
    on, plain = entry["configs"]
    assert set(on) == {"name", "instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_seconds",
                       "peak_gpu_memory_bytes", "points"}
    assert set(plain) == set(on) - {"max_queue_delay_seconds"} and plain["dynamic_batching"] is False
    assert set(on["points"][0]) == {"concurrency", "throughput_per_second", "latency_p50_seconds",
                                    "latency_p99_seconds", "peak_gpu_utilization_ratio", "latency_breakdown_seconds"}
    assert set(on["points"][0]["latency_breakdown_seconds"]) == {"queue", "compute_input", "compute_infer",
                                                                 "compute_output"}
    assert [p["throughput_per_second"] for p in on["points"]] == [200, 340, 350]
    assert on["max_queue_delay_seconds"] == 0.0005 and on["peak_gpu_memory_bytes"] == 100 * MIB
    profile = load_profile(out)
    assert [m.model for m in profile.models] == ["m"] and profile.models[0].concurrency == 2
    assert profile.configs["m"][0] == model_config(good)


@dataclass
class FakeControl:
    address: str = "fake:8000"
    loaded: dict[str, dict | None] = field(default_factory=dict)
    loads: list[dict | None] = field(default_factory=list)
    served: int = 0

    def ready_models(self) -> list[str]:
        return list(self.loaded)

    def live(self) -> bool:
        return True

    def load(self, model: str, config: dict | None = None) -> None:
        self.loads.append(config)
        if config is not None and config["instance_group"][0].get("kind") == "KIND_GPU":
            raise ModelLoadError(f"model {model} failed to load: no GPUs are available")
        self.loaded[model] = config

    def unload(self, model: str) -> None:
        self.loaded.pop(model, None)

    def config(self, model: str) -> dict:
        return dict(BASE, name=model) if self.loaded.get(model) is None else dict(self.loaded[model], name=model)

    def counters(self, model: str) -> TritonCounters:
        return TritonCounters(self.served, 0, self.served)


@dataclass
class FakeLoad:
    """Throughput: 100/s per instance, x batch when dynamic batching is on, flat above concurrency 2."""

    control: FakeControl
    signature: ModelSignature
    windows: list[int] = field(default_factory=list)

    def run(self, batch_size: int, concurrency: int, duration_seconds: float) -> LoadWindow:
        config = self.control.loaded[self.signature.model] or {}
        gain = config.get("max_batch_size", 1) if "dynamic_batching" in config else 1
        rate = 100 * config["instance_group"][0]["count"] * gain * min(concurrency, 2) / 2
        self.windows.append(concurrency)
        self.control.served += int(rate)
        return LoadWindow(batch_size, concurrency, 1.0, (0.001,) * int(rate), 0, ())

    def run_at_rate(self, batch_size: int, rate_per_second: float, duration_seconds: float) -> LoadWindow:
        """Serves what is offered up to the capacity at full concurrency; drops the rest."""
        config = self.control.loaded[self.signature.model] or {}
        gain = config.get("max_batch_size", 1) if "dynamic_batching" in config else 1
        served = int(min(rate_per_second, 100 * config["instance_group"][0]["count"] * gain))
        self.windows.append(int(rate_per_second))
        self.control.served += served
        return LoadWindow(batch_size, None, 1.0, (0.001,) * served, 0, (), rate_per_second,
                          dropped_count=int(rate_per_second) - served)


class FakeProbe:
    def read(self) -> Peaks:
        return Peaks(memory_bytes=100, utilization_ratio=0.5)

    def released(self) -> bool:
        return True


def _search(tmp_path: Path, control: FakeControl, loads: list[FakeLoad], strategy: str = "exhaustive",
            kinds: tuple[str | None, ...] = (None,), rates: tuple[float, ...] = ()) -> ConfigSearch:
    plan = SweepPlan(("m",), (1,), (1, 2, 4, 8), 0.0, 0.0, request_rates_per_second=rates)
    space = SearchSpace((1, 2), (1, 4), (OFF, ON), kinds)
    checkpoint_file = tmp_path / "c.json"
    settings = {"space": "small"}
    checkpoint = Checkpoint.resume(checkpoint_file, settings) if checkpoint_file.exists() else Checkpoint(checkpoint_file, settings)

    def loadgen(signature: ModelSignature) -> FakeLoad:
        loads.append(FakeLoad(control, signature))
        return loads[-1]

    return ConfigSearch(plan, space, strategy, Constraints(), checkpoint, control,  # type: ignore[arg-type]
                        FakeProbe, loadgen, sleep=lambda s: None)


def test_exhaustive_search_measures_every_variant_stops_each_ramp_at_saturation_and_unloads(tmp_path: Path) -> None:
    control, loads = FakeControl(), []  # type: ignore[var-annotated]
    search = _search(tmp_path, control, loads)

    search.run()

    configs = search.searches["m"].configs
    assert len(configs) == 8 and control.loaded == {}
    # 4 adds nothing over 2: no 8 from below. A variant starts where its instances' batches are
    # full and stops one doubling later (nothing queues in this fake Triton: no need to look below).
    assert loads[0].windows == [1, 1, 1, 2, 2, 2, 4, 4, 4]  # each point three windows, all alike
    assert {c.name: [p.concurrency for p in c.points] for c in configs} == {
        "i1-b1-dyn-off": [1, 2, 4], "i1-b1-dyn-500us": [1, 2, 4], "i1-b4-dyn-off": [1, 2, 4], "i1-b4-dyn-500us": [4, 8],
        "i2-b1-dyn-off": [2, 4], "i2-b1-dyn-500us": [2, 4], "i2-b4-dyn-off": [2, 4], "i2-b4-dyn-500us": [8]}
    best = rank(configs, Constraints())[0][0]
    assert best.config.name == "i2-b4-dyn-500us" and best.point.throughput_per_second == 800


def test_resumed_search_reuses_every_measured_point_and_unloads_what_the_killed_run_left(tmp_path: Path) -> None:
    first_loads: list[FakeLoad] = []
    _search(tmp_path, FakeControl(), first_loads, "quick").run()
    measured = sum(len(load.windows) for load in first_loads)
    checkpoint = tmp_path / "c.json"
    document = json.loads(checkpoint.read_text())
    document["loaded"] = "m"  # as a kill -9 in mid-variant leaves it
    checkpoint.write_text(json.dumps(document))
    control = FakeControl(loaded={"m": None})

    again: list[FakeLoad] = []
    search = _search(tmp_path, control, again, "quick")
    search.run()

    assert measured > 0 and again == [] and control.loaded == {}
    assert len(search.searches["m"].configs) == len(document["configs"]["m"])


def test_a_variant_that_fails_to_load_is_rejected_with_tritons_reason_and_the_rest_go_on(tmp_path: Path) -> None:
    control, loads = FakeControl(), []  # type: ignore[var-annotated]
    search = _search(tmp_path, control, loads, kinds=("KIND_CPU", "KIND_GPU"))

    search.run()

    configs = search.searches["m"].configs
    failed = [c for c in configs if c.failure]
    assert len(failed) == 8 and all("no GPUs are available" in str(c.failure) for c in failed)
    assert len(configs) - len(failed) == 8 and control.loaded == {}
    _, rejected = rank(configs, Constraints())
    assert {c.name for c, _ in rejected} == {c.name for c in failed}


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    Checkpoint(tmp_path / "c.json", {"instances": [1, 2]}).save()

    with pytest.raises(Exception, match="instances"):
        Checkpoint.resume(tmp_path / "c.json", {"instances": [1, 4]})


def test_a_rate_ramp_stops_at_the_first_rate_served_short_and_resumes_keyed_by_rate(tmp_path: Path) -> None:
    loads: list[FakeLoad] = []
    search = _search(tmp_path, FakeControl(), loads, rates=(50, 150, 300, 1000))

    search.run()

    # i1-b1 serves 100/s: 150 is served short, so 300 and 1000 are never offered.
    by_name = {c.name: c for c in search.searches["m"].configs}
    assert [p.request_rate_per_second for p in by_name["i1-b1-dyn-off"].points] == [50, 150]
    assert "saturated: served 100.0 of the 150 requests/s offered" == by_name["i1-b1-dyn-off"].stopped
    assert [p.request_rate_per_second for p in by_name["i2-b4-dyn-500us"].points] == [50, 150, 300, 1000]
    points = model_config(by_name["i1-b1-dyn-off"]).points
    assert [(p.concurrency, p.request_rate_per_second, p.throughput_per_second) for p in points] == \
        [(None, 50, 50), (None, 150, 100)]

    # The recommendation stands on a rate served in full: 1000/s was served short (800).
    best = rank(search.searches["m"].configs, Constraints())[0][0]
    assert (best.config.name, best.point.request_rate_per_second) == ("i1-b4-dyn-500us", 300)

    again: list[FakeLoad] = []
    _search(tmp_path, FakeControl(), again, rates=(50, 150, 300, 1000)).run()
    assert again == []  # every rate point came back from the checkpoint


def test_a_config_saturated_at_its_lowest_rate_is_rejected_with_lower_rates_advised() -> None:
    window = LoadWindow(1, None, 1.0, (0.001,) * 40, 0, (), 100.0, dropped_count=60)
    point = measure_point("m", window, TritonCounters(0, 0, 0), TritonCounters(40, 0, 40), Peaks(100), Peaks(0))

    _, rejected = rank([_config(1, point)], Constraints())

    assert rejected[0][1] == "saturated already at 100 requests/s: offer lower --request-rate values"
