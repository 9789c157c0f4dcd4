"""Policies as Prometheus alerting rules over the exporter's series, with ``promtool test rules`` cases.

Each rule is written from the policy's compiled constraint (``gpupack.rules.compiled``), the form
the evaluator judges and the scheduler plans under; the PromQL mirrors the evaluator: per device, the server's baseline peak plus the peaks of the
models loaded there now (``and on(...) gpupack_model_memory_bytes`` keeps only loaded models).
Alerts follow kube-prometheus: CamelCase names, ``for:``, ``severity``, ``summary``,
``description``, ``runbook_url``. A policy the exporter's series cannot express (device labels,
bandwidth per model) is skipped with a reason rather than exported wrong.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from prometheus_client.utils import floatToGoString
import yaml

from gpupack.domain import Resource
from gpupack.units import format_bytes
from gpupack.rules.compiled import (
    Allowed,
    AntiAffinity,
    Capacity,
    Constraint,
    FleetMax,
    ModelLimit,
    Replicas,
    Throughput,
    compile_policies,
)
from gpupack.rules.policy import PolicySet, Selector

GROUP = "gpupack-policies"
DEFAULT_RUNBOOK = "https://github.com/gpupack/gpupack/blob/main/rules/README.md#runbook"
LOADED = "gpupack_model_memory_bytes"
_MODEL_KEYS = "server, model, version, device"
_PEAK_SERIES = {Resource.GPU_MEMORY: "gpupack_model_memory_peak_bytes",
                Resource.GPU_UTILIZATION: "gpupack_model_utilization_peak_ratio"}
_REGEX_SPECIAL = set(".^$+(){}|\\")
_START_MINUTE = 10  # test series turn bad here; before it, nothing may fire


class NotExpressible(Exception):
    """This policy cannot be written over the exporter's series; the message says why."""


@dataclass
class Export:
    rules: list[dict[str, Any]] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (policy, why)


def alert_name(policy: str) -> str:
    return "Gpupack" + "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", policy))


