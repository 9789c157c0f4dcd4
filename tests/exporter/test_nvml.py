"""The NVML source and GPU attribution, tested at the pynvml boundary with fake devices."""

from __future__ import annotations

from gpupack.devices import InstanceGroup, instance_groups
from gpupack.exporter.attribution import Attributor, ServerInputs
from gpupack.exporter.triton_source import MemoryUsage, ModelReading, TritonReading
from gpupack.measurement.host import HostReading, ProcessUsage
from gpupack.measurement.nvml import NvmlDoor, NvmlSource
from gpupack.triton.processes import BackendProcess
from gpupack.testing.fakes import GIB, FakeGpu, fake_pynvml


def test_gpus_are_read_with_identity_memory_and_ratios():
    source = NvmlSource(NvmlDoor(fake_pynvml([FakeGpu("GPU-a", processes={10: GIB}, sm_percent={10: 35})])))
    (gpu,) = source.read()
    assert (gpu.device, gpu.kind, gpu.index) == ("GPU-a", "gpu", 0)
    assert gpu.memory_used_bytes == 10 * GIB and gpu.memory_total_bytes == 80 * GIB
    assert gpu.utilization_ratio == 0.40 and gpu.memory_bandwidth_utilization_ratio == 0.20
    assert gpu.power_watts == 300.0 and gpu.temperature_celsius == 55.0
    assert gpu.process_memory_bytes == {10: GIB} and gpu.process_sm_ratio == {10: 0.35}


def test_a_field_that_is_not_supported_is_skipped_and_counted_the_rest_is_read():
    door = NvmlDoor(fake_pynvml([FakeGpu("GPU-a", not_supported={"nvmlDeviceGetPowerUsage"})]))
    (gpu,) = NvmlSource(door).read()
    assert gpu.power_watts is None
    assert gpu.memory_used_bytes == 10 * GIB
    assert door.skipped["NVMLError_NotSupported"] == 1


def test_a_lost_gpu_is_skipped_and_the_others_are_still_read():
    door = NvmlDoor(fake_pynvml([FakeGpu("GPU-a", lost=True), FakeGpu("GPU-b")]))
    assert [g.device for g in NvmlSource(door).read()] == ["GPU-b"]
    assert door.skipped["NVMLError_GpuIsLost"] >= 1


def test_a_missing_driver_means_no_gpus_not_a_crash():
    door = NvmlDoor(fake_pynvml([FakeGpu("GPU-a")], driver_loaded=False))
    assert NvmlSource(door).read() == ()
    assert NvmlSource(door).read() == ()
    assert door.skipped["NVMLError_DriverNotLoaded"] == 1  # init is tried once


def _host(backends: dict[int, tuple[str, int]]) -> HostReading:
    processes = {1: ProcessUsage(1, 0, 0.0)} | {pid: ProcessUsage(pid, 0, 0.0) for pid in backends}
    return HostReading("t", "cpu:t", 1, 0, 1.0, 0.0, processes,
                       tuple(BackendProcess(pid, model, "1", f"{model}_0") for pid, (model, _) in backends.items()))


def test_gpu_memory_is_attributed_by_process_then_triton_and_the_rest_is_the_server_remainder():
    gpu = FakeGpu("GPU-a", used_bytes=12 * GIB, processes={1: 5 * GIB, 20: 3 * GIB}, sm_percent={20: 30}, util_percent=50)
    (reading,) = NvmlSource(NvmlDoor(fake_pynvml([gpu]))).read()
    triton = TritonReading("t", 0.0, (
        ModelReading("python_model", "1", (InstanceGroup("KIND_GPU", 1, (0,)),)),
        ModelReading("trt_model", "1", (InstanceGroup("KIND_GPU", 1, (0,)),), compute_seconds=4.0,
                     memory_usage=(MemoryUsage("GPU", 0, 2 * GIB),)),
    ))
    before = TritonReading("t", -1.0, tuple(ModelReading(m.model, "1", m.instance_groups) for m in triton.models))
    attribution = Attributor().attribute(
        [ServerInputs("t", triton, before, _host({20: ("python_model", 0)}))], (reading,), host_devices=False)
    by_model = {m.model: m for m in attribution.models}
    assert (by_model["python_model"].memory_bytes, by_model["python_model"].memory_source) == (3 * GIB, "process")
    assert (by_model["python_model"].utilization_ratio, by_model["python_model"].utilization_source) == (0.30, "process")
    assert (by_model["trt_model"].memory_bytes, by_model["trt_model"].memory_source) == (2 * GIB, "triton")
    assert by_model["trt_model"].utilization_source == "apportioned"
    assert abs(by_model["trt_model"].utilization_ratio - 0.20) < 1e-9  # 50% device minus 30% measured
    # The server's processes hold 8 GiB on the GPU; 5 GiB of it is attributed to models.
    assert attribution.unattributed_memory_bytes[("t", "GPU-a")] == 3 * GIB
    (device,) = attribution.devices
    assert device.servers == ("t",) and device.capacity_bytes == 80 * GIB


