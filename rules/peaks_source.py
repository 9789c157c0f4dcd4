"""Where peaks come from: the exporter (default), a Prometheus server, or a profile file.

Each source is a callable returning a :class:`PeaksSnapshot` or raising a typed error: an
exporter or Prometheus that does not answer is :class:`UnreachableError` (``cannot reach the
exporter at URL: connection refused``), one that answers nonsense :class:`PeaksUnavailableError`.
Both are "unknown" (exit 3) to a one-shot command; the loop logs them and keeps going. The loop and
the CLI pick a source through :data:`SOURCES`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import requests

from gpupack.domain import Device, Resource
from gpupack.errors import InputError, UnreachableError
from gpupack.rules.peaks import DevicePeaks, ModelPeaks, PeaksSnapshot, PeaksUnavailableError, snapshot_from_json
from gpupack.units import parse_bytes, parse_ratio
from gpupack.yamlfile import LineDict, load_yaml_file

PeaksSource = Callable[[], PeaksSnapshot]


def get_json(what: str, base_url: str, path: str, timeout_seconds: float,
             params: Mapping[str, str] | None = None) -> Any:
    """``GET base_url + path`` from ``what`` (``the exporter``, ``Prometheus``), as JSON.

    The errors name ``what`` and the URL the user gave, in one line: requests' own messages nest
    three exceptions and the query string into 300 characters.
    """
    url = f"{base_url.rstrip('/')}{path}"
    try:
        response = requests.get(url, params=params, timeout=timeout_seconds)
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL) as e:
        raise InputError(f"{what}: {base_url!r} is not an http:// or https:// URL") from e
    except requests.RequestException as e:
        raise UnreachableError(what, base_url, e) from e
    if not response.ok:
        raise UnreachableError(what, base_url, f"{path} answered HTTP {response.status_code} {response.reason}"
                                               f"{_error_of(response)}".rstrip())
    try:
        return response.json()
    except ValueError as e:
        raise PeaksUnavailableError(f"{what} at {base_url}: {path} did not answer JSON") from e


def _error_of(response: requests.Response) -> str:
    """Prometheus says why it refused a query in its JSON body (``"error"``); others say nothing."""
    try:
        body = response.json()
    except ValueError:
        return ""
    return f": {body['error']}" if isinstance(body, dict) and body.get("error") else ""


PEAKS_PATH = "/api/v1/peaks"
QUERY_PATH = "/api/v1/query"


def prometheus_query(url: str, promql: str, timeout_seconds: float,
                     at_seconds: float | None = None) -> list[dict[str, Any]]:
    """The samples of an instant query; a refused query is :class:`PeaksUnavailableError`."""
    params = {"query": promql} if at_seconds is None else {"query": promql, "time": f"{at_seconds:.3f}"}
    body = get_json("Prometheus", url, QUERY_PATH, timeout_seconds, params)
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PeaksUnavailableError(f"Prometheus at {url}: query {promql!r} failed: {error}")
    return body["data"]["result"]


@dataclass(frozen=True)
class ExporterSource:
    """The exporter's ``GET /api/v1/peaks``: peaks, baselines, capacities and what is loaded."""

    url: str
    timeout_seconds: float = 5.0

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}{PEAKS_PATH}"

    def document(self) -> Any:
        """The raw answer, for a reader that needs more than the snapshot (the scheduler: GPU indices)."""
        return get_json("the exporter", self.url, PEAKS_PATH, self.timeout_seconds)

    def __call__(self) -> PeaksSnapshot:
        return snapshot_from_json(self.document(), self.endpoint)


