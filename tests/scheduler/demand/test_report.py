import dataclasses

from gpupack.demand import ModelDemand
from gpupack.domain import Device, ModelFootprint, Resource
from gpupack.profiles import Profile
from gpupack.scheduler.constraints import build_problem
from gpupack.scheduler.demand.baselines import BEST_THROUGHPUT, PEAK_ONE_COPY, BaselineOutcome
from gpupack.scheduler.demand.plan import plan_for_demand
from gpupack.scheduler.demand.report import render_table
from gpupack.scheduler.plan_report import Limits

GIB = 2**30
MEM = Resource.GPU_MEMORY


def test_a_baseline_on_fewer_devices_is_said_to_need_fewer_not_a_negative_saving():
    models = tuple(ModelFootprint(f"m{k}", {MEM: 10 * GIB}, throughput_per_second=10.0) for k in range(2))
    profile = Profile({}, models)
    base = build_problem(models, [Device(f"gpu-{k}", {MEM: 16 * GIB}) for k in range(2)], {})
    plan = plan_for_demand(profile, [ModelDemand("m0", 5.0), ModelDemand("m1", 5.0)], base)
    fewer = dataclasses.replace(plan.result, device_count=plan.result.device_count - 1)
    text = render_table(plan, [BaselineOutcome(PEAK_ONE_COPY, plan.result), BaselineOutcome(BEST_THROUGHPUT, fewer)],
                        Limits(frozenset(Resource)))
    assert "Tuning for demand (plan 3) saves no device against plan 1 and needs 1 more device than plan 2." in text
    assert "saves -1" not in text
