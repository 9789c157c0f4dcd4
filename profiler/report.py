"""What the user reads: the progress line on stderr and the Table 2-style summary.

Numbers are turned into MiB, ms and % here and nowhere else.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping, TextIO

from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import PointResult, PointStatus
from gpupack.profiler.sweep import Progress, SweepResult
from gpupack.units import counted, format_bytes, format_mib, format_percent

_HEADER = ("model", "batch", "load", "throughput (infer/s)", "Triton (infer/s)", "diff",
           "p50 (ms)", "p95 (ms)", "p99 (ms)", "peak memory (MiB)", "peak util", "peak mem bw", "status")
_STATUS_TEXT = {PointStatus.OK: "ok", PointStatus.ERRORS: "ERRORS", PointStatus.OVER_LATENCY_BOUND: "over bound"}


class ProgressLine:
    """Points done, current model, elapsed and remaining time; redrawn in place on a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""

    def __call__(self, progress: Progress) -> None:
        remaining = _clock(progress.remaining_seconds) if progress.remaining_seconds is not None else "?"
        what = progress.model or "server alone (baseline)"
        text = (f"[{progress.points_done}/{progress.points_total}] {what}  "
                f"elapsed {_clock(progress.elapsed_seconds)}  remaining ~{remaining}")
        if self._tty:
            self._stream.write("\r\033[K" + text)
        elif _without_times(text) != _without_times(self._last):
            self._stream.write(text + "\n")
        self._last = text
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()


def _without_times(text: str) -> str:
    return text.split("  elapsed", 1)[0]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def format_summary(result: SweepResult, chosen: Mapping[str, PointResult]) -> str:
    lines = []
    if result.baseline is not None:
        lines.append(f"Server alone: {_baseline(result.baseline)}")
        lines.append("")
    rows: list[tuple[str, ...]] = [_HEADER]
    for outcome in result.models:
        for point in outcome.points:
            mark = " *" if chosen.get(outcome.model) is point else ""
            rows.append(_row(point, mark))
    if len(rows) > 1:
        lines += _align(rows)
        lines.append("* the point chosen for the profile (highest throughput within the limits); "
                     "peak memory excludes the server alone; diff is Triton's count against ours")
    for outcome in result.models:
        if outcome.failure:
            lines.append(f"{outcome.model}: skipped: {outcome.failure}")
        elif outcome.stopped:
            lines.append(f"{outcome.model}: sweep stopped early: {outcome.stopped}")
        if not outcome.failure and outcome.model not in chosen:
            lines.append(f"{outcome.model}: no point qualifies for the profile")
        for point in outcome.points:
            if point.status is PointStatus.ERRORS:
                lines.append(f"{outcome.model} batch {point.batch_size} {point.load}: "
                             f"{counted(point.error_count, 'failed request')} (numbers not used): {'; '.join(point.errors)}")
    return "\n".join(lines)


def known_parts(*parts: tuple[float | None, Callable[[float], str]]) -> list[str]:
    """Each ``(value, text)`` pair's text of its value, for the values that are known (not None)."""
    return [text(value) for value, text in parts if value is not None]


def _baseline(peaks: Peaks) -> str:
    return ", ".join(known_parts(
        (peaks.memory_bytes, lambda b: f"max memory {format_bytes(b)}"),
        (peaks.utilization_ratio, lambda r: f"max utilisation {format_percent(r)}"),
        (peaks.memory_bandwidth_utilization_ratio, lambda r: f"max memory bandwidth {format_percent(r)}"),
    )) or "no reading"


def _row(point: PointResult, mark: str) -> tuple[str, ...]:
    lat = point.latencies
    diff = point.throughput_difference_ratio
    return (
        point.model + mark,
        str(point.batch_size),
        point.load.label,
        f"{point.throughput_per_second:.1f}",
        f"{point.triton_throughput_per_second:.1f}",
        f"{diff * 100:+.2f}%" if diff is not None else "-",
        f"{lat.p50_seconds * 1000:.2f}" if lat else "-",
        f"{lat.p95_seconds * 1000:.2f}" if lat else "-",
        f"{lat.p99_seconds * 1000:.2f}" if lat else "-",
        format_mib(point.peak_memory_bytes) if point.peak_memory_bytes is not None else "-",
        _percent(point.peak_utilization_ratio),
        _percent(point.peak_memory_bandwidth_utilization_ratio),
        _STATUS_TEXT[point.status],
    )


def _percent(ratio: float | None) -> str:
    return format_percent(ratio) if ratio is not None else "-"


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i == 0 or i == len(row) - 1 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