@dataclass(frozen=True)
class PrometheusSource:
    """A Prometheus that scrapes the exporters: ``max_over_time`` of their peak series over the window.

    Prometheus cannot tell an unloaded model from a loaded one once its peak series is gone, so a
    model counts as placed while it has a ``gpupack_model_memory_bytes`` sample now; device labels
    are not in the series, so label selectors match no device from this source.
    """

    url: str
    window_seconds: float
    timeout_seconds: float = 10.0

    def query(self, promql: str, at_seconds: float | None = None) -> list[dict[str, Any]]:
        return prometheus_query(self.url, promql, self.timeout_seconds, at_seconds)

    def __call__(self) -> PeaksSnapshot:
        window = f"{int(self.window_seconds)}s"
        # Every query at one instant: otherwise a scrape landing between two of them can show a
        # model's utilisation peak without its memory peak, or a device without its capacity.
        at_seconds = time.time()

        def query(promql: str) -> list[dict[str, Any]]:
            return self.query(promql, at_seconds)

        peaks: dict[tuple[str, str, str, str], dict[Resource, float]] = {}
        for resource, series in ((Resource.GPU_MEMORY, "gpupack_model_memory_peak_bytes"),
                                 (Resource.GPU_UTILIZATION, "gpupack_model_utilization_peak_ratio")):
            for sample in query(f"max_over_time({series}[{window}])"):
                labels = sample["metric"]
                key = (labels.get("server", ""), labels["model"], labels.get("version", ""), labels["device"])
                peaks.setdefault(key, {})[resource] = float(sample["value"][1])
        loaded = {(s["metric"].get("server", ""), s["metric"]["model"], s["metric"].get("version", ""), s["metric"]["device"])
                  for s in query("gpupack_model_memory_bytes")}
        capacity = {s["metric"]["device"]: float(s["value"][1]) for s in query("gpupack_device_memory_total_bytes")}
        baselines: dict[str, float] = {}
        servers: dict[str, set[str]] = {}
        for s in query(f"max_over_time(gpupack_server_unattributed_memory_peak_bytes[{window}])"):
            device = s["metric"]["device"]
            baselines[device] = baselines.get(device, 0.0) + float(s["value"][1])
            servers.setdefault(device, set()).add(s["metric"]["server"])
        down = frozenset(s["metric"]["server"] for s in query("gpupack_server_up") if float(s["value"][1]) < 1)
        names = sorted(set(capacity) | set(baselines) | {key[3] for key in peaks})
        devices = tuple(
            DevicePeaks(Device(name, {Resource.GPU_MEMORY: capacity[name]} if name in capacity else {}),
                        tuple(sorted(servers.get(name, ()))),
                        {Resource.GPU_MEMORY: baselines[name]} if name in baselines else {})
            for name in names
        )
        models = tuple(ModelPeaks(model, device, values, server, version, (server, model, version, device) in loaded)
                       for (server, model, version, device), values in sorted(peaks.items()))
        return PeaksSnapshot(devices, models, self.window_seconds, down_servers=down)


@dataclass(frozen=True)
class ProfileSource:
    """Planning before anything runs: footprints from a profile file (``gpupack profile``), devices
    and a proposed placement from a small YAML file::

        devices:
          - {name: GPU-0, capacity: {gpu_memory: 16GiB}, labels: {class: V100-16GB}}
        placement:
          classification_chest: [GPU-0]
    """

    profile_path: str
    placement_path: str

    def __call__(self) -> PeaksSnapshot:
        from gpupack.profiles import load_profile  # noqa: PLC0415 - only this source needs it

        profile = load_profile(self.profile_path)
        devices, placement = _load_placement_file(self.placement_path)
        footprints = {m.model: m.peaks for m in profile.models}
        models: list[ModelPeaks] = []
        for model, device_names in placement.items():
            if model not in footprints:
                raise InputError(f"model {model!r} is not in the profile {self.profile_path}",
                                 path=self.placement_path, field=f"placement.{model}")
            models.extend(ModelPeaks(model, device, footprints[model]) for device in device_names)
        return PeaksSnapshot(
            tuple(DevicePeaks(d, server_baseline=profile.server_baseline) for d in devices), tuple(models))


def _load_placement_file(path: str) -> tuple[list[Device], dict[str, list[str]]]:
    data = load_yaml_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list) or not isinstance(data.get("placement"), dict):
        raise InputError("expected 'devices:' (a list) and 'placement:' (model -> list of devices)", path=path, line=1)
    devices = []
    for position, item in enumerate(data["devices"]):
        field = f"devices[{position}]"
        line = data["devices"].item_lines[position]
        if not isinstance(item, LineDict) or not isinstance(item.get("name"), str):
            raise InputError("needs a name", path=path, line=line, field=field)
        capacity = {}
        for key, value in (item.get("capacity") or {}).items():
            try:
                resource = Resource.parse(key)
                capacity[resource] = float(parse_bytes(value) if resource.is_bytes else parse_ratio(value))
            except ValueError as e:
                raise InputError(str(e), path=path, line=item.line_of("capacity"), field=f"{field}.capacity.{key}") from e
        devices.append(Device(item["name"], capacity, labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()}))
    known = {d.name for d in devices}
    placement: dict[str, list[str]] = {}
    for model, names in data["placement"].items():
        names = [names] if isinstance(names, str) else names
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"unknown device {unknown[0]!r}", path=path, line=data["placement"].line_of(model),
                             field=f"placement.{model}")
        placement[str(model)] = list(names)
    return devices, placement


SOURCES: dict[str, Callable[..., PeaksSource]] = {
    "exporter": lambda settings: ExporterSource(settings["exporter_url"]),
    "prometheus": lambda settings: PrometheusSource(_required(settings, "prometheus_url"), settings["window"]),
    "profile": lambda settings: ProfileSource(_required(settings, "profile"), _required(settings, "placement")),
}


def build_source(settings: Mapping[str, Any]) -> PeaksSource:
    """The source named by the ``source`` setting, from the other settings."""
    return SOURCES[settings["source"]](settings)


def _required(settings: Mapping[str, Any], key: str) -> Any:
    if not settings.get(key):
        raise InputError(f"--{key.replace('_', '-')} is needed with --source {settings['source']}")
    return settings[key]
