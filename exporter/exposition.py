"""Prometheus text format (0.0.4) for our own collectors, several times faster than
``prometheus_client.generate_latest``.

The library re-validates every label name of every sample (UTF-8 name rules); at 1,000 models
that is most of a scrape's 20 ms. Our label names are fixed identifiers, so only label *values*
need escaping. The output is byte-for-byte what ``generate_latest`` writes (a test holds us to it).
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def text_format(metrics: Iterable[Metric]) -> bytes:
    lines: list[str] = []
    for metric in metrics:
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
        for sample in metric.samples:
            if sample.labels:
                labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}\n")
            else:
                lines.append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(lines).encode()