def test_a_model_that_leaves_its_kind_to_triton_is_measured_on_the_servers_gpu_where_triton_puts_it():
    gpu = FakeGpu("GPU-a", used_bytes=12 * GIB, processes={1: 5 * GIB})
    (reading,) = NvmlSource(NvmlDoor(fake_pynvml([gpu]))).read()
    auto = instance_groups({})  # no instance_group: KIND_AUTO, which Triton puts on the GPUs it has
    triton = TritonReading("t", 0.0, (ModelReading("auto_model", "1", auto, memory_usage=(MemoryUsage("GPU", 0, 2 * GIB),)),))
    attribution = Attributor().attribute([ServerInputs("t", triton, None, _host({}))], (reading,), host_devices=False)
    (model,) = attribution.models
    assert (model.device, model.memory_bytes, model.memory_source) == ("GPU-a", 2 * GIB, "triton")
    assert attribution.unattributed_memory_bytes[("t", "GPU-a")] == 3 * GIB


def test_a_model_nothing_else_measures_gets_its_load_delta():
    gpu = FakeGpu("GPU-a", used_bytes=4 * GIB)
    door_module = fake_pynvml([gpu])
    source, attributor = NvmlSource(NvmlDoor(door_module)), Attributor()
    group = (InstanceGroup("KIND_GPU", 1, (0,)),)
    empty = TritonReading("t", 0.0, (ModelReading("other", "1", group),))
    attributor.attribute([ServerInputs("t", empty)], source.read(), host_devices=False)
    gpu.used_bytes = 7 * GIB
    loaded = TritonReading("t", 1.0, (ModelReading("other", "1", group), ModelReading("onnx_model", "1", group)))
    attribution = attributor.attribute([ServerInputs("t", loaded, empty)], source.read(), host_devices=False)
    model = next(m for m in attribution.models if m.model == "onnx_model")
    assert (model.memory_bytes, model.memory_source) == (3 * GIB, "load_delta")


def test_our_fast_exposition_is_byte_for_byte_prometheus_clients_in_both_formats():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from gpupack.exporter.collector import SnapshotCollector
    from gpupack.exporter.exposition import render_once
    from gpupack.exporter.snapshot import ServerState, Snapshot

    gpu = FakeGpu("GPU-a", processes={1: 5 * GIB, 20: 3 * GIB}, sm_percent={20: 30})
    (reading,) = NvmlSource(NvmlDoor(fake_pynvml([gpu]))).read()
    triton = TritonReading("t", 0.0, (ModelReading('odd "name"\\x', "1", (InstanceGroup("KIND_GPU", 1, (0,)),)),))
    attribution = Attributor().attribute([ServerInputs("t", triton, None, _host({20: ('odd "name"\\x', 0)}))],
                                         (reading,), host_devices=False)
    snap = Snapshot(1.0, 60.0, servers=(ServerState("t", "http://x", True, False),), devices=attribution.devices,
                    models=attribution.models, unattributed_memory_bytes=attribution.unattributed_memory_bytes,
                    peaks={("t", 'odd "name"\\x', "1", "GPU-a", "gpu_memory"): 3e9}, collect_duration_seconds=0.01,
                    collect_errors_total={"nvml": 2}, last_collect_timestamp_seconds=1.7e9)
    collector = SnapshotCollector(lambda: snap)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ours = render_once(collector.collect())
    assert ours.text == generate_latest(registry)
    assert ours.openmetrics == generate_openmetrics(registry)


def test_an_attributor_kept_across_samples_answers_as_a_fresh_one_does_as_the_fleet_moves():
    """It plans each server once per Triton poll and reuses usages between samples: none of it may
    hide a GPU's utilisation moving, a poll's new compute times, or a backend process appearing."""
    gpu = FakeGpu("GPU-a", used_bytes=12 * GIB, processes={1: 5 * GIB}, util_percent=50)
    source = NvmlSource(NvmlDoor(fake_pynvml([gpu])))
    group = (InstanceGroup("KIND_GPU", 1, (0,)),)

    def triton(at: float, a_seconds: float, b_seconds: float) -> TritonReading:
        return TritonReading("t", at, (ModelReading("a", "1", group, compute_seconds=a_seconds,
                                                    memory_usage=(MemoryUsage("GPU", 0, GIB),)),
                                       ModelReading("b", "1", group, compute_seconds=b_seconds)))

    kept = Attributor()
    r0, r1, r2 = triton(0.0, 0.0, 0.0), triton(1.0, 1.0, 3.0), triton(2.0, 3.0, 5.0)
    steps = [(r1, r0, True, {}), (r1, r0, False, {}), (r2, r1, True, {}), (r2, r1, False, {20: ("b", 0)})]
    seen = []
    for util_percent, (now, before, is_new, backends) in zip((50, 80, 80, 60), steps):
        gpu.util_percent = util_percent
        gpu.processes = {1: 5 * GIB} | {pid: 2 * GIB for pid in backends}
        readings = source.read()
        inputs = [ServerInputs("t", now, before, _host(backends), triton_is_new=is_new)]
        ours = kept.attribute(inputs, readings, host_devices=False)
        fresh = Attributor().attribute(inputs, readings, host_devices=False)
        assert ours.models == fresh.models
        assert ours.unattributed_memory_bytes == fresh.unattributed_memory_bytes
        seen.append({m.model: (m.memory_source, m.utilization_ratio) for m in ours.models})
    assert seen[0]["b"] == (None, 0.5 * 3 / 4) and seen[1]["b"] == (None, 0.8 * 3 / 4)  # the GPU moved
    assert seen[2]["a"][1] == seen[2]["b"][1] == 0.4  # the poll's compute times moved
    assert seen[3]["b"][0] == "process"  # its stub appeared
