"""What the user reads after a configuration search: per model the top configs meeting the
constraints and why each other one failed, and every point as CSV with Triton's own latency
breakdown (queue, compute input, inference, output). Units become ms, MiB and % here only."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Mapping

from gpupack.profiler.rank import MeasuredConfig, Ranked
from gpupack.profiler.search import ModelSearch
from gpupack.units import counted, format_bytes


@dataclass(frozen=True)
class RunHeader:
    """What a report's reader needs to place it: when, on which server, over which repository, how long."""

    started_at: datetime
    duration_seconds: float
    server: str
    model_repository: str | None  # None: a server given to us, whose repository the API does not tell
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRanking:
    ranked: list[Ranked]
    rejected: list[tuple[MeasuredConfig, str]]


def format_search_summary(searches: Mapping[str, ModelSearch], rankings: Mapping[str, ModelRanking], top: int,
                          objective: str) -> str:
    lines: list[str] = []
    for model, search in searches.items():
        ranking = rankings[model]
        lines.append(f"{model}: {counted(len(search.configs), 'configuration')} measured")
        for n, ranked in enumerate(ranking.ranked[:top], start=1):
            point, config = ranked.point, ranked.config
            score = f"  ({ranked.score:.1f}/s per GiB)" if objective == "throughput-per-gib" else ""
            lines.append(f"  {n}. {config.name}: {point.throughput_per_second:.1f} infer/s at "
                         f"{point.load}, p99 {_ms(point)} ms, peak memory "
                         f"{format_bytes(config.peak_memory_bytes or 0)}{score}" + ("  <- recommended" if n == 1 else ""))
        if not ranking.ranked:
            lines.append("  no configuration meets the constraints: no recommendation")
        for config, reason in ranking.rejected:
            lines.append(f"  rejected {config.name}: {reason}")
    return "\n".join(lines)


def _ms(point: object) -> str:
    latencies = getattr(point, "latencies", None)
    return f"{latencies.p99_seconds * 1000:.2f}" if latencies else "-"


CSV_FIELDS = ("model", "config", "instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_seconds",
              "concurrency", "request_rate_per_second", "late_count", "dropped_count", "status",
              "throughput_per_second", "triton_throughput_per_second",
              "latency_p50_seconds", "latency_p99_seconds", "server_queue_seconds", "server_compute_input_seconds",
              "server_compute_infer_seconds", "server_compute_output_seconds", "peak_memory_bytes",
              "peak_utilization_ratio", "peak_memory_bandwidth_utilization_ratio", "recommended")


def write_configs_csv(path: Path, searches: Mapping[str, ModelSearch], rankings: Mapping[str, ModelRanking]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for model, search in searches.items():
            best = rankings[model].ranked[0] if rankings[model].ranked else None
            for config in search.configs:
                variant = config.variant
                for p in config.points:
                    server = p.server_latency
                    writer.writerow({
                        "model": model, "config": config.name, "instance_count": variant.instance_count,
                        "max_batch_size": variant.max_batch_size, "dynamic_batching": variant.batching.enabled,
                        "max_queue_delay_seconds": variant.batching.max_queue_delay_seconds if variant.batching.enabled else "",
                        "concurrency": "" if p.concurrency is None else p.concurrency,
                        "request_rate_per_second": _opt(p.request_rate_per_second),
                        "late_count": p.late_count, "dropped_count": p.dropped_count,
                        "status": p.status.value,
                        "throughput_per_second": f"{p.throughput_per_second:.3f}",
                        "triton_throughput_per_second": f"{p.triton_throughput_per_second:.3f}",
                        "latency_p50_seconds": _opt(p.latencies.p50_seconds if p.latencies else None),
                        "latency_p99_seconds": _opt(p.latencies.p99_seconds if p.latencies else None),
                        "server_queue_seconds": _opt(server.queue_seconds if server else None),
                        "server_compute_input_seconds": _opt(server.compute_input_seconds if server else None),
                        "server_compute_infer_seconds": _opt(server.compute_infer_seconds if server else None),
                        "server_compute_output_seconds": _opt(server.compute_output_seconds if server else None),
                        "peak_memory_bytes": "" if p.peak_memory_bytes is None else p.peak_memory_bytes,
                        "peak_utilization_ratio": _opt(p.peak_utilization_ratio),
                        "peak_memory_bandwidth_utilization_ratio": _opt(p.peak_memory_bandwidth_utilization_ratio),
                        "recommended": bool(best and best.config is config and best.point is p),
                    })
    return path


def _opt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"
