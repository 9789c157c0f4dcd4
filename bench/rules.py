"""Benchmark: the rules evaluator over 10,000 models x 2,000 devices x 20 policies (target < 1 s).

A naive baseline (plain Python loops and fnmatch per model, as one would first write it) runs in
the same process over the same capacity policies, and its values are checked against ours.

    /tmp/venv/bin/python bench/rules.py
"""

from __future__ import annotations

import fnmatch

import random
import time

from gpupack.domain import Device, Resource
from gpupack.rules.evaluator import evaluate
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot
from gpupack.rules.policy import (
    AntiAffinityPolicy,
    CapacityPolicy,
    FleetPolicy,
    ModelLimitPolicy,
    PinPolicy,
    PolicySet,
    ReplicasPolicy,
    Selector,
)

MODELS, DEVICES, TARGET_SECONDS = 10_000, 2_000, 1.0
NAIVE_DEVICES = 20
GIB = 2**30
FAMILIES = ("classification", "segmentation", "detection", "llm", "embedding")
CLASSES = ("A100-80GB", "H100-80GB", "L4-24GB", "T4-16GB")


def synthetic_fleet(seed: int = 7) -> PeaksSnapshot:
    rng = random.Random(seed)
    devices = tuple(
        DevicePeaks(
            Device(f"GPU-{d:05d}", {Resource.GPU_MEMORY: 80 * GIB}, labels={"class": CLASSES[d % len(CLASSES)]}),
            servers=(f"triton-{d // 2}",),
            server_baseline={Resource.GPU_MEMORY: 300e6, Resource.GPU_UTILIZATION: 0.05},
        )
        for d in range(DEVICES)
    )
    models = tuple(
        ModelPeaks(
            model=f"{FAMILIES[m % len(FAMILIES)]}_{m:05d}",
            device=f"GPU-{rng.randrange(DEVICES):05d}",
            peaks={Resource.GPU_MEMORY: rng.uniform(0.5, 20) * GIB, Resource.GPU_UTILIZATION: rng.uniform(0.01, 0.3),
                   Resource.MEMORY_BANDWIDTH_UTILIZATION: rng.uniform(0.0, 0.3)},
            server="triton-0",
        )
        for m in range(MODELS)
    )
    return PeaksSnapshot(devices, models, window_seconds=604800)


def twenty_policies() -> PolicySet:
    capacity = [
        CapacityPolicy(f"{resource.value}-{int(ratio * 100)}", resource=resource, max_ratio=ratio,
                       selector=Selector(device_labels={"class": cls} if cls else {}, models=models))
        for resource in Resource
        for ratio, cls, models in ((0.8, None, ()), (0.9, "A100-80GB", ()), (0.7, None, ("segmentation_*",)),
                                   (0.95, "L4-24GB", ("llm_*", "embedding_*")))
    ]
    others = [
        ModelLimitPolicy("model-memory-16g", resource=Resource.GPU_MEMORY, max_value=16 * GIB),
        ModelLimitPolicy("model-util-25", resource=Resource.GPU_UTILIZATION, max_value=0.25),
        FleetPolicy("fleet-1900", max_devices=1900),
        PinPolicy("llm-on-80gb", selector=Selector(models=("llm_*",)), to=Selector(devices=("GPU-*",))),
        PinPolicy("detection-on-l4", selector=Selector(models=("detection_0*",)),
                  to=Selector(device_labels={"class": "L4-24GB"})),
        AntiAffinityPolicy("llm-apart", models=("llm_0001*",)),
        ReplicasPolicy("embedding-2", selector=Selector(models=("embedding_000*",)), count=2),
        CapacityPolicy("memory-64g", resource=Resource.GPU_MEMORY, max_bytes=64 * GIB),
    ]
    return PolicySet(tuple(capacity + others))


def naive_capacity(snapshot: PeaksSnapshot, policies: list[CapacityPolicy],
                   devices: int) -> dict[tuple[str, str], float]:
    """What the domain API invites one to write first: per policy and device, ask the placement
    which models are there (a scan of every model) and fnmatch each one. Run on the first
    ``devices`` devices only: on all 2,000 it takes minutes."""
    placement = snapshot.placement()
    peaks = {entry.model: entry.peaks for entry in snapshot.models}
    values = {}
    for policy in policies:
        for device in snapshot.devices[:devices]:
            if any(device.device.labels.get(k) != v for k, v in policy.selector.device_labels.items()):
                continue
            total = device.server_baseline.get(policy.resource, 0.0)
            for model in placement.models_on(device.device.name):
                if not policy.selector.models or any(fnmatch.fnmatchcase(model, p) for p in policy.selector.models):
                    total += peaks[model][policy.resource]
            values[(policy.name, device.device.name)] = total
    return values


def best_of(runs: int, work) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def main() -> None:
    snapshot, policies = synthetic_fleet(), twenty_policies()
    capacity = [p for p in policies.policies if isinstance(p, CapacityPolicy) and p.max_ratio is not None]
    ours_seconds, evaluation = best_of(5, lambda: evaluate(snapshot, policies))
    naive_seconds, naive = best_of(1, lambda: naive_capacity(snapshot, capacity, NAIVE_DEVICES))
    naive_scaled_seconds = naive_seconds * DEVICES / NAIVE_DEVICES
    capacity_only = PolicySet(tuple(capacity))
    ours_capacity_seconds, capacity_eval = best_of(5, lambda: evaluate(snapshot, capacity_only))
    mismatches = [r for r in capacity_eval.results if (r.policy, r.device) in naive
                  and abs(naive[(r.policy, r.device)] - r.value) > 1e-6 * max(1.0, r.value)]
    assert not mismatches, f"evaluator disagrees with the naive sums: {mismatches[:3]}"
    violated = len(evaluation.violations)
    print(f"rules evaluator: {MODELS} models x {DEVICES} devices x {len(policies.policies)} policies "
          f"-> {len(evaluation.results)} results, {violated} violated")
    verdict = "OK" if ours_seconds < TARGET_SECONDS else "OVER TARGET"
    print(f"  evaluate(), all {len(policies.policies)} policies: {ours_seconds:.3f} s   "
          f"(target < {TARGET_SECONDS:.1f} s: {verdict})")
    print(f"  capacity policies only ({len(capacity)}):   ours {ours_capacity_seconds:.3f} s, naive "
          f"{naive_scaled_seconds:.1f} s ({naive_scaled_seconds / ours_capacity_seconds:.0f}x slower; measured "
          f"{naive_seconds:.2f} s on {NAIVE_DEVICES} devices, scaled to {DEVICES}; values equal)")
    print("  (ours: best of 5 runs)")


if __name__ == "__main__":
    main()
