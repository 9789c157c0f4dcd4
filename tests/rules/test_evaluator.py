"""The evaluator on the article's case study 1: server baseline + the sum of placed models' peaks."""

from __future__ import annotations

import pytest

from gpupack.domain import Placement, Resource
from gpupack.rules.evaluator import Status, evaluate
from gpupack.rules.peaks import snapshot_from_json
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

MB, GIB = 10**6, 2**30
MEMORY_80 = CapacityPolicy("gpu-memory-80", resource=Resource.GPU_MEMORY, max_ratio=0.8)


def by_device(evaluation, policy="gpu-memory-80"):
    return {r.device: r for r in evaluation.results if r.policy == policy}


def test_devices_over_80_percent_of_memory_are_violated_with_value_limit_and_headroom(seed_document):
    results = by_device(evaluate(snapshot_from_json(seed_document, "fixture"), PolicySet((MEMORY_80,))))
    assert {d: r.status for d, r in results.items()} == {
        "GPU-1": Status.OK, "GPU-2": Status.OK, "GPU-3": Status.VIOLATED, "GPU-4": Status.VIOLATED}
    gpu4 = results["GPU-4"]
    assert gpu4.value == pytest.approx(15225 * MB)  # the article's table: GPU memory with server
    assert gpu4.limit == pytest.approx(0.8 * 16 * GIB)
    assert gpu4.headroom_ratio == pytest.approx((0.8 * 16 * GIB - 15225 * MB) / (16 * GIB))
    assert gpu4.models == ("segmentation_ct_pancreas", "segmentation_mri_brain_tumor")
    assert results["GPU-1"].value == pytest.approx(11681 * MB)


def test_absolute_limit_and_device_selector(seed_document):
    policy = CapacityPolicy("twelve", resource=Resource.GPU_MEMORY, max_bytes=12_000 * MB,
                            selector=Selector(devices=("GPU-[12]",)))
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((policy,))), "twelve")
    assert {d: r.status for d, r in results.items()} == {"GPU-1": Status.OK, "GPU-2": Status.VIOLATED}


def test_model_selector_sums_only_those_models_plus_the_baseline(seed_document):
    policy = CapacityPolicy("classifiers", resource=Resource.GPU_MEMORY, max_bytes=5_000 * MB,
                            selector=Selector(models=("classification_*",)))
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((policy,))), "classifiers")
    assert results["GPU-1"].value == pytest.approx(5035 * MB)  # chest alone, with the server
    assert results["GPU-1"].status is Status.VIOLATED
    assert results["GPU-4"].value == pytest.approx(309 * MB)


def test_stale_device_and_down_server_are_unknown_never_ok(seed_document):
    seed_document["devices"][0]["stale"] = True
    seed_document["servers"][1]["up"] = False  # triton-2 serves GPU-2
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((MEMORY_80,))))
    assert results["GPU-1"].status is Status.UNKNOWN and results["GPU-1"].value is None
    assert results["GPU-2"].status is Status.UNKNOWN


def test_missing_peak_is_unknown_unless_the_known_part_is_already_over(seed_document):
    for model in seed_document["models"]:
        if model["model"] in ("classification_chest", "classification_malaria"):  # on GPU-1 and GPU-3
            del model["peaks"]["gpu_memory"]
    memory_70 = CapacityPolicy("gpu-memory-70", resource=Resource.GPU_MEMORY, max_ratio=0.7)
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((memory_70,))), "gpu-memory-70")
    assert results["GPU-1"].status is Status.UNKNOWN  # 11681 - 4726 MB known: under 70%, the rest unknown
    assert results["GPU-3"].status is Status.VIOLATED  # 15143 - 1542 MB known: already over 70%


def test_unloaded_model_leaves_its_device_but_keeps_its_peak_where_it_moved(seed_document):
    # brain tumour unloaded from GPU-4 and now loaded on GPU-1, where it has no peak of its own yet
    brain = next(m for m in seed_document["models"] if m["model"] == "segmentation_mri_brain_tumor")
    brain["loaded"] = False
    seed_document["models"].append({**brain, "device": "GPU-1", "server": "triton-1", "loaded": True,
                                    "peaks": {"gpu_memory": 1 * MB}})
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((MEMORY_80,))))
    assert results["GPU-4"].value == pytest.approx((309 + 6955 - 309) * MB)
    assert results["GPU-4"].status is Status.OK
    assert results["GPU-1"].value == pytest.approx((11681 + 8579 - 309) * MB)
    assert results["GPU-1"].status is Status.VIOLATED


def test_explicit_placement_overrides_the_snapshot(seed_document):
    placement = Placement({"segmentation_ct_liver": ("GPU-1",)})
    results = by_device(evaluate(snapshot_from_json(seed_document, "f"), PolicySet((MEMORY_80,)), placement))
    assert results["GPU-1"].value == pytest.approx(11051 * MB)
    assert results["GPU-3"].value == pytest.approx(309 * MB)


def test_per_model_limit_names_the_model(seed_document):
    policy = ModelLimitPolicy("model-10g", resource=Resource.GPU_MEMORY, max_value=10 * GIB)
    evaluation = evaluate(snapshot_from_json(seed_document, "f"), PolicySet((policy,)))
    assert [(r.model, r.device) for r in evaluation.violations] == [("segmentation_ct_liver", "GPU-2")]
    assert len(evaluation.results) == 9


def test_fleet_pin_anti_affinity_and_replicas(seed_document):
    policies = PolicySet((
        FleetPolicy("three-gpus", max_devices=3),
        PinPolicy("liver-a100", selector=Selector(models=("segmentation_ct_liver",)),
                  to=Selector(device_labels={"class": "A100-80GB"})),
        PinPolicy("chest-gpu1", selector=Selector(models=("classification_chest",)), to=Selector(devices=("GPU-1",))),
        AntiAffinityPolicy("ct-apart", models=("segmentation_ct_*",)),
        ReplicasPolicy("breast-twice", selector=Selector(models=("classification_breast",)), count=2),
    ))
    evaluation = evaluate(snapshot_from_json(seed_document, "f"), policies)
    violated = {(r.policy, r.device, r.model) for r in evaluation.violations}
    assert violated == {
        ("three-gpus", "", ""),
        ("liver-a100", "GPU-2", "segmentation_ct_liver"),
        ("breast-twice", "", "classification_breast"),
    }
    fleet = next(r for r in evaluation.results if r.policy == "three-gpus")
    assert (fleet.value, fleet.limit) == (4, 3)
    assert next(r for r in evaluation.results if r.policy == "chest-gpu1").status is Status.OK


def test_anti_affinity_reports_the_models_sharing_a_device(seed_document):
    evaluation = evaluate(snapshot_from_json(seed_document, "f"),
                          PolicySet((AntiAffinityPolicy("seg-apart", models=("segmentation_*",)),)))
    gpu3 = next(r for r in evaluation.violations if r.device == "GPU-3")
    assert gpu3.models == ("segmentation_ct_spleen", "segmentation_mri_hippocampus")
    assert {r.device for r in evaluation.violations} == {"GPU-1", "GPU-2", "GPU-3", "GPU-4"} - {"GPU-1", "GPU-2"}