def glob_to_regex(patterns: tuple[str, ...]) -> str:
    """Globs -> one RE2 alternation (PromQL regexes are anchored), escaped for a PromQL string
    literal: a regex backslash is written twice there."""
    def one(glob: str) -> str:
        out, i = "", 0
        while i < len(glob):
            c = glob[i]
            if c == "*":
                out += ".*"
            elif c == "?":
                out += "."
            elif c == "[" and "]" in glob[i + 1:]:
                end = glob.index("]", i + 1)
                body = glob[i + 1:end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end
            elif c in _REGEX_SPECIAL:
                out += "\\\\" + c
            else:
                out += c
            i += 1
        return out
    return "|".join(one(p) for p in patterns)


def _matchers(selector: Selector, with_models: bool = True) -> str:
    if selector.device_labels:
        raise NotExpressible("device labels are not in the exporter's series")
    parts = []
    for label, globs in (("device", selector.devices), ("server", selector.servers),
                         ("model", selector.models if with_models else ())):
        if globs:
            parts.append(f'{label}=~"{glob_to_regex(globs)}"')
    return "{" + ", ".join(parts) + "}" if parts else ""


def _example(patterns: tuple[str, ...], fallback: str, avoid: tuple[str, ...] = ()) -> str:
    """A concrete name the globs match (for test series); with ``avoid``, one they do not."""
    if avoid:
        for candidate in ("elsewhere-0", "other", "x"):
            if not any(fnmatch.fnmatchcase(candidate, p) for p in avoid):
                return candidate
        raise NotExpressible("its devices match every name, so it cannot be violated")
    if not patterns:
        return fallback
    return re.sub(r"\[!?([^\]])[^\]]*\]", r"\1", patterns[0]).replace("*", "x").replace("?", "x")


def _loaded_peaks(resource: Resource, selector: Selector) -> str:
    series = _PEAK_SERIES.get(resource)
    if series is None:
        raise NotExpressible(f"the exporter has no per-model {resource.value} series")
    return f"({series}{_matchers(selector)} and on({_MODEL_KEYS}) {LOADED})"


class _Series:
    """Builds promtool input series that are fine before minute 10 and violating after it."""

    def __init__(self, minutes: int) -> None:
        self.minutes = minutes
        self.items: list[dict[str, str]] = []

    def add(self, name: str, labels: dict[str, str], before: float | None, after: float) -> None:
        # Numbers here and in the rules are written as the exposition writes them, exactly: ``:g``
        # kept six digits, so a limit of 2 GiB became 2.14748e+09 and a model at exactly 2 GiB fired.
        head = "_" if before is None else floatToGoString(before)
        label_text = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        values = f"{head}x{_START_MINUTE - 1} {floatToGoString(after)}+0x{self.minutes - _START_MINUTE}"
        self.items.append({"series": f"{name}{{{label_text}}}", "values": values})


def _capacity(policy: Capacity, s: _Series) -> tuple[str, dict[str, str], str]:
    selector = policy.origin.scope
    device = _example(selector.devices, "GPU-0")
    server = _example(selector.servers, "triton-0")
    model_labels = {"server": server, "model": _example(selector.models, "model-a"), "version": "1",
                    "device": device}
    # As in the evaluator, a device's usage is every server's baseline there plus every selected
    # model loaded there, whichever server loaded it; ``servers`` only chooses the devices judged
    # (those a selected server runs on), so a shared GPU is judged whole.
    on_devices = replace(selector, servers=())
    peaks = _loaded_peaks(policy.resource, on_devices)
    if policy.resource.is_bytes:
        usage = (f"sum by (device) ({peaks} or "
                 f"gpupack_server_unattributed_memory_peak_bytes{_matchers(on_devices, with_models=False)})")
        if policy.max_bytes is not None:
            limit, capacity, shown = f"{policy.max_bytes}", 2.0 * policy.max_bytes, format_bytes(policy.max_bytes)
        else:
            ratio = policy.max_ratio or 0.0  # None only beside max_bytes
            limit, capacity = f"on(device) ({floatToGoString(ratio)} * gpupack_device_memory_total_bytes)", 1e10
            shown = f"{ratio * 100:g}% of its memory"
        s.add("gpupack_device_memory_total_bytes", {"device": device}, capacity, capacity)
        s.add("gpupack_server_unattributed_memory_peak_bytes", {"server": server, "device": device}, 100, 100)
        s.add(_PEAK_SERIES[policy.resource], model_labels, 100, capacity)
        what = "the server baseline plus the peaks of its loaded models exceed"
    else:
        ratio = policy.max_ratio or 0.0  # None only beside max_bytes
        usage, limit, shown = f"sum by (device) ({peaks})", floatToGoString(ratio), f"{ratio * 100:g}% {policy.resource.value}"
        s.add(_PEAK_SERIES[policy.resource], model_labels, ratio / 2, 1.5)
        what = "the peaks of its loaded models exceed"
    if selector.servers:
        # A server's baseline series names each device it runs on, models loaded or not.
        selected = _matchers(selector, with_models=False)
        usage = f"({usage} and on(device) group by (device) (gpupack_server_unattributed_memory_peak_bytes{selected}))"
        if not policy.resource.is_bytes:
            s.add("gpupack_server_unattributed_memory_peak_bytes", {"server": server, "device": device}, 0, 0)
    s.add(LOADED, {**model_labels, "source": "process"}, 1, 1)
    return f"{usage} > {limit}", {"device": device}, f"On device {{{{ $labels.device }}}} {what} {shown}."


def _model_limit(policy: ModelLimit, s: _Series) -> tuple[str, dict[str, str], str]:
    selector = policy.origin.scope
    series = _PEAK_SERIES.get(policy.resource)
    if series is None:
        raise NotExpressible(f"the exporter has no per-model {policy.resource.value} series")
    labels = {"server": _example(selector.servers, "triton-0"), "model": _example(selector.models, "model-a"),
              "version": "1", "device": _example(selector.devices, "GPU-0")}
    s.add(series, labels, policy.max_value / 2, policy.max_value * 2)
    expr = f"max by (model, device) ({series}{_matchers(selector)}) > {floatToGoString(policy.max_value)}"
    shown = format_bytes(policy.max_value) if policy.resource.is_bytes else f"{policy.max_value * 100:g}%"
    return expr, {"model": labels["model"], "device": labels["device"]}, (
        f"Model {{{{ $labels.model }}}} on {{{{ $labels.device }}}} peaks above its limit of {shown}.")


def _fleet(policy: FleetMax, s: _Series) -> tuple[str, dict[str, str], str]:
    selector = policy.origin.scope
    for d in range(policy.max_devices + 1):
        device = _example(selector.devices, "GPU-0") + f"-{d}"
        labels = {"server": _example(selector.servers, "triton-0"), "model": _example(selector.models, "m"),
                  "version": "1", "device": device, "source": "process"}
        s.add(LOADED, labels, None if d == policy.max_devices else 1, 1)
    expr = f"count(count by (device) ({LOADED}{_matchers(selector)})) > {policy.max_devices}"
    return expr, {}, f"Models are loaded on more than {policy.max_devices} devices."


def _pin(policy: Allowed, s: _Series) -> tuple[str, dict[str, str], str]:
    models = policy.origin.scope.models
    if policy.to.device_labels:
        raise NotExpressible("it pins to device labels, which are not in the exporter's series")
    # As in the evaluator, a pin to servers allows the devices those servers run on (each has a
    # baseline series there), whichever server on the device loaded the model.
    loaded = f'{LOADED}{{model=~"{glob_to_regex(models)}"}}'
    outside = []
    if policy.to.devices:
        outside.append(f'{LOADED}{{model=~"{glob_to_regex(models)}", device!~"{glob_to_regex(policy.to.devices)}"}}')
    if policy.to.servers:
        outside.append(f'({loaded} unless on(device) group by (device) '
                       f'(gpupack_server_unattributed_memory_peak_bytes{{server=~"{glob_to_regex(policy.to.servers)}"}}))')
    if not outside:
        raise NotExpressible("it pins to every device, so it cannot be violated")
    model = _example(models, "m")
    device = _example((), "", avoid=policy.to.devices) if policy.to.devices else "GPU-0"
    server = _example((), "", avoid=policy.to.servers) if policy.to.servers else "triton-0"
    s.add(LOADED, {"server": server, "model": model, "version": "1", "device": device, "source": "process"}, None, 1)
    expr = f"count by (model, device) ({' or '.join(outside)}) > 0"
    return expr, {"model": model, "device": device}, (
        "Model {{ $labels.model }} is loaded on {{ $labels.device }}, outside the devices it is pinned to.")


def _anti_affinity(policy: AntiAffinity, s: _Series) -> tuple[str, dict[str, str], str]:
    selector = policy.origin.scope  # its models are the anti-affinity globs
    device = _example(selector.devices, "GPU-0")
    for position, glob in enumerate(selector.models[:2]):
        labels = {"server": "triton-0", "model": _example((glob,), "m") + f"{position}" * ("*" in glob),
                  "version": "1", "device": device, "source": "process"}
        s.add(LOADED, labels, 1 if position == 0 else None, 1)
    expr = f"count by (device) (count by (device, model) ({LOADED}{_matchers(selector)})) > 1"
    return expr, {"device": device}, f"Device {{{{ $labels.device }}}} runs more than one of: {', '.join(selector.models)}."


def _replicas(policy: Replicas, s: _Series) -> tuple[str, dict[str, str], str]:
    selector = policy.origin.scope
    model = _example(selector.models, "m")
    for d in range(policy.count - 1):
        s.add(LOADED, {"server": "triton-0", "model": model, "version": "1", "device": f"GPU-{d}", "source": "process"},
              None, 1)
    if policy.count == 1:
        raise NotExpressible("one replica is what any loaded model has")
    expr = f"count by (model) (count by (model, device) ({LOADED}{_matchers(selector)})) < {policy.count}"
    return expr, {"model": model}, f"Model {{{{ $labels.model }}}} runs on fewer than {policy.count} devices."


def _throughput(policy: Throughput, s: _Series) -> tuple[str, dict[str, str], str]:
    raise NotExpressible("a copy's capacity comes from the profile, not from any exported series; alert on the "
                         "rules engine's gpupack_policy_violation and gpupack_policy_throughput_ratio instead")


# Each key's builder takes that constraint type (hence Any: a dict cannot say so per key).
_BUILDERS: dict[type[Constraint], Callable[[Any, _Series], tuple[str, dict[str, str], str]]] = {
    Capacity: _capacity, ModelLimit: _model_limit, FleetMax: _fleet, Allowed: _pin,
    AntiAffinity: _anti_affinity, Replicas: _replicas, Throughput: _throughput}


def alert_rule(constraint: Constraint, series: "_Series | None" = None) -> tuple[dict[str, Any], dict[str, str], str]:
    """The alerting rule of one constraint, the labels its test alert carries and its description
    template; raises :class:`NotExpressible`."""
    origin = constraint.origin
    expr, labels, description = _BUILDERS[type(constraint)](constraint, series or _Series(_START_MINUTE + 1))
    annotations = {"summary": f"Policy {origin.policy} is violated.", "description": description,
                   "runbook_url": origin.runbook_url or DEFAULT_RUNBOOK}
    rule = {"alert": alert_name(origin.policy), "expr": expr, "for": f"{origin.for_seconds:g}s",
            "labels": {"severity": origin.severity.value, "policy": origin.policy}, "annotations": annotations}
    return rule, labels, description


def build_export(policies: PolicySet) -> Export:
    export = Export()
    for constraint in compile_policies(policies).items:
        origin = constraint.origin
        series = _Series(_START_MINUTE + math.ceil(origin.for_seconds / 60) + 5)
        try:
            rule, labels, description = alert_rule(constraint, series)
        except NotExpressible as e:
            export.skipped.append((origin.policy, str(e)))
            continue
        export.rules.append(rule)
        expected = {"exp_labels": {**rule["labels"], **labels},
                    "exp_annotations": {**rule["annotations"], "description": _render(description, labels)}}
        export.tests.append({"interval": "1m", "input_series": series.items, "alert_rule_test": [
            {"eval_time": f"{_START_MINUTE - 1}m", "alertname": rule["alert"], "exp_alerts": []},
            {"eval_time": f"{series.minutes}m", "alertname": rule["alert"], "exp_alerts": [expected]},
        ]})
    return export


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)


def write_export(export: Export, rules_path: Path, tests_path: Path) -> None:
    rules_path.write_text(yaml.safe_dump({"groups": [{"name": GROUP, "rules": export.rules}]}, sort_keys=False))
    # promtool resolves rule_files against the tests file's folder; relative keeps the pair movable.
    rule_file = os.path.relpath(Path(rules_path).resolve(), Path(tests_path).resolve().parent)
    tests_path.write_text(yaml.safe_dump({"rule_files": [rule_file], "evaluation_interval": "1m",
                                          "tests": export.tests}, sort_keys=False, width=200))
