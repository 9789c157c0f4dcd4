"""`resource: throughput` policies: the copies placed against the demand Triton's metrics show."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gpupack.app.cli import main
from gpupack.domain import Device, Placement, Resource
from gpupack.errors import InputError
from gpupack.rules.demand_source import with_loaded_capacities
from gpupack.rules.evaluator import Status, evaluate
from gpupack.rules.loader import load_policies
from gpupack.rules.metrics import RulesCollector, RulesState
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot
from gpupack.rules.policy import Action, ThroughputPolicy
from gpupack.rules.prometheus_export import build_export
from gpupack.rules.report import write_table

SERVE_DEMAND = """\
policies:
  - name: serve-demand
    resource: throughput
    min: 100%
    headroom: 20%
    max: 300%
    action: rebalance
"""


def _policies(tmp_path: Path, text: str = SERVE_DEMAND):
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    return load_policies(path)


def _snapshot(copies: dict[str, list[str]], demand: dict[str, float], capacity: dict[str, float],
              stale: tuple[str, ...] = ()) -> PeaksSnapshot:
    devices = tuple(DevicePeaks(Device(f"GPU-{i}", {Resource.GPU_MEMORY: 16e9}), (f"t{i}",), stale=f"GPU-{i}" in stale)
                    for i in range(4))
    models = tuple(ModelPeaks(model, device, {Resource.GPU_MEMORY: 1e9}) for model, on in copies.items() for device in on)
    return PeaksSnapshot(devices, models, demand_per_second=demand, copy_capacity_per_second=capacity)


def test_the_issues_policy_loads_as_a_throughput_policy_with_its_ratios(tmp_path):
    (policy,) = _policies(tmp_path).policies
    assert isinstance(policy, ThroughputPolicy)
    assert (policy.min_ratio, policy.max_ratio, policy.headroom_ratio, policy.action) == (1.0, 3.0, 0.2, Action.REBALANCE)


@pytest.mark.parametrize(("lines", "message"), [
    ("    resource: throughput\n", "3: policies[0].resource: needs min in the same policy (e.g. min: 100%)"),
    ("    resource: throughput\n    min: 100%\n    max: 80%\n", "5: policies[0].max: max 80% must be above min 100%"),
    ("    resource: throughput\n    min: 2\n", "4: policies[0].min: ratio 2 is above 1 (write 80% or 0.8)"),
    ("    resource: throughput\n    min: 100%\n    per: device\n", "5: policies[0].per: throughput is judged per model"),
    ("    resource: gpu_memory\n    max: 80%\n    min: 10%\n", "5: policies[0].min: min applies to resource: "
     "throughput only; a device limit is a max"),
])
def test_a_malformed_throughput_policy_names_its_line_and_field(tmp_path, lines, message):
    path = tmp_path / "p.yaml"
    path.write_text("policies:\n  - name: serve\n" + lines)
    with pytest.raises(InputError) as error:
        load_policies(path)
    assert str(error.value) == f"{path}:{message}"


def test_one_copy_below_demand_times_headroom_is_violated_and_a_second_copy_clears_it(tmp_path):
    policies = _policies(tmp_path)
    # 20/s x 1.2 = 24/s needed; one copy serves 15/s, two serve 30/s.
    one = evaluate(_snapshot({"small": ["GPU-0"]}, {"small": 20.0}, {"small": 15.0}), policies)
    (result,) = one.results
    assert (result.model, result.status, result.value, result.limit) == ("small", Status.VIOLATED, 15.0, 24.0)
    assert result.headroom_ratio == pytest.approx(15 / 24 - 1)
    two = evaluate(_snapshot({"small": ["GPU-0", "GPU-1"]}, {"small": 20.0}, {"small": 15.0}), policies)
    assert [(r.status, r.value) for r in two.results] == [(Status.OK, 30.0)]


def test_a_copy_reconfigured_by_the_scheduler_is_judged_at_its_loaded_capacity_not_the_profiles(tmp_path):
    policies = _policies(tmp_path)
    profiled = lambda: _snapshot({"small": ["GPU-0"]}, {"small": 20.0}, {"small": 15.0})  # noqa: E731
    assert evaluate(profiled(), policies).results[0].status is Status.VIOLATED
    # The scheduler reloaded the one copy with two instances: 30/s, read back from Triton.
    judged = evaluate(with_loaded_capacities(profiled, lambda: {"small": 30.0})(), policies)
    assert [(r.status, r.value) for r in judged.results] == [(Status.OK, 30.0)]


def test_capacity_far_above_demand_with_a_copy_to_spare_is_the_consolidation_signal(tmp_path):
    policies = _policies(tmp_path)
    # 2/s x 1.2 = 2.4/s needed: one 15/s copy is enough; three are 45/s, above 300% of 2.4/s.
    over = evaluate(_snapshot({"small": ["GPU-0", "GPU-1", "GPU-2"]}, {"small": 2.0}, {"small": 15.0}), policies)
    (result,) = over.results
    assert (result.status, result.value, result.limit) == (Status.VIOLATED, 45.0, pytest.approx(7.2))
    # One copy far above demand is no signal: there is no copy to remove.
    single = evaluate(_snapshot({"small": ["GPU-0"]}, {"small": 0.0}, {"small": 15.0}), policies)
    assert [r.status for r in single.results] == [Status.OK]


def test_without_demand_or_capacity_or_with_a_stale_copy_the_model_is_unknown_never_ok(tmp_path):
    policies = _policies(tmp_path)
    for snapshot in (_snapshot({"small": ["GPU-0"]}, {}, {"small": 15.0}),
                     _snapshot({"small": ["GPU-0"]}, {"small": 1.0}, {}),
                     _snapshot({"small": ["GPU-0", "GPU-1"]}, {"small": 1.0}, {"small": 15.0}, stale=("GPU-1",))):
        assert [r.status for r in evaluate(snapshot, policies).results] == [Status.UNKNOWN]


def test_selectors_choose_the_models_and_the_devices_whose_copies_count(tmp_path):
    policies = _policies(tmp_path, "policies:\n  - name: serve\n    resource: throughput\n    min: 100%\n"
                                   "    selector: {models: [seg*], devices: [GPU-0, GPU-1]}\n")
    snapshot = _snapshot({"seg": ["GPU-0", "GPU-3"], "cls": ["GPU-0"]}, {"seg": 20.0, "cls": 99.0},
                         {"seg": 15.0, "cls": 15.0})
    assert [(r.model, r.status, r.value) for r in evaluate(snapshot, policies).results] == [
        ("seg", Status.VIOLATED, 15.0)]  # the copy on GPU-3 is outside the policy's devices


def test_rules_metrics_publish_capacity_over_requirement_per_model(tmp_path):
    evaluation = evaluate(_snapshot({"small": ["GPU-0"]}, {"small": 20.0}, {"small": 15.0}), _policies(tmp_path))
    families = {f.name: f for f in RulesCollector(lambda: RulesState(evaluation, source_up=True)).collect()}
    (sample,) = families["gpupack_policy_throughput_ratio"].samples
    assert sample.labels == {"policy": "serve-demand", "model": "small"} and sample.value == pytest.approx(15 / 24)
    assert families["gpupack_policy_headroom_ratio"].samples == []
    (violation,) = families["gpupack_policy_violation"].samples
    assert violation.labels["model"] == "small"


def test_the_promql_export_says_why_it_cannot_write_a_throughput_rule(tmp_path):
    export = build_export(_policies(tmp_path))
    assert export.rules == []
    (skipped,) = export.skipped
    assert skipped[0] == "serve-demand" and "capacity comes from the profile" in skipped[1]


def test_rules_check_accepts_it_and_the_table_shows_rates(tmp_path, capsys):
    path = tmp_path / "policies.yaml"
    path.write_text(SERVE_DEMAND)
    assert main(["rules", "check", str(path)]) == 0
    assert capsys.readouterr().out.endswith("1 policy OK\n")
    out = io.StringIO()
    write_table(evaluate(_snapshot({"small": ["GPU-0"]}, {"small": 20.0}, {"small": 15.0}), load_policies(path)), out)
    assert out.getvalue().splitlines()[1].split() == ["serve-demand", "warning", "-", "small", "15/s", "24/s",
                                                      "-", "-38%", "violated"]


def test_placement_of_the_snapshot_is_what_is_judged(tmp_path):
    snapshot = _snapshot({"small": ["GPU-0"]}, {"small": 20.0}, {"small": 15.0})
    placement = Placement({"small": ("GPU-0", "GPU-1")})
    assert [r.status for r in evaluate(snapshot, _policies(tmp_path), placement).results] == [Status.OK]
