from pathlib import Path

import pytest

from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.profiles import load_profile, write_profile

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-profile.yaml"


def test_seed_profile_subtracts_the_server_baseline_from_table_2():
    profile = load_profile(SEED)
    liver = next(m for m in profile.models if m.model == "segmentation_ct_liver")
    assert profile.server_baseline[Resource.GPU_MEMORY] == 309e6
    assert liver.peak(Resource.GPU_MEMORY) == (11051 - 309) * 1e6
    assert liver.peak(Resource.GPU_UTILIZATION) == pytest.approx(0.76)
    assert liver.peak(Resource.MEMORY_BANDWIDTH_UTILIZATION) == pytest.approx(0.53)
    assert len(profile.models) == 9


@pytest.mark.parametrize("suffix", ["yaml", "json", "csv"])
def test_written_profile_reads_back_the_same(tmp_path, suffix):
    profile = load_profile(SEED)
    write_profile(profile, tmp_path / f"p.{suffix}")
    again = load_profile(tmp_path / f"p.{suffix}")
    assert again.models == profile.models
    assert dict(again.server_baseline) == dict(profile.server_baseline)


def test_measured_points_are_kept(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "server_baseline: {peak_gpu_memory_bytes: 300MB}\n"
        "models:\n"
        "  - model: a\n"
        "    peak_gpu_memory_bytes: 1GB\n"
        "    points:\n"
        "      - {batch_size: 1, concurrency: 1, peak_gpu_memory_bytes: 800MB, latency_p99_seconds: 12ms}\n"
        "      - {batch_size: 4, concurrency: 2, peak_gpu_memory_bytes: 1GB, peak_gpu_utilization_ratio: 40%}\n"
    )
    profile = load_profile(path)
    assert [p.batch_size for p in profile.points["a"]] == [1, 4]
    assert profile.points["a"][0].latency_p99_seconds == pytest.approx(0.012)
    write_profile(profile, tmp_path / "again.json")
    assert load_profile(tmp_path / "again.json").points == profile.points


@pytest.mark.parametrize(
    "text, where",
    [
        ("server_baseline: {}\nmodels:\n  - model: a\n    peak_gpu_memory_bytes: lots\n", "p.yaml:4: models[0].peak_gpu_memory_bytes"),
        ("server_baseline: {}\nmodels:\n  - model: a\n    peak_gpu_memory_bytes: 1GB\n    peak_gpu_utilization_ratio: 180\n",
         "p.yaml:5: models[0].peak_gpu_utilization_ratio"),
        ("server_baseline: {}\nmodels:\n  - {model: a, peak_gpu_memory_bytes: 1GB}\n  - {model: a, peak_gpu_memory_bytes: 1GB}\n",
         "p.yaml:4: models[1].model"),
        ("server_baseline: {}\nmodels:\n  - {model: a, peak_gpu_memory_bytes: 1GB, batch: 2}\n", "p.yaml:3: models[0].batch"),
        ("server_baseline: {}\nmodels:\n  - {model: a}\n", "p.yaml:3: models[0].peak_gpu_memory_bytes"),
    ],
)
def test_bad_profile_names_file_line_and_field(tmp_path, text, where):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(InputError) as error:
        load_profile(tmp_path / "p.yaml")
    assert str(error.value).startswith(str(tmp_path / where))


def test_bad_csv_row_names_its_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("model,peak_gpu_memory_bytes\nserver_baseline,309MB\na,1GB\nb,-3\n")
    with pytest.raises(InputError, match=r"p\.csv:4: models\[1\]\.peak_gpu_memory_bytes"):
        load_profile(path)


REJECTED = """\
server_baseline: {peak_gpu_memory_bytes: 300MB}
models:
  - model: a
    peak_gpu_memory_bytes: 1GB
    rejected:
      - {name: i4-b8, reason: out of memory}
  - model: b
    configs: []
    rejected:
      - {name: i1-b1, reason: p99 72 ms is over the 50 ms budget}
"""


def test_a_model_without_a_configuration_within_its_constraints_is_kept_with_its_reasons(tmp_path):
    (tmp_path / "p.yaml").write_text(REJECTED)
    profile = load_profile(tmp_path / "p.yaml")
    assert [m.model for m in profile.models] == ["a"] and profile.unplaceable == ("b",)
    assert [(r.name, r.reason) for r in profile.rejected["b"]] == [("i1-b1", "p99 72 ms is over the 50 ms budget")]
    assert [r.name for r in profile.rejected["a"]] == ["i4-b8"]
    for suffix in ("yaml", "json"):
        write_profile(profile, tmp_path / f"again.{suffix}")
        again = load_profile(tmp_path / f"again.{suffix}")
        assert (again.models, again.rejected, again.unplaceable) == (profile.models, profile.rejected, ("b",))
    with pytest.raises(InputError, match="a CSV profile has no place for rejected configurations"):
        write_profile(profile, tmp_path / "again.csv")


@pytest.mark.parametrize("entry, where", [
    ("  - {model: b, configs: []}\n", "p.yaml:3: models[0].configs: a model with no configuration must list"),
    ("  - {model: b, configs: [], rejected: []}\n", "p.yaml:3: models[0].rejected: must be a non-empty list"),
    ("  - {model: b, configs: [], rejected: [{name: x}]}\n", "p.yaml:3: models[0].rejected[0].reason: missing"),
    ("  - {model: b, configs: [], peak_gpu_memory_bytes: 1GB, rejected: [{name: x, reason: y}]}\n",
     "p.yaml:3: models[0].peak_gpu_memory_bytes: unknown field"),
])
def test_a_rejected_model_must_say_why_and_nothing_else(tmp_path, entry, where):
    (tmp_path / "p.yaml").write_text("server_baseline: {}\nmodels:\n" + entry)
    with pytest.raises(InputError) as error:
        load_profile(tmp_path / "p.yaml")
    assert str(error.value).startswith(str(tmp_path / where))
