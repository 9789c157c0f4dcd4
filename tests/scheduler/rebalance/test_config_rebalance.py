"""A rebalance that changes a model's configuration on real Triton, make-before-break.

One CPU-only server runs ``small`` with one instance; the profile says one instance serves 10/s
and two serve 20/s. With 15/s of demand and nowhere to put a second copy, the demand planner
picks two instances: the copy is reloaded in place with a config override while requests keep
being answered, and Triton's config endpoint then reports two instances.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpupack.domain import Placement
from gpupack.model_configs import ConfigPoint, ModelConfig
from gpupack.rules.loader import load_policies
from gpupack.scheduler.rebalance.audit import AuditLog
from gpupack.scheduler.rebalance.executor import ServerPerDeviceExecutor
from gpupack.scheduler.rebalance.step_mechanics import StepContext, StepFailedError
from gpupack.scheduler.rebalance.multi_gpu import GpuSlot, MultiGpuExecutor
from gpupack.scheduler.rebalance.inputs import FleetInputs, ProfileInputs
from gpupack.scheduler.rebalance.steps import Step
from gpupack.scheduler.rebalance.rebalancer import Rebalancer, StalePlanError
from gpupack.scheduler.rebalance.settings import RebalanceSettings
from gpupack.triton.control import TritonControl
from gpupack.servers import ServerConfig
from gpupack.timing import wait_until

from tests.scheduler.rebalance.test_config_moves import two_instance_profile
from tests.scheduler.rebalance.test_throughput_loop import POLICIES, InferenceSender

pytestmark = pytest.mark.triton

MIB = 2**20
PROFILE = two_instance_profile("small", one="one-instance", two="two-instances")


def test_demand_beyond_one_instance_reloads_the_copy_with_two_instances_while_it_serves(
    start_triton, tmp_path: Path
) -> None:
    t0 = start_triton(name="t0", models=["small"])
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "policies.yaml").write_text(POLICIES)
    servers = [ServerConfig("t0", t0.http_url)]
    profile_inputs = ProfileInputs(str(tmp_path / "profile.yaml"), servers, 1024 * MIB)

    def inputs() -> FleetInputs:
        return replace(profile_inputs(), demand_per_second={"small": 15.0})

    rebalancer = Rebalancer(servers, inputs, load_policies(tmp_path / "policies.yaml"),
                            RebalanceSettings(state_dir=tmp_path / "state", cooldown_seconds=0.0, drain_seconds=0.0))
    plan = rebalancer.plan()
    assert [v.policy for v in plan.violations] == ["serve-demand"]
    assert plan.moves.steps == (Step("small", "cpu:t0", "cpu:t0", config="two-instances"),)

    with InferenceSender(t0.http_url) as prober:
        wait_until(lambda: prober.answered > 0, 10, "the model answering before the reload")
        before = prober.answered
        outcome = rebalancer.apply(plan)
        answered_during = prober.answered - before
    assert outcome.succeeded, [s.error for s in outcome.steps]
    print(f"{answered_during} inferences answered during the reload, {len(prober.failed)} failed")
    assert prober.failed == [] and answered_during > 0
    config = TritonControl(servers[0]).model_config("small")
    assert [g["count"] for g in config["instance_group"]] == [2]
    assert t0.ready_models() == ["small"]
    with pytest.raises(StalePlanError, match="configuration changed since the plan was made"):
        rebalancer.apply(plan)  # the same placement, but no longer the configuration it was planned from
    # Read back from Triton, the copy runs two-instances and serves 20/s: demand is met.
    after = rebalancer.plan()
    assert after.violations == () and after.moves.steps == ()
    assert after.inputs.copy_capacity_per_second["small"] == 20.0


def test_one_server_over_several_devices_reloads_a_copy_in_its_new_configuration_where_it_is(
    start_triton, tmp_path: Path
) -> None:
    server = start_triton(name="multi", models=["small"])
    slot = GpuSlot(ServerConfig("multi", server.http_url), {"kind": "KIND_CPU"})
    two = ModelConfig("two-instances", 96 * MIB, (ConfigPoint(20.0, {}),), instance_count=2, max_batch_size=4)
    context = StepContext(AuditLog(tmp_path / "audit.jsonl"), configs={"small": {"two-instances": two}})
    executor = MultiGpuExecutor({"slot-1": slot}, Placement({"small": ("slot-1",)}), context)
    with InferenceSender(server.http_url) as prober:
        wait_until(lambda: prober.answered > 0, 10, "the model answering before the reload")
        executor.execute(Step("small", "slot-1", "slot-1", config="two-instances"))
    assert prober.failed == []
    config = TritonControl(slot.server).model_config("small")
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 2)]
    assert config["max_batch_size"] == 4 and executor.placement == Placement({"small": ("slot-1",)})


def test_a_configuration_triton_refuses_leaves_the_old_one_serving(start_triton, tmp_path: Path) -> None:
    server = start_triton(name="t0", models=["small"])
    refused = ModelConfig("refused", 48 * MIB, (ConfigPoint(10.0, {}),), max_batch_size=-1)
    context = StepContext(AuditLog(tmp_path / "audit.jsonl"), configs={"small": {"refused": refused}})
    executor = ServerPerDeviceExecutor({"cpu:t0": ServerConfig("t0", server.http_url)}, context)
    with InferenceSender(server.http_url) as prober, pytest.raises(StepFailedError, match="still serving on cpu:t0"):
        wait_until(lambda: prober.answered > 0, 10, "the model answering before the reload")
        executor.execute(Step("small", "cpu:t0", "cpu:t0", config="refused"))
    assert prober.failed == [] and server.ready_models() == ["small"]
    config = TritonControl(ServerConfig("t0", server.http_url)).model_config("small")
    assert [g["count"] for g in config["instance_group"]] == [1]
