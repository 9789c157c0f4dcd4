"""Where a model with no ready copy is reloaded: where it was, else elsewhere within the policies.

Where it was, when that server answers again (it restarted empty): the placement the last plan
chose. Elsewhere, when none of its servers answers: a device of a server that answers, whose
physical capacity and policies still hold with the model's recorded peak added, with the most
memory left. A model whose peak is unknown is not placed blind (it could overfill a device); it
stays lost, and the audit log and ``gpupack_model_ready_copies`` say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gpupack.domain import Resource
from gpupack.errors import GpupackError
from gpupack.rules.evaluator import evaluate
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.current import FleetView, LoadedModel
from gpupack.scheduler.rebalance.desired import Copy
from gpupack.scheduler.rebalance.inputs import FleetInputs
from gpupack.scheduler.rebalance.steps import TOLERANCE


@dataclass(frozen=True)
class Reload:
    copy: Copy | None  # None: nowhere fits, ``reason`` says why
    reason: str


def where_to_reload(model: str, was: tuple[Copy, ...], fleet: FleetView, inputs: FleetInputs,
                    policies: PolicySet, server_of: Mapping[str, str]) -> Reload:
    """``server_of``: device -> the one managed server that drives it (server-per-device fleets)."""
    for copy in was:
        if copy.server not in fleet.down and server_of.get(copy.device) == copy.server:
            return Reload(copy, f"where it was, on {copy.server}")
    peak = inputs.footprints.get(model, {}).get(Resource.GPU_MEMORY)
    if peak is None:
        return Reload(None, f"{', '.join(sorted({c.server for c in was})) or 'its server'} does not answer "
                            "and its memory peak is unknown, so no other device is known to fit it")
    try:
        before = _violations(fleet, inputs, policies)
    except GpupackError as e:
        return Reload(None, f"the fleet cannot be judged: {e}")
    candidates = []
    for entry in inputs.devices:
        device = entry.device.name
        server = server_of.get(device)
        if server is None or server in fleet.down:
            continue
        trial = FleetView((*fleet.models, LoadedModel(server, model, "", device)), fleet.generated_at_seconds,
                          fleet.down)
        free = entry.device.capacity.get(Resource.GPU_MEMORY, 0.0) - _memory_used(trial, inputs, device)
        if free < -TOLERANCE * max(1.0, peak):
            continue
        if _violations(trial, inputs, policies) - before:
            continue
        candidates.append((free, device, server))
    if not candidates:
        return Reload(None, "no device of a server that answers has room for it within the policies")
    free, device, server = max(candidates, key=lambda c: (c[0], c[1]))
    return Reload(Copy(server, device), f"its servers do not answer; {device} has room within the policies")


def _memory_used(fleet: FleetView, inputs: FleetInputs, device: str) -> float:
    entry = next(d for d in inputs.devices if d.device.name == device)
    used = entry.server_baseline.get(Resource.GPU_MEMORY, 0.0)
    for m in fleet.models:
        if m.device == device:
            used += inputs.footprints.get(m.model, {}).get(Resource.GPU_MEMORY, 0.0)
    return used


def _violations(fleet: FleetView, inputs: FleetInputs, policies: PolicySet) -> set[tuple[str, str]]:
    evaluation = evaluate(inputs.snapshot(fleet), policies, fleet.placement)
    return {(v.policy, v.device or v.model or "") for v in evaluation.violations}
