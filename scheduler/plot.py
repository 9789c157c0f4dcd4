"""A picture of a placement: per resource, one stacked bar per device (server, then each model),
with each device's limit drawn across its bar, so an overfull device is seen at a glance."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from gpupack.domain import Resource  # noqa: E402
from gpupack.scheduler.plan_report import RESOURCE_TITLES  # noqa: E402
from gpupack.scheduler.packing.problem import PlacementProblem, PlacementResult  # noqa: E402


def plot_placement(problem: PlacementProblem, result: PlacementResult, path: str | Path) -> None:
    devices = list(result.device_totals)
    resources = [r for r in Resource if any(r in t for t in result.device_totals.values())]
    by_name = {m.model: m for m in problem.models}
    by_device = {d.name: d for d in problem.devices}
    figure, axes = plt.subplots(len(resources), 1, figsize=(max(6.0, 1.2 * len(devices) + 2), 3.2 * len(resources)),
                                squeeze=False)
    colours = plt.get_cmap("tab20")
    model_colour = {m: colours(k % 20) for k, m in enumerate(sorted(by_name))}
    for ax, resource in zip(axes[:, 0], resources):
        scale = 1e6 if resource.is_bytes else 0.01
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
        ax.set_ylabel(RESOURCE_TITLES[resource])
        ax.set_xticks(range(len(devices)), devices, rotation=30, ha="right", fontsize=8)
    axes[0, 0].set_title(f"{result.device_count} devices; dashed red: limit")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
