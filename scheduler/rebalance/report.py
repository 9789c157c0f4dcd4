"""How a rebalance plan and its outcome read: a table for people, JSON for tools."""

from __future__ import annotations

import json
from typing import Any

from gpupack.domain import Resource
from gpupack.rules.evaluator import Result
from gpupack.rules.policy import PolicySet
from gpupack.scheduler.rebalance.outcome import RebalanceOutcome, RebalancePlan
from gpupack.units import counted, format_bytes, format_percent


def _value(resource: Resource | None, value: float | None) -> str:
    if value is None:
        return "?"
    if resource is None:
        return f"{value:g}"
    return format_bytes(value) if resource.is_bytes else format_percent(value)


def _violation(result: Result, policies: PolicySet) -> str:
    where = result.device or result.model or "fleet"
    resource = next((getattr(p, "resource", None) for p in policies.policies if p.name == result.policy), None)
    detail = ""
    if result.limit is not None:
        detail = f": {_value(resource, result.value)} > limit {_value(resource, result.limit)}"
    models = f" ({', '.join(result.models)})" if result.models else ""
    return f"{result.policy} on {where}{detail}{models}"


def render_table(plan: RebalancePlan, policies: PolicySet, applying: bool) -> str:
    fleet = plan.fleet
    lines = [
        f"fleet: {counted(len(fleet.placement.assignments), 'model')} loaded on "
        f"{len(fleet.placement.devices_used())} of {counted(len(plan.inputs.devices), 'device')}"
    ]
    lines.extend(f"server {server} does not answer ({why}): marked down, nothing planned onto it"
                 for server, why in sorted(fleet.down.items()))
    if not plan.violations:
        lines.append("violations: none")
    else:
        lines.append("violations:")
        lines.extend(f"  {_violation(v, policies)}" for v in plan.violations)
    if plan.unsatisfiable:
        lines.append(f"unsatisfiable, planned without (no placement meets them with the policies before them): "
                     f"{', '.join(plan.unsatisfiable)}")
    if plan.proof is not None:
        lines.append(f"target: {counted(plan.proof.device_count, 'device')} ({plan.proof.describe()})")
    moves = plan.moves
    if not moves.safe:
        lines.append(f"no safe plan: {moves.reason}")
        if moves.relaxation:
            lines.append(f"  smallest relaxation: {moves.relaxation.description}")
            lines.extend(f"    {n}. {s.describe()}" for n, s in enumerate(moves.relaxation.steps, start=1))
    elif not plan.admission.admitted and not plan.admission.deferred:
        lines.append(f"plan: nothing to do ({moves.reason})" if moves.reason else "plan: nothing to do")
    else:
        lines.append(f"plan: {counted(len(plan.admission.admitted), 'step')}, each safe with both copies counted")
        lines.extend(f"  {n}. {s.describe()}" for n, s in enumerate(plan.admission.admitted, start=1))
    if plan.broken_alerts:
        lines.append(f"alert policies the plan still breaks (alerts never block a rebalance): {', '.join(plan.broken_alerts)}")
    if plan.admission.deferred:
        lines.append("deferred to a later run:")
        lines.extend(f"  {s.describe()}: {why}" for s, why in plan.admission.deferred)
    if plan.admission.admitted and not applying:
        lines.append("nothing changed: run again with --apply to carry out the plan")
    return "\n".join(lines) + "\n"


def render_outcome(outcome: RebalanceOutcome) -> str:
    done = sum(s.succeeded for s in outcome.steps)
    failed = [s for s in outcome.steps if not s.succeeded]
    text = f"applied {done} of {counted(len(outcome.plan.admission.admitted), 'step')}"
    if failed:
        text += f"; stopped at a failed step: {failed[0].error}"
    if outcome.stopped:
        text += f"; stopped: {outcome.stopped}"
    return text + "\n"


def plan_document(plan: RebalancePlan, outcome: RebalanceOutcome | None) -> dict[str, Any]:
    def step(s: Any) -> dict[str, Any]:
        return {"model": s.model, "kind": s.kind, "source": s.source, "target": s.target, "temporary": s.temporary,
                "config": s.config}

    moves = plan.moves
    document: dict[str, Any] = {
        "current": {m: list(d) for m, d in sorted(plan.fleet.placement.assignments.items())},
        "target": {m: list(d) for m, d in sorted(plan.target.assignments.items())},
        "violations": [
            {"policy": v.policy, "device": v.device, "model": v.model, "value": v.value, "limit": v.limit,
             "models": list(v.models)}
            for v in plan.violations
        ],
        "servers_down": dict(sorted(plan.fleet.down.items())),
        "safe": moves.safe,
        "reason": moves.reason,
        "alert_policies_broken": list(plan.broken_alerts),
        "unsatisfiable": list(plan.unsatisfiable),
        "steps": [step(s) for s in plan.admission.admitted],
        "deferred": [{**step(s), "reason": why} for s, why in plan.admission.deferred],
        "relaxation": (
            {"description": moves.relaxation.description, "steps": [step(s) for s in moves.relaxation.steps]}
            if moves.relaxation else None
        ),
        "device_count_proof": plan.proof.as_dict() if plan.proof is not None else None,
    }
    if outcome is not None:
        document["applied"] = [
            {**step(o.step), "succeeded": o.succeeded, "seconds": round(o.seconds, 3), "error": o.error}
            for o in outcome.steps
        ]
        document["stopped"] = outcome.stopped
    return document


def render_json(plan: RebalancePlan, outcome: RebalanceOutcome | None) -> str:
    return json.dumps(plan_document(plan, outcome), indent=2, default=str) + "\n"
