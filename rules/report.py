"""Evaluation results for people (a table) and for scripts (JSON): the edge where units appear."""

from __future__ import annotations

import json
from typing import Any, TextIO

from gpupack.domain import Resource
from gpupack.rules.evaluator import Evaluation, Result
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    Policy,
    ReplicasPolicy,
    ThroughputPolicy,
)
from gpupack.units import format_bytes, format_percent

_COLUMNS = ("POLICY", "SEVERITY", "DEVICE", "MODEL", "VALUE", "LIMIT", "HEADROOM", "STATUS")


def _resource_of(policy: Policy) -> Resource | None:
    return policy.resource if isinstance(policy, (CapacityPolicy, ModelLimitPolicy)) else None


def _show(value: float | None, policy: Policy) -> str:
    if value is None:
        return "-"
    resource = _resource_of(policy)
    if isinstance(policy, ThroughputPolicy):
        return f"{value:.3g}/s"
    if resource is None:
        return f"{value:.0f}" if isinstance(policy, (FleetPolicy, ReplicasPolicy, AntiAffinityPolicy)) else "-"
    return format_bytes(value) if resource.is_bytes else format_percent(value)


def write_table(evaluation: Evaluation, out: TextIO) -> None:
    rows = [_COLUMNS]
    for r in evaluation.results:
        policy = evaluation.policies[r.policy]
        rows.append((r.policy, policy.severity.value, r.device or "-", r.model or "-", _show(r.value, policy),
                     _show(r.limit, policy), "-" if r.headroom_ratio is None else format_percent(r.headroom_ratio),
                     r.status.value))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")
    counts = {status: sum(1 for r in evaluation.results if r.status.value == status) for status in ("ok", "violated", "unknown")}
    out.write(f"\n{len(evaluation.results)} results: {counts['ok']} ok, {counts['violated']} violated, "
              f"{counts['unknown']} unknown\n")


def result_record(result: Result, policy: Policy) -> dict[str, Any]:
    """One result in base units (bytes, ratios), as JSON output and log lines carry it."""
    record: dict[str, Any] = {"policy": result.policy, "severity": policy.severity.value, "action": policy.action.value,
                              "device": result.device or None, "model": result.model or None,
                              "status": result.status.value}
    resource = _resource_of(policy)
    if resource is not None:
        record["resource"] = resource.value
    elif isinstance(policy, ThroughputPolicy):
        record["resource"] = "throughput"  # value and limit in inferences per second
    for key in ("value", "limit", "headroom_ratio"):
        value = getattr(result, key)
        if value is not None:
            record[key] = value
    if result.models:
        record["models"] = list(result.models)
    return record


def write_json(evaluation: Evaluation, out: TextIO) -> None:
    records = [result_record(r, evaluation.policies[r.policy]) for r in evaluation.results]
    json.dump({"results": records, "violated": len(evaluation.violations)}, out, indent=2)
    out.write("\n")
