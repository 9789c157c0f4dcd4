"""``--report DIR``: every point as CSV, and the three plots of a sweep (matplotlib, Agg).

- ``throughput_vs_latency.png``: throughput against p99 latency, one line per model and batch;
- ``peak_memory.png``: each model's peak memory above the server alone, at its chosen point;
- ``heatmap.png``: throughput over batch x load (concurrency or request rate), one panel per model.

Points with errors are drawn hollow in red and left out of the heatmap's colour scale: they are
shown, never mixed with the good ones.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from gpupack.profiler.stats import PointResult, PointStatus  # noqa: E402
from gpupack.profiler.sweep import SweepResult  # noqa: E402

MIB = 2**20
_CSV_FIELDS = ("model", "batch_size", "concurrency", "request_rate_per_second", "late_count", "dropped_count",
               "status", "window_seconds", "request_count", "error_count",
               "throughput_per_second", "triton_throughput_per_second", "throughput_difference_ratio",
               "latency_p50_seconds", "latency_p95_seconds", "latency_p99_seconds", "peak_memory_bytes",
               "peak_utilization_ratio", "peak_memory_bandwidth_utilization_ratio", "chosen", "errors")


def write_report(directory: str | Path, result: SweepResult, chosen: Mapping[str, PointResult]) -> list[Path]:
    """Write the CSV and the plots; returns the files written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    points = [p for outcome in result.models for p in outcome.points]
    written = [_points_csv(out / "points.csv", points, chosen)]
    if points:
        written += [_throughput_vs_latency(out / "throughput_vs_latency.png", result),
                    _peak_memory(out / "peak_memory.png", chosen),
                    _heatmap(out / "heatmap.png", result)]
    return written


def _points_csv(path: Path, points: list[PointResult], chosen: Mapping[str, PointResult]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for p in points:
            lat = p.latencies
            writer.writerow({
                "model": p.model, "batch_size": p.batch_size, "concurrency": "" if p.concurrency is None else p.concurrency,
                "request_rate_per_second": _opt(p.request_rate_per_second),
                "late_count": p.late_count, "dropped_count": p.dropped_count, "status": p.status.value,
                "window_seconds": f"{p.window_seconds:.6f}", "request_count": p.request_count,
                "error_count": p.error_count, "throughput_per_second": f"{p.throughput_per_second:.3f}",
                "triton_throughput_per_second": f"{p.triton_throughput_per_second:.3f}",
                "throughput_difference_ratio": _opt(p.throughput_difference_ratio),
                "latency_p50_seconds": _opt(lat.p50_seconds if lat else None),
                "latency_p95_seconds": _opt(lat.p95_seconds if lat else None),
                "latency_p99_seconds": _opt(lat.p99_seconds if lat else None),
                "peak_memory_bytes": "" if p.peak_memory_bytes is None else p.peak_memory_bytes,
                "peak_utilization_ratio": _opt(p.peak_utilization_ratio),
                "peak_memory_bandwidth_utilization_ratio": _opt(p.peak_memory_bandwidth_utilization_ratio),
                "chosen": "yes" if chosen.get(p.model) is p else "",
                "errors": "; ".join(p.errors),
            })
    return path


def _opt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _throughput_vs_latency(path: Path, result: SweepResult) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    for outcome in result.models:
        batches = sorted({p.batch_size for p in outcome.points})
        for batch in batches:
            line = [p for p in outcome.points if p.batch_size == batch and p.latencies]
            good = [p for p in line if p.status is not PointStatus.ERRORS]
            if good:
                ax.plot([p.latencies.p99_seconds * 1000 for p in good], [p.throughput_per_second for p in good],  # type: ignore[union-attr]
                        marker="o", label=f"{outcome.model} (batch {batch})")
            bad = [p for p in line if p.status is PointStatus.ERRORS]
            if bad:
                ax.scatter([p.latencies.p99_seconds * 1000 for p in bad], [p.throughput_per_second for p in bad],  # type: ignore[union-attr]
                           facecolors="none", edgecolors="red", label=f"{outcome.model} (batch {batch}, errors)")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title("Throughput vs p99 latency")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def _peak_memory(path: Path, chosen: Mapping[str, PointResult]) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    models = sorted(chosen)
    ax.bar(models, [(chosen[m].peak_memory_bytes or 0) / MIB for m in models])
    ax.set_ylabel("peak memory above the server alone (MiB)")
    ax.set_title("Peak memory per model (chosen point)")
    ax.tick_params(axis="x", labelrotation=30)
    return _save(fig, path)


def _heatmap(path: Path, result: SweepResult) -> Path:
    outcomes = [o for o in result.models if o.points]
    fig, axes = plt.subplots(1, len(outcomes), figsize=(4.5 * len(outcomes), 4), squeeze=False)
    for ax, outcome in zip(axes[0], outcomes):
        batches = sorted({p.batch_size for p in outcome.points})
        loads = sorted({p.load for p in outcome.points}, key=lambda load: load.sort_key)
        grid = [[float("nan")] * len(loads) for _ in batches]
        for p in outcome.points:
            if p.status is not PointStatus.ERRORS:
                grid[batches.index(p.batch_size)][loads.index(p.load)] = p.throughput_per_second
        image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
        for p in outcome.points:
            text = "ERR" if p.status is PointStatus.ERRORS else f"{p.throughput_per_second:.0f}"
            ax.text(loads.index(p.load), batches.index(p.batch_size), text, ha="center", va="center",
                    color="red" if p.status is PointStatus.ERRORS else "white", fontsize="small")
        ax.set_xticks(range(len(loads)), [load.label for load in loads])
        ax.set_yticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("requests per second" if loads[0].request_rate_per_second else "concurrency")
        ax.set_ylabel("batch size")
        ax.set_title(outcome.model)
        fig.colorbar(image, ax=ax, label="infer/s")
    fig.suptitle("Throughput over the sweep")
    return _save(fig, path)


def _save(fig: "plt.Figure", path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
