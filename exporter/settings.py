"""The exporter's settings, validated once into frozen objects before anything starts.

Scalars go through :func:`gpupack.config.resolve_settings` (file < ``GPUPACK_EXPORTER_*`` < flags);
the server list by :func:`gpupack.servers.load_servers`, whose errors name the item and line inside the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from gpupack.config import ConfigFile, Setting, default_state_dir, parse_listen, resolve_settings, split_list
from gpupack.errors import InputError
from gpupack.exporter.families import ALL_FAMILIES, FamilySelection, parse_family_selection
from gpupack.profiles import Profile, load_profile
from gpupack.servers import SERVERS_SETTING, ServerConfig, load_servers
from gpupack.units import parse_duration

SECTION = "exporter"
BACKENDS = ("nvml", "host")
DEFAULT_PORT = 9478


@dataclass(frozen=True)
class ExporterSettings:
    listen_host: str
    listen_port: int
    servers: tuple[ServerConfig, ...]
    backends: tuple[str, ...]
    sample_interval_seconds: float
    peak_window_seconds: float
    state_dir: Path
    profile: Profile | None = None  # model peaks for models nothing on the machine measures
    families: FamilySelection = ALL_FAMILIES  # the series families /metrics carries


def _backends(value: Any) -> tuple[str, ...]:
    names = split_list(value)
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    if not names:
        raise ValueError("at least one backend is needed")
    return tuple(dict.fromkeys(names))


def _sample_hz(value: Any) -> float:
    hz = float(value)
    if not 0 < hz <= 100:
        raise ValueError(f"sample rate {value!r} must be above 0 and at most 100 per second")
    return hz


def _window(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 60:
        raise ValueError(f"peak window {value!r} is shorter than a minute")
    return seconds


def _default_backends() -> tuple[str, ...]:
    return ("nvml",) if Path("/proc/driver/nvidia/version").exists() else ("host",)


SETTINGS = (
    Setting("listen", lambda v: parse_listen(v, DEFAULT_PORT), ("0.0.0.0", DEFAULT_PORT), "HOST:PORT to serve /metrics and /api/v1/peaks on"),
    SERVERS_SETTING,
    Setting("backend", _backends, None, "device backends: nvml, host (default: nvml with a driver, else host)"),
    Setting("sample_hz", _sample_hz, 5.0, "samples per second, independent of scrapes"),
    Setting("peak_window", _window, 7 * 86400.0, "how long peaks are kept"),
    Setting("state_dir", str, None, "directory of the peak database"),
    Setting("profile", str, None, "profile file (gpupack profile) whose model peaks stand in for models nothing measures"),
    Setting("metrics", parse_family_selection, ALL_FAMILIES,
            "series families to export: names or globs, comma-separated or a list (default: all)"),
)


def load_settings(config: ConfigFile | None, environ: Mapping[str, str], flags: Mapping[str, Any]) -> ExporterSettings:
    """Validate every layer; raises :class:`InputError` naming the field on the first bad value."""
    values = resolve_settings(SECTION, SETTINGS, config, environ, flags)
    host, port = values["listen"]
    servers = load_servers(config, environ, flags, SECTION)
    if not servers:
        raise InputError("no Triton server configured (give --server NAME=URL or exporter.servers in the config file)")
    return ExporterSettings(
        listen_host=host,
        listen_port=port,
        servers=servers,
        backends=values["backend"] or _default_backends(),
        sample_interval_seconds=1.0 / values["sample_hz"],
        peak_window_seconds=values["peak_window"],
        state_dir=Path(values["state_dir"] or default_state_dir("exporter")),
        profile=load_profile(values["profile"]) if values["profile"] else None,
        families=values["metrics"],
    )
