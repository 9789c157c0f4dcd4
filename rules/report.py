"""Evaluation results for people (a table) and for scripts (JSON): the edge where units appear."""

from __future__ import annotations

import json
from typing import Any, TextIO

from gpupack.domain import Resource
from gpupack.rules.evaluator import Evaluation, Result, Status
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    Policy,
    ReplicasPolicy,
    ThroughputPolicy,
)
from gpupack.units import counted, format_bytes, format_percent

_COLUMNS = ("POLICY", "SEVERITY", "DEVICE", "MODEL", "VALUE", "LIMIT", "% OF LIMIT", "HEADROOM", "STATUS")
# Policies whose limit is a most (capacity, a model's peak, fleet size): their share of it is worth
# a column. Replicas and throughput limits are a least; there the share would read backwards.
_MAXIMUM_LIMITS = (CapacityPolicy, ModelLimitPolicy, FleetPolicy)


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


def _of_limit(result: Result, policy: Policy) -> str:
    if not isinstance(policy, _MAXIMUM_LIMITS) or result.value is None or not result.limit:
        return "-"
    return format_percent(result.value / result.limit)


def write_table(evaluation: Evaluation, out: TextIO) -> None:
    rows = [_COLUMNS]
    for r in evaluation.results:
        policy = evaluation.policies[r.policy]
        rows.append((r.policy, policy.severity.value, r.device or "-", r.model or "-", _show(r.value, policy),
                     _show(r.limit, policy), _of_limit(r, policy),
                     "-" if r.headroom_ratio is None else format_percent(r.headroom_ratio), r.status.value))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")
    counts = {status: sum(1 for r in evaluation.results if r.status is status) for status in Status}
    summary = (f"{counted(len(evaluation.results), 'result')}: {counts[Status.OK]} ok, "
               f"{counts[Status.VIOLATED]} violated, {counts[Status.UNKNOWN]} unknown")
    if counts[Status.NO_MATCH]:
        summary += f", {counts[Status.NO_MATCH]} no match"
    out.write(f"\n{summary}\n")
    for r in evaluation.results:
        if r.status is Status.NO_MATCH:
            out.write(f"no match: {no_match_reason(evaluation.policies[r.policy])}\n")


def no_match_reason(policy: Policy) -> str:
    """Which policy matched nothing, where it is written, and the selector that matched nothing."""
    if isinstance(policy, (CapacityPolicy, AntiAffinityPolicy)):
        nothing = "no device"
    elif isinstance(policy, (ModelLimitPolicy, PinPolicy)):
        nothing = "no loaded model"
    else:
        nothing = "no model"
    return f"{policy.name} ({policy.where}): {nothing} matches its selector ({_describe_selector(policy)})"


def _selector_record(policy: Policy) -> dict[str, Any]:
    selector = policy.selector
    models = policy.models if isinstance(policy, AntiAffinityPolicy) else selector.models
    record: dict[str, Any] = {"devices": list(selector.devices), "labels": dict(selector.device_labels),
                              "servers": list(selector.servers), "models": list(models)}
    return {key: value for key, value in record.items() if value}


def _describe_selector(policy: Policy) -> str:
    parts = []
    for key, value in _selector_record(policy).items():
        items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else value
        parts.append(f"{key}: {', '.join(items)}")
    return "; ".join(parts) or "none: every device and model"


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
    if result.status is Status.NO_MATCH:
        record["selector"] = _selector_record(policy)
        record["where"] = policy.where
    return record


def write_json(evaluation: Evaluation, out: TextIO) -> None:
    records = [result_record(r, evaluation.policies[r.policy]) for r in evaluation.results]
    json.dump({"results": records, "violated": len(evaluation.violations)}, out, indent=2)
    out.write("\n")
