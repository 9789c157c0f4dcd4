"""Generate gpupack's Grafana dashboards: ``python grafana/generate.py`` rewrites grafana/dashboards/.

Dashboards are written from code so that the three of them share one layout, one set of variables
and one policy limit, and so that a test can check the committed JSON is what this file produces.
Every query filters on the variables with ``=~`` so that "All" and multi-select both work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

# The article's rule: baseline + peaks of the placed models must stay under 80% of the device.
# Thresholds and limit lines are drawn here; change it with the policy and regenerate.
POLICY_LIMIT_RATIO = 0.8

PANEL_HEIGHT = 8
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

Json = dict[str, Any]


def target(expr: str, legend: str = "", ref_id: str = "A") -> Json:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", "refId": ref_id}


def _thresholds(limit: float | None) -> Json:
    steps: list[Json] = [{"color": "green", "value": None}]
    if limit is not None:
        steps.append({"color": "red", "value": limit})
    return {"mode": "absolute", "steps": steps}


def panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    width: int,
    limit: float | None = None,
    thresholds: Json | None = None,
    no_value: str | None = None,
    stacked: bool = False,
    overrides: Sequence[Json] = (),
) -> Json:
    """One panel; ``gridPos`` is filled in by :func:`layout`.

    ``limit`` draws the policy threshold (``thresholds`` replaces it when red is below, not above);
    ``no_value`` is shown for series that only exist while something happens (violations, moves).
    """
    refs = "ABCDEFGH"
    defaults: Json = {"unit": unit, "thresholds": thresholds or _thresholds(limit),
                      "color": {"mode": "palette-classic"}}
    if no_value is not None:
        defaults["noValue"] = no_value
    if unit == "percentunit":
        defaults.update(min=0, max=1)
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 40 if stacked else 10,
            "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if limit is not None else "off"},
            "showPoints": "never",
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [dict(t, refId=refs[i]) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": _options(kind),
        "gridPos": {"w": width, "h": PANEL_HEIGHT},
    }


def _options(kind: str) -> Json:
    if kind == "timeseries":
        return {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "bargauge":
        return {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background", "graphMode": "none", "textMode": "value"}


def limit_line_override(legend: str) -> Json:
    """Draw the series named ``legend`` as an unstacked dashed red line (the policy limit)."""
    return {
        "matcher": {"id": "byName", "options": legend},
        "properties": [
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ],
    }


def layout(rows: Iterable[Sequence[Json]]) -> list[Json]:
    """Place rows of panels top to bottom; each row's widths must add up to the grid width."""
    panels, y = [], 0
    for row in rows:
        x = 0
        for p in row:
            p["gridPos"].update(x=x, y=y)
            x += p["gridPos"]["w"]
        if x != GRID_WIDTH:
            raise ValueError(f"row starting with {row[0]['title']!r} is {x} wide, not {GRID_WIDTH}")
        y += PANEL_HEIGHT
        panels.extend(row)
    for panel_id, p in enumerate(panels, start=1):
        p["id"] = panel_id
    return panels


def query_variable(name: str, label: str, query: str, *, multi: bool) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,  # on time range change: models come and go
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "allValue": ".*" if multi else None,
        "current": {},
    }


def variables(*, device_multi: bool = True, model_multi: bool = True) -> list[Json]:
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}},
        query_variable("server", "Server", "label_values(gpupack_server_up, server)", multi=True),
        query_variable("device", "Device", "label_values(gpupack_device_memory_total_bytes, device)",
                       multi=device_multi),
        query_variable("model", "Model",
                       'label_values(gpupack_model_memory_peak_bytes{server=~"$server",device=~"$device"}, model)',
                       multi=model_multi),
    ]


def dashboard(uid: str, title: str, description: str, panels: list[Json], templating: list[Json]) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["gpupack", "triton", "gpu"],
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "schemaVersion": 39,
        "editable": True,
        "graphTooltip": 1,
        "templating": {"list": templating},
        "links": [{"title": "gpupack", "type": "dashboards", "tags": ["gpupack"], "asDropdown": True}],
        "panels": panels,
    }


# -- the three dashboards ---------------------------------------------------------------------------

DEVICE_FILTER = 'device=~"$device"'
SERVER_DEVICE_FILTER = f'server=~"$server",{DEVICE_FILTER}'
MODEL_FILTER = f'{SERVER_DEVICE_FILTER},model=~"$model"'
# The rules engine runs as several replicas (one holds the scheduler's lease) and each exports the
# same verdicts: collapse them before counting.
VIOLATIONS = f"max by (policy, device, model, severity) (gpupack_policy_violation{{{DEVICE_FILTER}}})"
# What a memory policy is evaluated on, exactly as `gpupack rules export-prometheus` writes it: the
# server's own peak (its unattributed remainder) plus the peaks of the models loaded right now.
PEAK_MEMORY_BY_DEVICE = (
    f"sum by (device) ((gpupack_model_memory_peak_bytes{{{SERVER_DEVICE_FILTER}}}"
    f" and on (server, model, version, device) gpupack_model_memory_bytes)"
    f" or gpupack_server_unattributed_memory_peak_bytes{{{SERVER_DEVICE_FILTER}}})"
)


