"""The renderer's line cache never shows a stale value or a vanished series."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from gpupack.exporter.exposition import TextRenderer, text_format


def _families(values: dict[str, float]) -> list[GaugeMetricFamily]:
    family = GaugeMetricFamily("gpupack_model_memory_bytes", "Memory.", labels=["model"])
    for model, value in values.items():
        family.add_metric([model], value)
    return [family]


def test_a_cached_render_equals_a_fresh_one_after_values_change_and_series_vanish():
    renderer = TextRenderer()
    renderer.render(_families({"a": 1.0, "b": 2.0, 'odd "c"': 3.0}))
    after = {"a": 1.0, 'odd "c"': 4.5e9}  # a unchanged, b gone, c changed
    assert renderer.render(_families(after)) == text_format(_families(after))
    assert b'model="b"' not in renderer.render(_families(after))
