"""Peaks + placement + policies -> one result per policy x device (or model): a pure function.

Capacity follows the article: a device carries its server's baseline plus the sum of the peaks of
the models placed on it. The work is indexed once per snapshot (models and devices as integer
positions, peaks as arrays) and every policy is a handful of numpy reductions over the placed
(model, device) pairs, so 10,000 models x 2,000 devices x 20 policies stays well under a second.

A value that is not known never reads as ok: a stale device is ``unknown``; missing peaks give
``violated`` only when the known part already exceeds the limit, else ``unknown``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from gpupack.domain import Device, Placement, Resource
from gpupack.rules.peaks import PeaksSnapshot
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    Policy,
    PolicySet,
    ReplicasPolicy,
    Selector,
)


class Status(str, enum.Enum):
    OK = "ok"
    VIOLATED = "violated"
    UNKNOWN = "unknown"


class Result(NamedTuple):
    policy: str
    device: str  # "" for fleet-wide and per-model-across-devices results
    model: str  # "" for per-device results
    status: Status
    value: float | None = None  # bytes for gpu_memory, ratio 0-1, or a count
    limit: float | None = None
    headroom_ratio: float | None = None  # (limit - value) / capacity; negative when over
    models: tuple[str, ...] = ()  # the models involved in a violation of a per-device rule


@dataclass(frozen=True)
class Evaluation:
    results: tuple[Result, ...]
    policies: Mapping[str, Policy]

    @property
    def violations(self) -> tuple[Result, ...]:
        return tuple(r for r in self.results if r.status is Status.VIOLATED)


def evaluate(snapshot: PeaksSnapshot, policies: PolicySet, placement: Placement | None = None) -> Evaluation:
    """Judge every policy; ``placement`` defaults to what the snapshot says is loaded now."""
    index = _Index(snapshot, snapshot.placement() if placement is None else placement)
    results: list[Result] = []
    for policy in policies.policies:
        results.extend(_EVALUATORS[type(policy)](index, policy))
    return Evaluation(tuple(results), {p.name: p for p in policies.policies})


class _Index:
    """The snapshot as positions and arrays, built once per evaluation."""

    def __init__(self, snapshot: PeaksSnapshot, placement: Placement) -> None:
        devices = {d.device.name: d for d in snapshot.devices}
        placed_devices = [name for name in placement.devices_used() if name not in devices]
        self.device_names = [*devices, *placed_devices]  # placed on a device the source does not know
        self.known_devices = len(devices)
        self.devices = [d.device for d in devices.values()] + [Device(name, {}) for name in placed_devices]
        self.device_servers = [d.servers for d in devices.values()] + [() for _ in placed_devices]
        self.device_unknown = np.array(
            [d.stale or any(s in snapshot.down_servers for s in d.servers) for d in devices.values()]
            + [True] * len(placed_devices), dtype=bool)
        self.baselines = [d.server_baseline for d in devices.values()] + [{} for _ in placed_devices]
        footprints = snapshot.footprints()
        self.model_names = sorted(set(footprints) | set(placement.assignments))
        model_position = {name: i for i, name in enumerate(self.model_names)}
        device_position = {name: i for i, name in enumerate(self.device_names)}
        pairs = sorted(placement.pairs())
        self.pair_model = np.array([model_position[m] for m, _ in pairs], dtype=np.int64)
        self.pair_device = np.array([device_position[d] for _, d in pairs], dtype=np.int64)
        self._footprints = footprints
        self._peaks: dict[Resource, np.ndarray] = {}
        self._device_masks: dict[tuple, np.ndarray] = {}
        self._model_masks: dict[tuple, np.ndarray] = {}

    def peaks(self, resource: Resource) -> np.ndarray:
        """Each model's peak; NaN where the source had no reading."""
        if resource not in self._peaks:
            self._peaks[resource] = np.array(
                [self._footprints.get(m, {}).get(resource, np.nan) for m in self.model_names], dtype=float)
        return self._peaks[resource]

    def capacity(self, resource: Resource) -> np.ndarray:
        return np.array([d.capacity.get(resource, np.nan if resource.is_bytes else 1.0) for d in self.devices])

    def baseline(self, resource: Resource) -> np.ndarray:
        # A source that reports no baseline for a resource (e.g. utilisation) means the server
        # alone costs nothing measurable there.
        return np.array([b.get(resource, 0.0) for b in self.baselines])

    def device_mask(self, selector: Selector) -> np.ndarray:
        key = (selector.devices, tuple(sorted(selector.device_labels.items())), selector.servers)
        if key not in self._device_masks:
            names, servers = _glob(selector.devices), _glob(selector.servers)
            self._device_masks[key] = np.array([
                (names is None or bool(names.match(device.name)))
                and all(device.labels.get(k) == v for k, v in selector.device_labels.items())
                and (servers is None or any(servers.match(s) for s in device_servers))
                for device, device_servers in zip(self.devices, self.device_servers)
            ], dtype=bool)
        return self._device_masks[key]

    def model_mask(self, patterns: tuple[str, ...]) -> np.ndarray:
        if patterns not in self._model_masks:
            regex = _glob(patterns)
            self._model_masks[patterns] = np.array(
                [regex is None or bool(regex.match(m)) for m in self.model_names], dtype=bool)
        return self._model_masks[patterns]

    def pairs_in_scope(self, selector: Selector, model_patterns: tuple[str, ...]) -> np.ndarray:
        return self.model_mask(model_patterns)[self.pair_model] & self.device_mask(selector)[self.pair_device]

    def models_by_device(self, pair_mask: np.ndarray, device_mask: np.ndarray) -> dict[int, tuple[str, ...]]:
        """The models of the chosen pairs on the chosen devices, in one pass over the pairs."""
        chosen = pair_mask & device_mask[self.pair_device]
        grouped: dict[int, list[str]] = {}
        for model, device in zip(self.pair_model[chosen].tolist(), self.pair_device[chosen].tolist()):
            grouped.setdefault(device, []).append(self.model_names[model])
        return {device: tuple(models) for device, models in grouped.items()}


