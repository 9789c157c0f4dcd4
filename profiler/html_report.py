"""``report.html``: one self-contained file (tables, and plots inlined as PNG data) to send round;
the plots are also written beside it as PNG files.

Per model: the ranking with the reason each rejected config failed, two plots (throughput
against p99 per config; each config's peak memory beside its best throughput, the figure Model
Analyzer leaves at 0 MB on CPU servers) and every point with Triton's latency breakdown.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from gpupack.profiler.rank import Constraints  # noqa: E402
from gpupack.profiler.report import known_parts  # noqa: E402
from gpupack.profiler.search import ModelSearch  # noqa: E402
from gpupack.profiler.search_report import ModelRanking  # noqa: E402
from gpupack.units import format_mib  # noqa: E402

MIB = 2**20
_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
          ".best{background:#e6f4e6}.rejected{color:#933}")


def write_html_report(directory: Path, searches: Mapping[str, ModelSearch], rankings: Mapping[str, ModelRanking],
                      constraints: Constraints) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gpupack profile</title>"
             f"<style>{_STYLE}</style></head><body><h1>gpupack profile: configuration search</h1>",
             f"<p>{html.escape(_constraints_text(constraints))}</p>"]
    for model, search in searches.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        parts.append(_ranking_table(rankings[model]))
        if any(c.points for c in search.configs):
            for name, figure in ((f"{model}-throughput_vs_latency.png", _plot_latency(search, constraints)),
                                 (f"{model}-peak_memory.png", _plot_memory(search))):
                png = _png(figure)
                (directory / name).write_bytes(png)
                parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,"
                             f"{base64.b64encode(png).decode('ascii')}'>")
        parts.append(_points_table(search))
    parts.append("</body></html>")
    path = directory / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _constraints_text(constraints: Constraints) -> str:
    return "; ".join([f"objective: {constraints.objective}", *known_parts(
        (constraints.latency_p99_seconds, lambda s: f"p99 budget {s * 1000:g} ms"),
        (constraints.min_throughput_per_second, lambda r: f"minimum throughput {r:g}/s"),
        (constraints.max_memory_bytes, lambda b: f"maximum memory {format_mib(b)} MiB"),
    )])


def _ranking_table(ranking: ModelRanking) -> str:
    rows = ["<table><tr><th>config</th><th>rank</th><th>throughput (infer/s)</th><th>load</th>"
            "<th>p99 (ms)</th><th>peak memory (MiB)</th><th>score</th></tr>"]
    for n, ranked in enumerate(ranking.ranked, start=1):
        p99 = ranked.point.latencies.p99_seconds * 1000 if ranked.point.latencies else 0.0
        rows.append(f"<tr class='{'best' if n == 1 else ''}'><td>{html.escape(ranked.config.name)}</td><td>{n}</td>"
                    f"<td>{ranked.point.throughput_per_second:.1f}</td><td>{ranked.point.load}</td>"
                    f"<td>{p99:.2f}</td><td>{(ranked.config.peak_memory_bytes or 0) / MIB:.1f}</td>"
                    f"<td>{ranked.score:.1f}</td></tr>")
    for config, reason in ranking.rejected:
        rows.append(f"<tr class='rejected'><td>{html.escape(config.name)}</td>"
                    f"<td colspan='6'>rejected: {html.escape(reason)}</td></tr>")
    return "".join(rows) + "</table>"


def _points_table(search: ModelSearch) -> str:
    rows = ["<table><tr><th>config</th><th>load</th><th>status</th><th>throughput (infer/s)</th>"
            "<th>p50 (ms)</th><th>p99 (ms)</th><th>queue (ms)</th><th>compute input (ms)</th>"
            "<th>inference (ms)</th><th>compute output (ms)</th><th>peak memory (MiB)</th><th>peak util</th></tr>"]
    for config in search.configs:
        for p in config.points:
            lat, server = p.latencies, p.server_latency
            stages = ([server.queue_seconds, server.compute_input_seconds, server.compute_infer_seconds,
                       server.compute_output_seconds] if server else [])
            cells = [html.escape(config.name), str(p.load), p.status.value, f"{p.throughput_per_second:.1f}",
                     f"{lat.p50_seconds * 1000:.2f}" if lat else "-", f"{lat.p99_seconds * 1000:.2f}" if lat else "-",
                     *([f"{s * 1000:.3f}" for s in stages] or ["-"] * 4),
                     f"{p.peak_memory_bytes / MIB:.1f}" if p.peak_memory_bytes is not None else "-",
                     f"{p.peak_utilization_ratio * 100:.0f}%" if p.peak_utilization_ratio is not None else "-"]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows) + "</table>"


def _plot_latency(search: ModelSearch, constraints: Constraints) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(7, 4))
    for config in search.configs:
        points = [p for p in config.points if p.latencies is not None]
        if points:
            axes.plot([p.latencies.p99_seconds * 1000 for p in points if p.latencies],
                      [p.throughput_per_second for p in points], marker="o", label=config.name)
    if constraints.latency_p99_seconds is not None:
        axes.axvline(constraints.latency_p99_seconds * 1000, color="red", linestyle="--", label="p99 budget")
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (infer/s)")
    axes.legend(fontsize="x-small")
    return figure


def _plot_memory(search: ModelSearch) -> plt.Figure:
    configs = [c for c in search.configs if c.points]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.bar(range(len(configs)), [(c.peak_memory_bytes or 0) / MIB for c in configs])
    axes.set_xticks(range(len(configs)), [c.name for c in configs], rotation=45, ha="right", fontsize="x-small")
    axes.set_ylabel("peak memory above the server (MiB)")
    figure.tight_layout()
    return figure


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
