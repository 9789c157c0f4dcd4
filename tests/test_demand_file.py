import pytest

from gpupack.demand import ModelDemand, load_demand
from gpupack.errors import InputError


def write(tmp_path, text):
    path = tmp_path / "demand.yaml"
    path.write_text(text)
    return path


def test_demand_reads_rates_and_budgets_in_base_units(tmp_path):
    path = write(tmp_path, "demand:\n"
                           "  - {model: segmentation_ct_liver, rate_per_second: 40, latency_p99_seconds: 0.050}\n"
                           "  - {model: classification_chest, rate_per_second: 12.5, latency_p99_seconds: 20ms}\n"
                           "  - {model: classification_breast, rate_per_second: 0}\n")
    assert load_demand(path) == (
        ModelDemand("segmentation_ct_liver", 40.0, 0.05),
        ModelDemand("classification_chest", 12.5, 0.02),
        ModelDemand("classification_breast", 0.0, None),
    )


def test_a_rate_may_carry_its_unit_as_flags_read_it(tmp_path):
    path = write(tmp_path, "demand:\n  - {model: a, rate_per_second: 20/s}\n  - {model: b, rate_per_second: 1200/m}\n")
    assert [d.rate_per_second for d in load_demand(path)] == [20.0, 20.0]


@pytest.mark.parametrize("text, where", [
    ("demand:\n  - {model: a, rate_per_second: -3}\n", "demand.yaml:2: demand[0].rate_per_second"),
    ("demand:\n  - {model: a, rate_per_second: lots}\n", "demand.yaml:2: demand[0].rate_per_second"),
    ("demand:\n  - {model: a}\n", "demand.yaml:2: demand[0].rate_per_second: missing"),
    ("demand:\n  - {model: a, rate_per_second: 1}\n  - {model: a, rate_per_second: 2}\n",
     "demand.yaml:3: demand[1].model: model 'a' appears twice"),
    ("demand:\n  - {model: a, rate_per_second: 1,\n     latency_p99_seconds: 0}\n", "demand.yaml:3: demand[0].latency_p99_seconds"),
    ("demand:\n  - {model: a, rate_per_second: 1, qps: 2}\n", "demand.yaml:2: demand[0].qps: unknown field"),
    ("models: []\n", "demand.yaml:1: top level must be a mapping with a 'demand' list"),
])
def test_bad_demand_names_file_line_and_field(tmp_path, text, where):
    with pytest.raises(InputError) as caught:
        load_demand(write(tmp_path, text))
    assert str(caught.value).startswith(f"{tmp_path}/{where}")
