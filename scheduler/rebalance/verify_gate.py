"""`rebalance --verify-on URL`: replay each device a plan would change on a canary server before any
move, and refuse the plan when one of them fails.

A rebalance moves models onto devices where they have never run together. What each model
measured alone does not add up on a device near capacity (queueing delay grows without bound), so
the gate replays every target device whose set of models is new, each copy at its share of its
model's rate, through a :class:`~gpupack.verification.Verifier` (the profiler's, on the canary
server). Devices whose models do not change are serving already and are not replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gpupack.domain import Placement
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.rebalancer import RebalancePlan
from gpupack.units import counted
from gpupack.verification import DeviceVerdict, PlannedCopy, PlannedDevice, Verifier


@dataclass(frozen=True)
class GateVerdict:
    verdicts: tuple[DeviceVerdict, ...]  # one per target device replayed

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def lines(self, where: str) -> list[str]:
        """For people: one line per device replayed, then the decision."""
        lines = [f"  {v.name} ({', '.join(m.model for m in v.models)}): "
                 + ("passed" if v.passed else "failed: " + "; ".join(
                     f"{m.model} {m.reason}" if m.reason else m.model for m in v.models if not m.passed))
                 for v in self.verdicts]
        failed = [v.name for v in self.verdicts if not v.passed]
        verdict = (f"every target device passed on {where}" if not failed else
                   f"refused: {counted(len(failed), 'target device')} failed on {where} ({', '.join(failed)}); nothing moved")
        return [f"verified {counted(len(self.verdicts), 'target device')} on {where}:", *lines, verdict]


def changed_devices(current: Placement, target: Placement, rates: Mapping[str, float],
                    configs: Mapping[str, str] | None = None,
                    budgets: Mapping[str, float | None] | None = None) -> list[PlannedDevice]:
    """The target devices whose models differ from today's, each copy at its model's rate split
    evenly over its target copies (the router's split when its copies run one configuration)."""
    configs, budgets = configs or {}, budgets or {}
    devices = []
    for device in target.devices_used():
        models = target.models_on(device)
        if set(models) == set(current.models_on(device)):
            continue
        copies = tuple(
            PlannedCopy(m, configs.get(m), rates.get(m, 0.0) / max(len(target.assignments.get(m, ())), 1), budgets.get(m))
            for m in models)
        devices.append(PlannedDevice(device, copies))
    return devices


def verify_targets(current: Placement, target: Placement, rates: Mapping[str, float], verifier: Verifier,
                   configs: Mapping[str, str] | None = None,
                   budgets: Mapping[str, float | None] | None = None) -> GateVerdict:
    """Replay every changed target device; the plan may be applied only when the verdict passed."""
    devices = changed_devices(current, target, rates, configs, budgets)
    return GateVerdict(tuple(verifier.verify(devices)) if devices else ())


def verify_plan_targets(plan: RebalancePlan, verifier: Verifier) -> GateVerdict:
    """The gate for a rebalance plan: its changed target devices at the rates the plan serves."""
    return verify_targets(plan.fleet.placement, plan.target, planned_rates(plan.inputs), verifier)


def planned_rates(inputs: FleetInputs) -> dict[str, float]:
    """Each model's rate to replay: its demand where a throughput policy weighs one, else the
    throughput its profile measured at its peak (what the plan counted it at), else none."""
    profiled = {m.model: m.throughput_per_second or 0.0 for m in inputs.profile.models} if inputs.profile else {}
    return {**profiled, **inputs.demand_per_second}
