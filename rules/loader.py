"""Policy YAML -> validated, frozen :mod:`gpupack.rules.policy` objects, or one precise error.

The JSON Schema checks the shape; this module checks meaning: units that fit the resource,
thresholds within 100%, headroom below its limit, names unique across files, pins that do not
contradict each other. Every error names ``file:line: field``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Iterable

from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.rules.policy import (
    Action,
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    Policy,
    PolicySet,
    ReplicasPolicy,
    Selector,
    Severity,
    ThroughputPolicy,
)
from gpupack.rules.schema import validate_document
from gpupack.units import UnitError, parse_bytes, parse_duration, parse_ratio
from gpupack.yamlfile import LineDict, load_yaml_file

POLICY_SUFFIXES = (".yaml", ".yml")


def load_policies(path: str | Path) -> PolicySet:
    """Load one policy file, or every ``*.yaml``/``*.yml`` file of a directory (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in POLICY_SUFFIXES and p.is_file())
        if not files:
            raise InputError("no *.yaml or *.yml policy files in this directory", path=str(path))
    else:
        files = [path]
    policies: list[Policy] = []
    for file in files:
        policies.extend(_load_file(file))
    _check_unique_names(policies)
    _check_pins_agree(policies)
    return PolicySet(tuple(policies))


def load_policies_if_given(path: str | Path | None) -> PolicySet:
    """The policies at ``path``, or none at all (an empty set) when no path is given."""
    return PolicySet() if path is None else load_policies(path)


def _load_file(path: Path) -> list[Policy]:
    data = load_yaml_file(path)
    if data is None:
        raise InputError("file is empty (expected 'policies:' with a list of policies)", path=str(path), line=1)
    validate_document(data, str(path))
    return [_Builder(str(path), raw, index).build() for index, raw in enumerate(data["policies"])]


class _Builder:
    """Turns one schema-valid policy mapping into its frozen object."""

    def __init__(self, path: str, raw: LineDict, index: int) -> None:
        self.path, self.raw, self.prefix = path, raw, f"policies[{index}]"

    def error(self, key: str, message: str) -> InputError:
        return InputError(message, path=self.path, line=self.raw.line_of(key), field=f"{self.prefix}.{key}")

    def build(self) -> Policy:
        raw = self.raw
        common: dict[str, Any] = {
            "name": raw["name"],
            "severity": Severity(raw.get("severity", Severity.WARNING.value)),
            "action": Action(raw.get("action", Action.ALERT.value)),
            "selector": _selector(raw.get("selector")),
            "source_path": self.path,
            "source_line": raw.line,
        }
        if "for" in raw:
            common["for_seconds"] = self.parse("for", parse_duration)
        if "runbook_url" in raw:
            common["runbook_url"] = raw["runbook_url"]
        if "resource" in raw:
            return self.resource_policy(common)
        if "max_devices" in raw:
            return FleetPolicy(**common, max_devices=raw["max_devices"])
        if "anti_affinity" in raw:
            if common["selector"].models:
                raise self.error("selector", "anti_affinity names its models itself; drop selector.models")
            if len(set(raw["anti_affinity"])) < 2:
                raise self.error("anti_affinity", "needs at least 2 different models")
            return AntiAffinityPolicy(**common, models=tuple(raw["anti_affinity"]))
        if not common["selector"].models:
            kind = "pin" if "pin" in raw else "replicas"
            raise self.error(kind, f"a {kind} policy needs selector.models: the models it applies to")
        if "pin" in raw:
            return PinPolicy(**common, to=_selector(raw["pin"]))
        return ReplicasPolicy(**common, count=raw["replicas"])

    def resource_policy(self, common: dict[str, Any]) -> Policy:
        raw = self.raw
        if raw["resource"] == "throughput":
            return self.throughput_policy(common)
        if "min" in raw:
            raise self.error("min", "min applies to resource: throughput only; a device limit is a max")
        if "max" not in raw:
            raise self.error("resource", "needs max in the same policy")
        resource = Resource.parse(raw["resource"])
        if raw.get("per", "device") == "model":
            if "headroom" in raw:
                raise self.error("headroom", "headroom applies to per-device limits only")
            if common["action"] is Action.REBALANCE:
                raise self.error("action", "rebalance cannot fix a per-model limit: moving a model does not change its peak")
            if resource.is_bytes:
                if _is_percentage(raw["max"]):
                    raise self.error("max", "a per-model gpu_memory limit is absolute: write a size like 8GiB")
                return ModelLimitPolicy(**common, resource=resource, max_value=float(self.parse("max", parse_bytes)))
            return ModelLimitPolicy(**common, resource=resource, max_value=self.ratio("max", resource))
        if resource.is_bytes and not _is_ratio_text(raw["max"]):
            if "headroom" in raw:
                raise self.error("headroom", "headroom needs a percentage max (e.g. max: 90%, headroom: 10%)")
            return CapacityPolicy(**common, resource=resource, max_bytes=self.parse("max", parse_bytes))
        max_ratio = self.ratio("max", resource)
        headroom_ratio = self.ratio("headroom", resource) if "headroom" in raw else 0.0
        if headroom_ratio >= max_ratio:
            raise self.error("headroom", f"headroom {raw['headroom']} leaves no room under max {raw['max']}")
        return CapacityPolicy(**common, resource=resource, max_ratio=max_ratio, headroom_ratio=headroom_ratio)

    def throughput_policy(self, common: dict[str, Any]) -> ThroughputPolicy:
        """Ratios of demand, so above 100% is meaningful (``max: 300%``: three times what is needed)."""
        raw = self.raw
        if "min" not in raw:
            raise self.error("resource", "needs min in the same policy (e.g. min: 100%)")
        if raw.get("per", "model") != "model":
            raise self.error("per", "throughput is judged per model")
        ratios = {key: self.parse(key, parse_ratio) for key in ("min", "max", "headroom") if key in raw}
        if ratios["min"] <= 0:
            raise self.error("min", "must be above 0%")
        if "max" in ratios and ratios["max"] <= ratios["min"]:
            raise self.error("max", f"max {raw['max']} must be above min {raw['min']}")
        return ThroughputPolicy(**common, min_ratio=ratios["min"], max_ratio=ratios.get("max"),
                                headroom_ratio=ratios.get("headroom", 0.0))

    def ratio(self, key: str, resource: Resource) -> float:
        value = self.raw[key]
        if not _is_ratio_text(value):
            unit_hint = "a percentage like 80% or, for gpu_memory, a size like 12GiB" if resource.is_bytes else (
                f"a percentage like 80% ({resource.value} is a ratio, not a size)")
            raise self.error(key, f"{value!r} is not {unit_hint}")
        ratio = self.parse(key, parse_ratio)
        if ratio > 1:
            raise self.error(key, f"threshold {value} is over 100%")
        return ratio

    def parse(self, key: str, parser: Any) -> Any:
        try:
            return parser(self.raw[key])
        except UnitError as e:
            raise self.error(key, str(e)) from e



