"""The exposition: the line cache never shows a stale value or a vanished series, and the operator's
choice of families and models is what a scrape carries."""

from __future__ import annotations

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gpupack.exporter.usage import ModelUsage
from gpupack.exporter.collector import SnapshotCollector
from gpupack.exporter.exposition import ExpositionRenderer, render_once
from gpupack.exporter.families import FAMILIES, parse_family_selection
from gpupack.servers import ModelFilter
from gpupack.exporter.snapshot import ServerState, Snapshot


def _families(values: dict[str, float]) -> list:
    family = GaugeMetricFamily("gpupack_model_memory_bytes", 'Memory "now".', labels=["model"])
    for model, value in values.items():
        family.add_metric([model], value)
    errors = CounterMetricFamily("gpupack_collect_errors", "Errors.", labels=["source"])
    errors.add_metric(["nvml"], 2)
    return [family, errors]


def test_a_cached_render_equals_a_fresh_one_after_values_change_and_series_vanish():
    renderer = ExpositionRenderer()
    renderer.render(_families({"a": 1.0, "b": 2.0, 'odd "c"': 3.0}))
    after = {"a": 1.0, 'odd "c"': 4.5e9}  # a unchanged, b gone, c changed
    assert renderer.render(_families(after)) == render_once(_families(after))
    assert b'model="b"' not in renderer.render(_families(after)).openmetrics


def test_openmetrics_names_counters_without_total_and_ends_in_eof():
    rendered = render_once(_families({"a": 1.0}))
    assert rendered.openmetrics.endswith(b"# EOF\n") and not rendered.text.endswith(b"# EOF\n")
    assert b"# TYPE gpupack_collect_errors counter\n" in rendered.openmetrics
    assert b"# TYPE gpupack_collect_errors_total counter\n" in rendered.text
    assert b'# HELP gpupack_model_memory_bytes Memory \\"now\\".\n' in rendered.openmetrics


def _snapshot() -> Snapshot:
    models = tuple(ModelUsage(server, model, "1", "GPU-a", memory_bytes=2**30, memory_source="process",
                              utilization_ratio=0.5, utilization_source="process")
                   for server, model in (("a", "resnet50"), ("a", "resnet50_canary"), ("a", "bert"), ("b", "bert")))
    peaks = {(m.server, m.model, m.version, m.device, "gpu_memory"): 2.0**31 for m in models}
    return Snapshot(1.0, 60.0, servers=(ServerState("a", "http://a", True, False),), models=models, peaks=peaks,
                    collect_duration_seconds=0.01, last_collect_timestamp_seconds=1.7e9)


def _scrape(collector: SnapshotCollector) -> str:
    return render_once(collector.families(_snapshot())).text.decode()


def test_every_family_in_the_catalogue_is_exported_by_default_and_nothing_else():
    text = _scrape(SnapshotCollector(_snapshot))
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert typed == set(FAMILIES)


def test_a_family_left_out_of_metrics_is_absent_from_the_scrape():
    chosen = parse_family_selection("gpupack_model_memory_*,gpupack_server_up")
    text = _scrape(SnapshotCollector(_snapshot, chosen))
    assert "gpupack_model_memory_bytes{" in text and "gpupack_model_memory_peak_bytes{" in text
    assert "gpupack_server_up{" in text
    assert "gpupack_model_utilization" not in text and "gpupack_collect_" not in text


def test_a_metrics_name_matching_no_family_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'gpupack_model_mem' matches no series family"):
        parse_family_selection(["gpupack_model_memory_bytes", "gpupack_model_mem"])


def test_a_servers_model_allow_and_deny_lists_drop_the_models_series_only_on_that_server():
    filters = {"a": ModelFilter(allow=("resnet*", "bert"), deny=("*_canary",))}
    text = _scrape(SnapshotCollector(_snapshot, model_filters=filters))
    models = {(line.split('server="')[1].split('"')[0], line.split('model="')[1].split('"')[0])
              for line in text.splitlines() if line.startswith("gpupack_model_")}
    assert models == {("a", "resnet50"), ("a", "bert"), ("b", "bert")}
    assert not ModelFilter(allow=("resnet*",)).exports("bert") and ModelFilter().exports("anything")


def test_a_new_peak_reaches_the_page_though_unchanged_peaks_are_not_rebuilt():
    from dataclasses import replace

    first = _snapshot()
    collector, renderer = SnapshotCollector(lambda: first), ExpositionRenderer()
    renderer.render(collector.families(first))
    same_peaks = replace(first, generated_at_seconds=2.0)
    assert render_once(collector.families(same_peaks)) == renderer.render(collector.families(same_peaks))
    higher = dict(first.peaks)
    higher[("a", "bert", "1", "GPU-a", "gpu_memory")] = 5e9
    text = renderer.render(collector.families(replace(first, peaks=higher))).text.decode()
    assert 'gpupack_model_memory_peak_bytes{device="GPU-a",model="bert",server="a",version="1"} 5e+09' in text