def fleet_capacity() -> Json:
    stats = [
        panel("stat", "Devices", "Devices the exporter reports (GPUs, MIG instances, cpu:<server>).",
              [target(f"count(gpupack_device_memory_total_bytes{{{DEVICE_FILTER}}})")], unit="none", width=4),
        panel("stat", "Models loaded", "Distinct models with a current memory reading.",
              [target(f'count(count by (model) (gpupack_model_memory_bytes{{{SERVER_DEVICE_FILTER}}}))')],
              unit="none", width=4),
        panel("stat", "Triton servers up", "Share of Triton servers the exporter can reach.",
              [target('avg(gpupack_server_up{server=~"$server"})')], unit="percentunit", width=4),
        panel("stat", "Fleet memory in use", "All devices' used memory over all devices' capacity.",
              [target(f"sum(gpupack_device_memory_used_bytes{{{DEVICE_FILTER}}})"
                      f" / sum(gpupack_device_memory_total_bytes{{{DEVICE_FILTER}}})")],
              unit="percentunit", width=4, limit=POLICY_LIMIT_RATIO),
        panel("stat", "Policy violations", "(policy, device, model) triples violated right now.",
              [target(f"count({VIOLATIONS})")], unit="none", width=4, limit=1, no_value="0"),
        panel("stat", "Rebalance moves (range)", "Model moves the scheduler made in the selected range.",
              [target("sum(increase(gpupack_rebalance_moves_total[$__range]))")], unit="none", width=4,
              no_value="0"),
    ]
    memory = [
        panel("timeseries", "Memory used per device", "Measured now, over the device's capacity.",
              [target(f"gpupack_device_memory_used_bytes{{{DEVICE_FILTER}}}"
                      f" / gpupack_device_memory_total_bytes{{{DEVICE_FILTER}}}", "{{device}}")],
              unit="percentunit", width=12, limit=POLICY_LIMIT_RATIO),
        panel("timeseries", "Peak memory per device (policy view)",
              "Server baseline + the recorded peaks of the models placed on the device, over its capacity:"
              " what a memory policy is evaluated on. Above the line, the device can run out of memory"
              " when its models peak together.",
              [target(f"({PEAK_MEMORY_BY_DEVICE}) / on (device) gpupack_device_memory_total_bytes", "{{device}}")],
              unit="percentunit", width=12, limit=POLICY_LIMIT_RATIO),
    ]
    compute = [
        panel("timeseries", "Utilisation per device", "Device (GPU or CPU) utilisation.",
              [target(f"gpupack_device_utilization_ratio{{{DEVICE_FILTER}}}", "{{device}}")],
              unit="percentunit", width=12, limit=POLICY_LIMIT_RATIO),
        panel("bargauge", "Headroom per policy and device",
              "How far each device is below each capacity policy's limit (the rules engine's verdict).",
              [target(f"min by (policy, device) (gpupack_policy_headroom_ratio{{{DEVICE_FILTER}}})",
                      "{{policy}} {{device}}")],
              unit="percentunit", width=12,
              thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                        {"color": "green", "value": 0}]}),
    ]
    history = [
        panel("bargauge", "Models per device", "Models with a current memory reading on each device.",
              [target(f'count by (device) (gpupack_model_memory_bytes{{{SERVER_DEVICE_FILTER}}})',
                      "{{device}}")], unit="none", width=6),
        panel("timeseries", "Violations over time", "Violated (policy, device, model) triples, by policy.",
              [target(f"count by (policy, severity) ({VIOLATIONS})", "{{policy}} ({{severity}})")],
              unit="none", width=6, no_value="0"),
        panel("timeseries", "Rebalance moves", "Moves per interval by result (succeeded, failed, rolled back).",
              [target("sum by (result) (increase(gpupack_rebalance_moves_total[$__rate_interval]))", "{{result}}")],
              unit="none", width=6, no_value="0"),
        panel("timeseries", "Ready copies against desired",
              "Copies of each model ready on a server that answers, beside the copies the scheduler's desired"
              " state wants (the rules engine with --apply). Ready below desired is a model being restored;"
              " ready at 0 fires GpupackModelNotServed.",
              [target('gpupack_model_ready_copies{model=~"$model"}', "{{model}} ready"),
               target('gpupack_model_desired_copies{model=~"$model"}', "{{model}} desired", ref_id="B")],
              unit="none", width=6),
    ]
    return dashboard("gpupack-fleet-capacity", "gpupack / Fleet capacity",
                     "Every device's memory and utilisation against the policy limit, violations and moves.",
                     layout([stats, memory, compute, history]), variables())