def _selector(raw: LineDict | None) -> Selector:
    if raw is None:
        return Selector()
    return Selector(
        devices=tuple(raw.get("devices", ())),
        device_labels=dict(raw.get("labels", {})),
        servers=tuple(raw.get("servers", ())),
        models=tuple(raw.get("models", ())),
    )


def _is_percentage(value: Any) -> bool:
    return isinstance(value, str) and value.strip().endswith("%")


def _is_ratio_text(value: Any) -> bool:
    """``80%``, ``0.8`` or ``1``: what a ratio looks like; a size carries a unit or is a large number."""
    if _is_percentage(value):
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool) and number <= 1


def _check_unique_names(policies: Iterable[Policy]) -> None:
    seen: dict[str, Policy] = {}
    for policy in policies:
        first = seen.setdefault(policy.name, policy)
        if first is not policy:
            raise InputError(f"duplicate policy name {policy.name!r} (first at {first.where})",
                             path=policy.source_path, line=policy.source_line, field="name")


def _check_pins_agree(policies: Iterable[Policy]) -> None:
    """Two pins of the same model to provably disjoint devices, or to servers with none in common,
    leave it nowhere to run; planned under, one such pin would block every other change."""
    pins = [p for p in policies if isinstance(p, PinPolicy)]
    for later_index, later in enumerate(pins):
        for earlier in pins[:later_index]:
            model = _shared_model(earlier.selector.models, later.selector.models)
            if model is not None and _disjoint(earlier.to, later.to):
                place = "server" if _disjoint_literals(earlier.to.servers, later.to.servers) else "device"
                raise InputError(
                    f"{later.name!r} conflicts with pin {earlier.name!r} ({earlier.where}): {model!r} would have no "
                    f"{place} to run on",
                    path=later.source_path, line=later.source_line, field="pin")


def _shared_model(left: tuple[str, ...], right: tuple[str, ...]) -> str | None:
    for a in left:
        for b in right:
            if a == b or fnmatch.fnmatchcase(a, b):
                return a
            if fnmatch.fnmatchcase(b, a):
                return b
    return None


def _disjoint(a: Selector, b: Selector) -> bool:
    if any(key in b.device_labels and b.device_labels[key] != value for key, value in a.device_labels.items()):
        return True
    # Servers too: where each GPU runs one server, two pins to servers with none in common leave
    # the model nowhere. Where two servers share a GPU the evaluator would accept a copy there under
    # both, but the pins still contradict each other as written, so they are refused all the same.
    return _disjoint_literals(a.devices, b.devices) or _disjoint_literals(a.servers, b.servers)


def _disjoint_literals(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Two non-empty lists of plain names (no globs) with no name in common."""
    literal = all(not _has_glob(name) for name in a + b)
    return bool(a and b and literal and not set(a) & set(b))


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
