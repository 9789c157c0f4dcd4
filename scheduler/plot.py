"""A picture of a placement: per resource, one stacked bar per device (server, then each model),
with each device's limit drawn across its bar, so an overfull device is seen at a glance.
Memory is drawn in GiB and ratios in percent, as the plan's table shows them."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from gpupack.domain import Resource  # noqa: E402
from gpupack.scheduler.plan_report import RESOURCE_TITLES  # noqa: E402
from gpupack.scheduler.packing.problem import PlacementProblem, PlacementResult  # noqa: E402
from gpupack.units import counted  # noqa: E402

GIB = 2**30


def plot_placement(problem: PlacementProblem, result: PlacementResult, path: str | Path) -> None:
    """Draw the placement to ``path`` (PNG) and say on stderr where it went."""
    devices = list(result.device_totals)
    resources = [r for r in Resource if any(r in t for t in result.device_totals.values())]
    by_name = {m.model: m for m in problem.models}
    by_device = {d.name: d for d in problem.devices}
    figure, axes = plt.subplots(len(resources), 1, figsize=(max(6.0, 1.2 * len(devices) + 2), 3.2 * len(resources)),
                                squeeze=False)
    colours = plt.get_cmap("tab20")
    model_colour = {m: colours(k % 20) for k, m in enumerate(sorted(by_name))}
    for ax, resource in zip(axes[:, 0], resources):
        scale = GIB if resource.is_bytes else 0.01
        for x, device in enumerate(devices):
            bottom = problem.server_baseline.get(resource, 0.0) / scale
            ax.bar(x, bottom, color="lightgray", edgecolor="white", label="server" if x == 0 else None)
            for model in result.placement.models_on(device):
                height = by_name[model].peak(resource) / scale
                ax.bar(x, height, bottom=bottom, color=model_colour[model], edgecolor="white")
                if height > 0:
                    ax.text(x, bottom + height / 2, model, ha="center", va="center", fontsize=6)
                bottom += height
            limit = problem.limit(by_device[device], resource)
            if math.isfinite(limit):
                ax.hlines(limit / scale, x - 0.45, x + 0.45, colors="red", linestyles="--")
        ax.set_ylabel(f"{RESOURCE_TITLES[resource]} ({'GiB' if resource.is_bytes else '%'})")
        ax.set_xticks(range(len(devices)), devices, rotation=30, ha="right", fontsize=8)
    axes[0, 0].set_title(f"{counted(result.device_count, 'device')}; dashed red: limit")
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    print(f"wrote plot to {path}", file=sys.stderr)


def plot_schedule(device_counts: Sequence[int], lower_bounds: Sequence[int], static_devices: int,
                  sum_of_peaks_devices: int, step_hours: float, path: str | Path) -> None:
    """Draw a schedule's fleet size per step beside the static plans and the bound, to ``path`` (PNG)."""
    hours = [t * step_hours for t in range(len(device_counts) + 1)]
    figure, ax = plt.subplots(figsize=(10, 4))
    ax.stairs(device_counts, hours, label="schedule", color="tab:blue", linewidth=2)
    ax.stairs(lower_bounds, hours, label="lower bound per step", color="gray", linestyle=":")
    ax.hlines(static_devices, 0, hours[-1], colors="tab:green", linestyles="--", label="static, by the peak of the sum")
    ax.hlines(sum_of_peaks_devices, 0, hours[-1], colors="tab:red", linestyles="--", label="static, by the sum of the peaks")
    ax.set_xlabel("hours")
    ax.set_ylabel("devices")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    print(f"wrote plot to {path}", file=sys.stderr)
