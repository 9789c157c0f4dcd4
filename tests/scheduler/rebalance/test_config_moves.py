"""Plans that change a model's configuration: both configurations count while a copy switches,
no step leaves a model serving less than it must, and the override Triton loads says so."""

from __future__ import annotations

from dataclasses import replace

from gpupack.domain import Device, ModelFootprint, Placement, Resource
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.rules.loader import load_policies
from gpupack.scheduler.rebalance.config_override import loaded_config, triton_override
from gpupack.scheduler.rebalance.current import FleetView, LoadedModel
from gpupack.scheduler.rebalance.configurations import plan_configurations
from gpupack.scheduler.rebalance.inputs import ProfileInputs
from gpupack.scheduler.rebalance.moves import plan_moves
from gpupack.scheduler.rebalance.steps import Budget, Step
from gpupack.scheduler.packing.problem import PlacementProblem
from gpupack.scheduler.rebalance.rebalancer import OBJECTIVES
from gpupack.servers import ServerConfig

MEM = Resource.GPU_MEMORY


def budget(limits: dict[str, float], loaded: dict[tuple[str, str], str], required: float | None = None) -> Budget:
    problem = PlacementProblem(tuple(Device(d, {MEM: 1000.0}) for d in limits), (ModelFootprint("m", {MEM: 60}),),
                               {MEM: 0.0}, {d: {MEM: v} for d, v in limits.items()})
    return replace(Budget.from_problem(problem),
                   config_peaks={"m": {"one": {MEM: 40}, "two": {MEM: 60}}}, loaded_configs=loaded,
                   config_capacity_per_second={"m": {"one": 10, "two": 20}},
                   required_per_second={"m": required} if required is not None else {})


def test_a_copy_is_reconfigured_in_place_only_where_both_configurations_fit_while_it_switches() -> None:
    here = Placement({"m": ("a",)})
    roomy = plan_moves(here, here, budget({"a": 100}, {("m", "a"): "one"}), {"m": "two"})
    assert roomy.safe and roomy.steps == (Step("m", "a", "a", config="two"),)
    assert roomy.steps[0].describe() == "reconfigure m on a to two"
    # 60 alone fits in 80, but 40 + 60 while Triton swaps them does not.
    tight = plan_moves(here, here, budget({"a": 80}, {("m", "a"): "one"}), {"m": "two"})
    assert not tight.safe and tight.blocked == (Step("m", "a", "a", config="two"),)
    assert tight.relaxation is not None
    assert tight.relaxation.description == "raise the gpu_memory limit of a by 20 B for the duration of the moves"
    # Already running the target configuration: nothing to do.
    assert plan_moves(here, here, budget({"a": 100}, {("m", "a"): "two"}), {"m": "two"}).steps == ()


def test_two_small_copies_become_one_big_one_before_the_other_is_unloaded() -> None:
    b = budget({"a": 100, "b": 100}, {("m", "a"): "one", ("m", "b"): "one"}, required=15)
    b = replace(b, min_copies={"m": 1})
    plan = plan_moves(Placement({"m": ("a", "b")}), Placement({"m": ("a",)}), b, {"m": "two"})
    # Unloading first would leave 10/s of the 15/s the model must serve.
    assert plan.safe and plan.steps == (Step("m", "a", "a", config="two"), Step("m", "b", None))


def test_new_copies_load_in_the_planned_configuration() -> None:
    b = budget({"a": 100, "b": 100}, {("m", "a"): "two"})
    plan = plan_moves(Placement({"m": ("a",)}), Placement({"m": ("a", "b")}), b, {"m": "two"})
    assert plan.steps == (Step("m", None, "b", config="two"),)
    assert plan.steps[0].describe() == "load m on b as two"


LOADED = {"name": "m", "backend": "python", "max_batch_size": 8,
          "instance_group": [{"name": "m_0", "kind": "KIND_CPU", "count": 1}], "input": [{"name": "INPUT0"}]}


def config(name: str, **settings) -> ModelConfig:
    return ModelConfig(name, 1.0, (ConfigPoint(10.0, {}),), **settings)


def test_the_override_changes_only_what_the_configuration_sets_and_reads_back_as_it() -> None:
    wanted = config("i2-b4-dyn", instance_count=2, max_batch_size=4, dynamic_batching=True,
                    max_queue_delay_seconds=0.002)
    override = triton_override(LOADED, wanted)
    assert override["instance_group"] == [{"name": "m_0", "kind": "KIND_CPU", "count": 2}]
    assert (override["max_batch_size"], override["dynamic_batching"]) == (4, {"max_queue_delay_microseconds": 2000})
    assert override["input"] == LOADED["input"] and LOADED["instance_group"][0]["count"] == 1
    assert "dynamic_batching" not in triton_override(override, config("plain", dynamic_batching=False))
    others = [config("i1", instance_count=1), config("i2", instance_count=2), wanted]
    assert loaded_config(override, others) is wanted  # the most specific that agrees
    assert loaded_config(LOADED, others) is others[0]
    assert loaded_config(LOADED, [config("i3", instance_count=3)]) is None


def two_instance_profile(*models: str, one: str = "i1", two: str = "i2") -> str:
    """A profile in which one instance of each model (config ``one``) serves 10/s in 48 MiB and
    two instances (config ``two``) serve 20/s in 96 MiB."""
    def config(name: str, instances: int) -> str:
        return (f"      - {{name: {name}, instance_count: {instances}, peak_gpu_memory_bytes: {48 * instances}MiB, "
                f"points: [{{throughput_per_second: {10 * instances}}}]}}\n")
    entries = "".join(f"  - model: {model}\n    peak_gpu_memory_bytes: 48MiB\n    throughput_per_second: 10\n"
                      f"    configs:\n{config(one, 1)}{config(two, 2)}" for model in models)
    return f"server_baseline: {{peak_gpu_memory_bytes: 64MiB}}\nmodels:\n{entries}"


POLICIES = "policies:\n  - {name: serve-demand, resource: throughput, min: 100%, action: rebalance}\n"


def test_a_rebalance_reconfigures_the_model_short_of_demand_and_keeps_one_whose_demand_is_unknown(tmp_path) -> None:
    (tmp_path / "profile.yaml").write_text(two_instance_profile("busy", "quiet"))
    (tmp_path / "policies.yaml").write_text(POLICIES)
    two = {"instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    fleet = FleetView((LoadedModel("t0", "busy", "1", "cpu:t0", {"instance_group": [{"count": 1}]}),
                       LoadedModel("t0", "quiet", "1", "cpu:t0", two)), 0.0)
    from_profile = ProfileInputs(str(tmp_path / "profile.yaml"), [ServerConfig("t0", "http://127.0.0.1:1")], 2**30)
    inputs = replace(from_profile(), demand_per_second={"busy": 15.0}).with_fleet(fleet)
    assert inputs.copy_capacity_per_second == {"busy": 10.0, "quiet": 20.0}  # from what is loaded
    planned = plan_configurations(inputs, fleet, inputs.constraints(fleet, load_policies(tmp_path / "policies.yaml")),
                                  OBJECTIVES, 5.0)
    assert planned is not None and planned.configs == {"busy": "i2", "quiet": "i2"}
    steps = plan_moves(fleet.placement, planned.placement, planned.budget, planned.configs).steps
    assert steps == (Step("busy", "cpu:t0", "cpu:t0", config="i2"),)
