"""``report.html``: one self-contained file (tables, and plots inlined as PNG data) to send round;
the plots are also written beside it as PNG files.

A header says when the run started, how long it took, on which server and over which repository;
a legend spells out every configuration name. Per model: the ranking with the reason each rejected
config failed, two titled plots (throughput against p99 per config, its axes fitted to the points
with the budget marked; each config's peak memory, the figure Model Analyzer leaves at 0 MB on CPU
servers) and every point with Triton's latency breakdown.
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
from gpupack.profiler.search_report import ModelRanking, RunHeader  # noqa: E402
from gpupack.units import format_bytes  # noqa: E402

MIB = 2**20
# The budget line is drawn when it is at most this far beyond the slowest point; further out it
# would squeeze the points into a corner, so it is named in a note on the chart instead.
BUDGET_IN_VIEW_RATIO = 1.5
_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
          ".best{background:#e6f4e6}.rejected{color:#933}table.header th,table.legend td{text-align:left}"
          ".note{color:#933}")


def write_html_report(directory: Path, searches: Mapping[str, ModelSearch], rankings: Mapping[str, ModelRanking],
                      constraints: Constraints, header: RunHeader) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gpupack profile</title>"
             f"<style>{_STYLE}</style></head><body><h1>gpupack profile: configuration search</h1>",
             _header(header), f"<p>{html.escape(_constraints_text(constraints))}</p>", _legend(searches)]
    for model, search in searches.items():
        parts.append(f"<h2>{html.escape(model)}</h2>")
        parts.append(_ranking_table(rankings[model]))
        if any(c.points for c in search.configs):
            for name, figure in ((f"{model}-throughput_vs_latency.png", _plot_latency(model, search, constraints)),
                                 (f"{model}-peak_memory.png", _plot_memory(model, search))):
                png = _png(figure)
                (directory / name).write_bytes(png)
                parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,"
                             f"{base64.b64encode(png).decode('ascii')}'>")
        parts.append(_points_table(search))
    parts.append("</body></html>")
    path = directory / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _header(header: RunHeader) -> str:
    rows = [("started", header.started_at.strftime("%Y-%m-%d %H:%M:%S %Z")),
            ("duration", _duration(header.duration_seconds)),
            ("server", header.server),
            ("model repository", header.model_repository or "the server's own")]
    cells = "".join(f"<tr><th>{name}</th><td>{html.escape(value)}</td></tr>" for name, value in rows)
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in header.notes)
    return f"<table class='header'>{cells}</table>{notes}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
                                      f"{secs} s" if secs or not (hours or minutes) else "") if part)


def _legend(searches: Mapping[str, ModelSearch]) -> str:
    """Every configuration name in the report, in words: iN instances, bN max batch, dyn-... batching."""
    variants = {c.name: c.variant for search in searches.values() for c in search.configs}
    if not variants:
        return ""
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{html.escape(variant.description)}</td></tr>"
                   for name, variant in sorted(variants.items()))
    return ("<h2>Configuration names</h2><p>iN: N model instances (-cpu, -gpu: their kind); bN: max_batch_size N; "
            "dyn-off: dynamic batching off; dyn-Nus: dynamic batching on, with a maximum queue delay of N µs.</p>"
            f"<table class='legend'><tr><th>name</th><th>meaning</th></tr>{rows}</table>")


def _constraints_text(constraints: Constraints) -> str:
    return "; ".join([f"objective: {constraints.objective}", *known_parts(
        (constraints.latency_p99_seconds, lambda s: f"p99 budget {s * 1000:g} ms"),
        (constraints.min_throughput_per_second, lambda r: f"minimum throughput {r:g}/s"),
        (constraints.max_memory_bytes, lambda b: f"maximum memory {format_bytes(b)}"),
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


def _plot_latency(model: str, search: ModelSearch, constraints: Constraints) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(7, 4))
    p99s = []
    for config in search.configs:
        points = [p for p in config.points if p.latencies is not None]
        if points:
            p99s += [p.latencies.p99_seconds * 1000 for p in points if p.latencies]
            axes.plot([p.latencies.p99_seconds * 1000 for p in points if p.latencies],
                      [p.throughput_per_second for p in points], marker="o", label=config.name)
    right = max(p99s, default=1.0) * 1.1
    budget = constraints.latency_p99_seconds
    if budget is not None and budget * 1000 <= max(p99s, default=0.0) * BUDGET_IN_VIEW_RATIO:
        right = max(right, budget * 1000 * 1.05)
        axes.axvline(budget * 1000, color="red", linestyle="--", label=f"p99 budget ({budget * 1000:g} ms)")
    elif budget is not None:
        axes.annotate(f"p99 budget {budget * 1000:g} ms: off the chart, to the right", xy=(0.99, 0.02),
                      xycoords="axes fraction", ha="right", va="bottom", fontsize="small", color="red")
    axes.set_xlim(0, right)
    axes.set_ylim(bottom=0)
    axes.set_title(f"{model}: throughput against p99 latency, per configuration")
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (infer/s)")
    axes.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


def _plot_memory(model: str, search: ModelSearch) -> plt.Figure:
    configs = [c for c in search.configs if c.points]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.bar(range(len(configs)), [(c.peak_memory_bytes or 0) / MIB for c in configs])
    axes.set_xticks(range(len(configs)), [c.name for c in configs], rotation=45, ha="right", fontsize="x-small")
    axes.set_title(f"{model}: peak memory per configuration")
    axes.set_ylabel("peak memory above the server alone (MiB)")
    figure.tight_layout()
    return figure


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
