"""Policy files as a user writes them: valid ones load, each malformed one gives one precise line."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gpupack.app.cli import main
from gpupack.domain import Resource
from gpupack.errors import InputError
from gpupack.rules.loader import load_policies
from gpupack.rules.policy import Action, CapacityPolicy, PinPolicy, ReplicasPolicy, Severity
from gpupack.rules.schema import policy_schema
from gpupack.yamlfile import load_yaml_file

MALFORMED = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))
EXAMPLES = Path(__file__).parents[2] / "rules" / "examples"


def test_corpus_has_at_least_thirty_malformed_files():
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_policy_file_gives_one_line_naming_file_line_field_and_exit_2(path, capsys):
    expected = path.read_text().splitlines()[0].removeprefix("# error: ").replace("FILE", str(path))
    status = main(["rules", "check", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"gpupack rules: error: {path}:{expected}\n"


def test_minimal_file_from_the_issue_means_80_percent_of_memory_and_rebalance(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("policies:\n  - name: gpu-memory-80\n    resource: gpu_memory\n    max: 80%\n    action: rebalance\n")
    (policy,) = load_policies(path).policies
    assert isinstance(policy, CapacityPolicy)
    assert (policy.resource, policy.max_ratio, policy.action, policy.severity) == (
        Resource.GPU_MEMORY, 0.8, Action.REBALANCE, Severity.WARNING)
    assert (policy.source_path, policy.source_line) == (str(path), 2)


def test_directory_loads_every_yaml_file_in_name_order(tmp_path):
    (tmp_path / "b.yml").write_text("policies:\n  - name: two\n    selector: {models: [x]}\n    replicas: 2\n")
    (tmp_path / "a.yaml").write_text("policies:\n  - name: one\n    selector: {models: [x]}\n    pin: {devices: [GPU-0]}\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    policies = load_policies(tmp_path)
    assert [type(p) for p in policies.policies] == [PinPolicy, ReplicasPolicy]


def test_duplicate_names_across_files_name_both_places(tmp_path):
    (tmp_path / "a.yaml").write_text("policies:\n  - name: same\n    max_devices: 2\n")
    (tmp_path / "b.yaml").write_text("policies:\n  - name: same\n    max_devices: 3\n")
    with pytest.raises(InputError) as error:
        load_policies(tmp_path)
    assert str(error.value) == f"{tmp_path / 'b.yaml'}:2: name: duplicate policy name 'same' (first at {tmp_path / 'a.yaml'}:2)"


def test_empty_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no \\*.yaml or \\*.yml policy files"):
        load_policies(tmp_path)


def test_headroom_lowers_a_percentage_limit(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("policies:\n  - name: u\n    resource: utilization\n    max: 90%\n    headroom: 10%\n")
    (policy,) = load_policies(path).policies
    assert policy.max_ratio - policy.headroom_ratio == pytest.approx(0.8)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_load_and_match_the_shipped_schema(example, capsys):
    jsonschema.validate(json.loads(json.dumps(load_yaml_file(example))), policy_schema())
    assert main(["rules", "check", str(example)]) == 0
    assert capsys.readouterr().out.endswith(" OK\n")
