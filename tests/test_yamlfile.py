"""YAML files read fast and still named to the line: a 1,000-model profile or a week of demand is
built from libyaml's nodes in one pass (no call into PyYAML's constructor for a plain mapping, list,
string or number), reads as PyYAML reads it, and a bad value deep inside is reported with its line."""

import pytest
import yaml

from gpupack import yamlfile
from gpupack.demand_series import load_demand_series
from gpupack.errors import InputError
from gpupack.profiles import load_profile
from gpupack.yamlfile import load_yaml_text

MODELS = 1000


@pytest.fixture
def constructor_calls(monkeypatch):
    """How often PyYAML's own constructor was asked for a node: never, for plain documents."""
    calls = []
    construct = yamlfile._Loader.construct_object

    def counted(self, node, deep=False):
        calls.append(node)
        return construct(self, node, deep)

    monkeypatch.setattr(yamlfile._Loader, "construct_object", counted)
    return calls


def big_profile(bad_model: int) -> tuple[str, int]:
    """A profile of MODELS models with two measured points each; the bad model's second point says
    80 for a ratio. Returns the text and the bad value's line."""
    lines = ["server_baseline:", "  peak_gpu_memory_bytes: 309000000", "models:"]
    bad_line = 0
    for k in range(MODELS):
        lines += [f"- model: model-{k}", "  peak_gpu_memory_bytes: 1028538086", "  peak_gpu_utilization_ratio: 0.3",
                  "  configs:", "  - name: i1-b4", "    instance_count: 1", "    peak_gpu_memory_bytes: 1028538086",
                  "    points:", "    - throughput_per_second: 7.3", "      peak_gpu_utilization_ratio: 0.05",
                  "    - throughput_per_second: 10.25"]
        lines.append(f"      peak_gpu_utilization_ratio: {80 if k == bad_model else 0.0705}")
        bad_line = len(lines) if k == bad_model else bad_line
    return "\n".join(lines) + "\n", bad_line


def test_a_bad_value_deep_in_a_big_profile_is_named_with_its_line(tmp_path, constructor_calls):
    text, line = big_profile(bad_model=900)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as raised:
        load_profile(path)
    assert str(raised.value) == (f"{path}:{line}: models[900].configs[0].points[1].peak_gpu_utilization_ratio: "
                                 "ratio 80 is above 1 (write 80% or 0.8)")
    assert constructor_calls == [], "every node built in one pass, none through PyYAML's constructor"
    path.write_text(text.replace("peak_gpu_utilization_ratio: 80\n", "peak_gpu_utilization_ratio: 0.08\n"))
    assert len(load_profile(path).models) == MODELS


def test_a_bad_rate_deep_in_a_week_of_demand_is_named_with_its_line(tmp_path, constructor_calls):
    lines, bad_line = ["step: 1h", "series:"], 0
    for k in range(MODELS):
        lines.append(f"  m{k}:")
        for step in range(168):
            lines.append(f"  - {'fast' if (k, step) == (700, 150) else 40.5 + step}")
            bad_line = len(lines) if (k, step) == (700, 150) else bad_line
    path = tmp_path / "series.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as raised:
        load_demand_series(path)
    assert str(raised.value).startswith(f"{path}:{bad_line}: series.m700[150]: 'fast' is not a rate")
    assert constructor_calls == []


def test_a_document_reads_as_pyyaml_reads_it():
    text = """
plain: [1, -2, +3, 0, 012, 0x1F, 1_000, 1:30, 1.5, -.5, 1.5e+3, 1e5, 1_0.5, .inf, -.Inf, .nan]
words: [yes, No, on, off, true, ~, null, '', "1.5", '12', 2026-12-07, 2026-12-07T00:00:00Z, 80%, 16GiB]
base: &base {a: 1, b: [x, y]}
merged: {<<: *base, c: z}
again: *base
tagged: !!str 1.5
set: !!set {a, b}
pairs: !!omap [{a: 1}, {b: 2}]
"""
    mine, theirs = load_yaml_text(text), yaml.safe_load(text)
    nan = mine["plain"].pop()
    assert nan != nan and theirs["plain"].pop() != theirs["plain"][-1] + 1
    assert mine == theirs
    assert [type(v) for v in mine["plain"]] == [type(v) for v in theirs["plain"]]
    assert mine.line_of("again") == 6 and mine["base"].line_of("b") == 4


def test_a_duplicate_key_and_a_recursive_alias_are_named_with_their_line():
    with pytest.raises(InputError, match=r"^x.yaml:3: a: duplicate key 'a'$"):
        load_yaml_text("a: 1\nb: 2\na: 3\n", "x.yaml")
    with pytest.raises(InputError, match=r"^x.yaml:1: invalid YAML"):
        load_yaml_text("&a [*a]\n", "x.yaml")
