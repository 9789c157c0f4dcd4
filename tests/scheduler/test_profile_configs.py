from pathlib import Path

import pytest

from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.model_configs import DEFAULT_CONFIG_NAME
from gpupack.profiles import load_profile, write_profile

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-profile.yaml"

SEARCHED = """\
server_baseline: {peak_gpu_memory_bytes: 300MB}
models:
  - model: a
    peak_gpu_memory_bytes: 2GB
    configs:
      - name: i2-b8-dyn
        instance_count: 2
        max_batch_size: 8
        dynamic_batching: true
        max_queue_delay_seconds: 2ms
        peak_gpu_memory_bytes: 2GB
        points:
          - {concurrency: 8, throughput_per_second: 400, latency_p99_seconds: 40ms, peak_gpu_utilization_ratio: 90%}
          - {request_rate_per_second: 100, throughput_per_second: 100, latency_p50_seconds: 5ms,
             latency_p99_seconds: 9ms, peak_gpu_utilization_ratio: 30%, peak_memory_bandwidth_utilization_ratio: 10%,
             latency_breakdown_seconds: {queue: 1ms, compute_infer: 4ms}}
      - name: i1-b1
        instance_count: 1
        max_batch_size: 1
        dynamic_batching: false
        peak_gpu_memory_bytes: 1GB
        points:
          - {concurrency: 1, throughput_per_second: 50, latency_p99_seconds: 30ms, peak_gpu_utilization_ratio: 40%}
"""


def write(tmp_path, text):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


def test_searched_configurations_are_read_with_points_sorted_by_throughput(tmp_path):
    profile = load_profile(write(tmp_path, SEARCHED))
    model = profile.models[0]
    fast, small = profile.configs_of(model)
    assert (fast.name, fast.instance_count, fast.max_batch_size, fast.dynamic_batching) == ("i2-b8-dyn", 2, 8, True)
    assert fast.max_queue_delay_seconds == pytest.approx(0.002)
    assert fast.peak_gpu_memory_bytes == 2e9
    assert [p.throughput_per_second for p in fast.points] == [100, 400]
    assert fast.points[0].latency_p99_seconds == pytest.approx(0.009)
    assert fast.points[0].peak(Resource.GPU_UTILIZATION) == pytest.approx(0.3)
    assert fast.points[0].latency_breakdown_seconds["compute_infer"] == pytest.approx(0.004)
    assert fast.points[1].concurrency == 8 and fast.points[0].request_rate_per_second == 100
    assert (small.name, small.dynamic_batching, small.peak_gpu_memory_bytes) == ("i1-b1", False, 1e9)


def test_every_existing_profile_is_one_configuration_at_its_peak():
    profile = load_profile(SEED)
    liver = next(m for m in profile.models if m.model == "segmentation_ct_liver")
    (config,) = profile.configs_of(liver)
    (point,) = config.points
    assert config.name == DEFAULT_CONFIG_NAME
    assert config.peak_gpu_memory_bytes == liver.peak(Resource.GPU_MEMORY)
    assert point.throughput_per_second == 28
    assert point.peak(Resource.GPU_UTILIZATION) == pytest.approx(0.76)
    assert point.peak(Resource.MEMORY_BANDWIDTH_UTILIZATION) == pytest.approx(0.53)


def test_configurations_are_written_and_read_back(tmp_path):
    profile = load_profile(write(tmp_path, SEARCHED))
    write_profile(profile, tmp_path / "again.yaml")
    assert load_profile(tmp_path / "again.yaml").configs == profile.configs


@pytest.mark.parametrize("old, new, where", [
    ("        instance_count: 2\n", "        instance_count: two\n", "profile.yaml:7: models[0].configs[0].instance_count"),
    ("        dynamic_batching: true\n", "        dynamic_batching: yes please\n",
     "profile.yaml:9: models[0].configs[0].dynamic_batching"),
    ("      - name: i1-b1\n", "      - name: i2-b8-dyn\n", "profile.yaml:17: models[0].configs[1].name: configuration 'i2-b8-dyn' appears twice"),
    ("{concurrency: 8, throughput_per_second: 400,", "{concurrency: 8, speed: 400,",
     "profile.yaml:13: models[0].configs[0].points[0].speed: unknown field"),
    ("{concurrency: 1, throughput_per_second: 50,", "{concurrency: 1,",
     "profile.yaml:23: models[0].configs[1].points[0].throughput_per_second: missing"),
    ("        peak_gpu_memory_bytes: 1GB\n", "", "profile.yaml:17: models[0].configs[1].peak_gpu_memory_bytes: missing"),
    ("latency_p99_seconds: 30ms", "latency_p99_seconds: soon", "profile.yaml:23: models[0].configs[1].points[0].latency_p99_seconds"),
])
def test_bad_configuration_names_file_line_and_field(tmp_path, old, new, where):
    assert old in SEARCHED
    with pytest.raises(InputError) as caught:
        load_profile(write(tmp_path, SEARCHED.replace(old, new)))
    assert str(caught.value).startswith(str(tmp_path / where.split(":")[0]) + ":")
    assert where in str(caught.value).replace(str(tmp_path) + "/", "")