def device() -> Json:
    limit_legend = f"limit ({POLICY_LIMIT_RATIO:.0%})"
    memory = [
        panel("timeseries", "Memory by model",
              "Each model's current memory stacked with the server's unattributed remainder: together they"
              " add up to the device's measured use. The dashed line is the policy limit.",
              [target(f'sum by (model) (gpupack_model_memory_bytes{{{MODEL_FILTER}}})', "{{model}}"),
               target(f'sum(gpupack_server_unattributed_memory_bytes{{{SERVER_DEVICE_FILTER}}})',
                      "unattributed"),
               target(f"{POLICY_LIMIT_RATIO} * sum(gpupack_device_memory_total_bytes{{{DEVICE_FILTER}}})",
                      limit_legend)],
              unit="bytes", width=24, stacked=True, overrides=[limit_line_override(limit_legend)]),
    ]
    utilisation = [
        panel("timeseries", "Utilisation by model",
              "Each model's share of the device's utilisation, stacked, with the policy limit.",
              [target(f'sum by (model) (gpupack_model_utilization_ratio{{{MODEL_FILTER}}})', "{{model}}")],
              unit="percentunit", width=12, stacked=True, limit=POLICY_LIMIT_RATIO),
        panel("timeseries", "Memory bandwidth utilisation",
              "The GPU memory controller's busy share (NVML); GPUs only.",
              [target(f"gpupack_device_memory_bandwidth_utilization_ratio{{{DEVICE_FILTER}}}", "{{device}}")],
              unit="percentunit", width=12, limit=POLICY_LIMIT_RATIO),
    ]
    peaks = [
        panel("bargauge", "Peak memory by model", "Each model's recorded peak over the exporter's window.",
              [target(f'max by (model) (gpupack_model_memory_peak_bytes{{{MODEL_FILTER}}})', "{{model}}")],
              unit="bytes", width=8),
        panel("bargauge", "Peak utilisation by model", "Each model's recorded utilisation peak.",
              [target(f'max by (model) (gpupack_model_utilization_peak_ratio{{{MODEL_FILTER}}})', "{{model}}")],
              unit="percentunit", width=8, limit=POLICY_LIMIT_RATIO),
        panel("timeseries", "Unattributed memory",
              "Memory on the device no model accounts for: the server itself and anything unknown.",
              [target(f'gpupack_server_unattributed_memory_bytes{{{SERVER_DEVICE_FILTER}}}',
                      "{{server}}")], unit="bytes", width=8),
    ]
    return dashboard("gpupack-device", "gpupack / Device",
                     "One device: what each model uses, what nobody accounts for, and the peaks.",
                     layout([memory, utilisation, peaks]), variables(device_multi=False))


def _per_request_seconds(counter_us: str) -> str:
    """Triton's cumulative microsecond counters over its request counter: seconds per request."""
    selector = '{model=~"$model",server=~"$server"}'
    return (f"sum by (server, model) (rate({counter_us}{selector}[$__rate_interval])) / 1e6"
            f" / sum by (server, model) (rate(nv_inference_request_success{selector}[$__rate_interval]))")


def model() -> Json:
    triton = '{model=~"$model",server=~"$server"}'
    footprint = [
        panel("timeseries", "Memory, current and peak", "The model's memory wherever it is placed.",
              [target(f"sum by (server, device) (gpupack_model_memory_bytes{{{MODEL_FILTER}}})",
                      "current {{server}} {{device}}"),
               target(f"max by (server, device) (gpupack_model_memory_peak_bytes{{{MODEL_FILTER}}})",
                      "peak {{server}} {{device}}")],
              unit="bytes", width=12),
        panel("timeseries", "Utilisation, current and peak", "The model's utilisation wherever it is placed.",
              [target(f"sum by (server, device) (gpupack_model_utilization_ratio{{{MODEL_FILTER}}})",
                      "current {{server}} {{device}}"),
               target(f"max by (server, device) (gpupack_model_utilization_peak_ratio{{{MODEL_FILTER}}})",
                      "peak {{server}} {{device}}")],
              unit="percentunit", width=12, limit=POLICY_LIMIT_RATIO),
    ]
    traffic = [
        panel("timeseries", "Requests per second", "Successful requests, from Triton's own counters.",
              [target(f"sum by (server) (rate(nv_inference_request_success{triton}[$__rate_interval]))",
                      "{{server}}")], unit="reqps", width=12),
        panel("timeseries", "Failed requests per second", "Failed requests, from Triton's own counters.",
              [target(f"sum by (server) (rate(nv_inference_request_failure{triton}[$__rate_interval]))",
                      "{{server}}")], unit="reqps", width=12),
    ]
    latency = [
        panel("timeseries", "Queue time per request", "Time requests wait in Triton's scheduler queue.",
              [target(_per_request_seconds("nv_inference_queue_duration_us"), "{{server}}")], unit="s", width=12),
        panel("timeseries", "Compute time per request", "Time the backend spends computing each request.",
              [target(_per_request_seconds("nv_inference_compute_infer_duration_us"), "{{server}}")],
              unit="s", width=12),
    ]
    return dashboard("gpupack-model", "gpupack / Model",
                     "One model wherever it runs: its footprint, and Triton's view of its traffic.",
                     layout([footprint, traffic, latency]), variables(model_multi=False))


DASHBOARDS = {"fleet-capacity": fleet_capacity, "device": device, "model": model}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = DASHBOARDS_DIR / f"{name}.json"
        path.write_text(render(build))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
