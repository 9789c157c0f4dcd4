"""A series plan as the plan reports see any plan: a :class:`PlacementResult` whose device totals
are each device's busiest step per resource (server baseline included), with its proof."""

from __future__ import annotations

import numpy as np

from gpupack.domain import Placement
from gpupack.scheduler.demand.series import RESOURCES, SeriesPlan
from gpupack.scheduler.packing.problem import DeviceCountProof, PlacementResult, ProofStatus

METHOD = "series-first-fit-decreasing"
STOPPED_NOTE = "the time limit stopped the search; the best packing found by then"


def as_result(plan: SeriesPlan, solve_seconds: float) -> PlacementResult:
    names = plan.fleet.names
    placement = Placement({o.model: tuple(names[d] for d in ds) for o, ds in zip(plan.chosen, plan.devices)})
    totals = totals_per_step(plan)
    busiest = {names[d]: {r: float(totals[d][k].max(initial=0.0)) for k, r in enumerate(RESOURCES) if _measured(plan, k)}
               for d in plan.used()}
    optimal = plan.device_count <= plan.lower_bound
    proof = DeviceCountProof(ProofStatus.OPTIMAL if optimal else ProofStatus.GAP, plan.device_count, plan.lower_bound,
                             "peak-of-the-sum", STOPPED_NOTE if plan.stopped_early else "")
    return PlacementResult(placement, busiest, plan.device_count, plan.lower_bound, optimal, solve_seconds, METHOD,
                           None, proof)


def totals_per_step(plan: SeriesPlan) -> np.ndarray:
    """[device, resource, step]: every device's totals in every step, server baseline included."""
    return plan.loads() + plan.fleet.baseline[:, :, None]


def _measured(plan: SeriesPlan, resource_index: int) -> bool:
    return resource_index == 0 or any(o.cost[resource_index].any() for o in plan.chosen)