def _glob(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One compiled regex for a list of globs; None means 'no filter'."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _capacity(index: _Index, policy: CapacityPolicy) -> list[Result]:
    devices = len(index.device_names)
    in_scope = index.pairs_in_scope(Selector(), policy.selector.models)
    peaks = index.peaks(policy.resource)[index.pair_model[in_scope]]
    missing = np.isnan(peaks)
    placed_on = index.pair_device[in_scope]
    known_sum = np.bincount(placed_on, weights=np.where(missing, 0.0, peaks), minlength=devices)
    any_missing = np.bincount(placed_on, weights=missing, minlength=devices) > 0
    value = index.baseline(policy.resource) + known_sum
    capacity = index.capacity(policy.resource)
    if policy.max_bytes is not None:
        limit = np.full(devices, float(policy.max_bytes))
    else:
        limit = (policy.max_ratio - policy.headroom_ratio) * capacity  # type: ignore[operator]
    over = value > limit  # False where the limit is NaN (capacity unknown)
    unknown = index.device_unknown | np.isnan(limit) | (any_missing & ~over)
    headroom = (limit - value) / capacity
    scope = index.device_mask(policy.selector)
    involved = index.models_by_device(in_scope, scope & over & ~unknown)
    rows = []
    unknown_list, over_list = unknown.tolist(), over.tolist()
    value_list, limit_list, headroom_list = value.tolist(), limit.tolist(), headroom.tolist()
    for i in np.flatnonzero(scope).tolist():
        if unknown_list[i]:
            rows.append(Result(policy.name, index.device_names[i], "", Status.UNKNOWN))
            continue
        status = Status.VIOLATED if over_list[i] else Status.OK
        rows.append(Result(policy.name, index.device_names[i], "", status, value_list[i], limit_list[i],
                           headroom_list[i], involved.get(i, ())))
    return rows


def _model_limit(index: _Index, policy: ModelLimitPolicy) -> list[Result]:
    in_scope = index.pairs_in_scope(policy.selector, policy.selector.models)
    models, devices = index.pair_model[in_scope].tolist(), index.pair_device[in_scope].tolist()
    peaks = index.peaks(policy.resource)[index.pair_model[in_scope]].tolist()
    rows = []
    for model, device, peak in zip(models, devices, peaks):
        if peak != peak:  # NaN: no reading for this model
            status, value = Status.UNKNOWN, None
        else:
            status, value = (Status.VIOLATED if peak > policy.max_value else Status.OK), peak
        rows.append(Result(policy.name, index.device_names[device], index.model_names[model], status, value,
                           policy.max_value))
    return rows


def _fleet(index: _Index, policy: FleetPolicy) -> list[Result]:
    in_scope = index.pairs_in_scope(policy.selector, policy.selector.models)
    used = len(np.unique(index.pair_device[in_scope]))
    if used > policy.max_devices:
        status = Status.VIOLATED
    elif index.device_unknown[index.device_mask(policy.selector)].any():
        status = Status.UNKNOWN  # a down server's devices may host more models than we can see
    else:
        status = Status.OK
    return [Result(policy.name, "", "", status, float(used), float(policy.max_devices))]


def _pin(index: _Index, policy: PinPolicy) -> list[Result]:
    allowed = index.device_mask(policy.to)
    rows = []
    for p in np.flatnonzero(index.pairs_in_scope(policy.selector, policy.selector.models)):
        device = index.pair_device[p]
        if device >= index.known_devices:
            status = Status.UNKNOWN  # the source does not know this device, nor its labels
        else:
            status = Status.OK if allowed[device] else Status.VIOLATED
        rows.append(Result(policy.name, index.device_names[device], index.model_names[index.pair_model[p]], status))
    return rows


def _anti_affinity(index: _Index, policy: AntiAffinityPolicy) -> list[Result]:
    in_scope = index.pairs_in_scope(policy.selector, policy.models)
    counts = np.bincount(index.pair_device[in_scope], minlength=len(index.device_names))
    scope = index.device_mask(policy.selector)
    involved = index.models_by_device(in_scope, scope & (counts > 1))
    rows = []
    for i in np.flatnonzero(scope).tolist():
        over = counts[i] > 1
        status = Status.VIOLATED if over else (Status.UNKNOWN if index.device_unknown[i] else Status.OK)
        rows.append(Result(policy.name, index.device_names[i], "", status, float(counts[i]), 1.0,
                           models=involved.get(i, ())))
    return rows


def _replicas(index: _Index, policy: ReplicasPolicy) -> list[Result]:
    in_scope = index.pairs_in_scope(policy.selector, policy.selector.models)
    counts = np.bincount(index.pair_model[in_scope], minlength=len(index.model_names))
    scope_unknown = bool(index.device_unknown[index.device_mask(policy.selector)].any())
    rows = []
    for m in np.flatnonzero(index.model_mask(policy.selector.models)):
        short = counts[m] < policy.count
        status = (Status.UNKNOWN if scope_unknown else Status.VIOLATED) if short else Status.OK
        rows.append(Result(policy.name, "", index.model_names[m], status, float(counts[m]), float(policy.count)))
    return rows


# Each key's evaluator takes that policy type (hence Any: a dict cannot say so per key).
_EVALUATORS: dict[type[Policy], Callable[[_Index, Any], list[Result]]] = {
    CapacityPolicy: _capacity,
    ModelLimitPolicy: _model_limit,
    FleetPolicy: _fleet,
    PinPolicy: _pin,
    AntiAffinityPolicy: _anti_affinity,
    ReplicasPolicy: _replicas,
}
