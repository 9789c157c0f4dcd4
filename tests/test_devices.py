"""One reading of where a model's instances run, Triton's: the exporter and the scheduler share it."""

from __future__ import annotations

from gpupack.devices import InstanceGroup, cpu_device_name, instance_groups


def test_a_cpu_only_server_is_a_device_named_after_it() -> None:
    assert cpu_device_name("triton-0") == "cpu:triton-0"


def test_a_config_without_instance_groups_is_one_instance_whose_kind_triton_chooses() -> None:
    assert instance_groups({}) == (InstanceGroup("KIND_AUTO", 1),)
    assert instance_groups({"instance_group": []}) == (InstanceGroup("KIND_AUTO", 1),)


def test_groups_are_read_from_http_and_grpc_answers_alike() -> None:
    grpc = {"instance_group": [{"kind": "KIND_GPU", "count": "2", "gpus": ["0", "3"]}, {"count": 1}]}
    assert instance_groups(grpc) == (InstanceGroup("KIND_GPU", 2, (0, 3)), InstanceGroup("KIND_AUTO", 1))


def test_auto_instances_go_on_gpus_only_where_the_server_has_some() -> None:
    auto, gpu, cpu, model = (InstanceGroup(kind, 1) for kind in ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"))
    assert [g.on_gpus(server_has_gpus=True) for g in (auto, gpu, cpu, model)] == [True, True, False, False]
    assert [g.on_gpus(server_has_gpus=False) for g in (auto, gpu, cpu, model)] == [False, True, False, False]
