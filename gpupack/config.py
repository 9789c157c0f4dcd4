"""Settings from a YAML file, ``GPUPACK_*`` environment variables and flags, in rising precedence.

Each subcommand declares its settings once; :func:`resolve_settings` validates every layer into
plain typed values before anything starts, and names the exact place a bad value came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from gpupack.addresses import host_and_port
from gpupack.errors import InputError
from gpupack.units import UnitError
from gpupack.yamlfile import LineDict, load_yaml_file

_MISSING = object()


@dataclass(frozen=True)
class Setting:
    key: str
    parse: Callable[[Any], Any]
    default: Any = None
    help: str = ""
    metavar: str = ""  # for its command-line flag, when it has one

    def env_name(self, section: str) -> str:
        return f"GPUPACK_{section}_{self.key}".upper().replace("-", "_")


@dataclass(frozen=True)
class ConfigFile:
    path: str
    data: LineDict

    def section(self, name: str) -> LineDict | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InputError("must be a mapping", path=self.path, line=self.data.line_of(name), field=name)
        return value  # type: ignore[return-value]


def split_list(value: Any) -> tuple[str, ...]:
    """The items of a list setting: flags and the environment give ``a, b,c``, a config file a YAML
    list (or one scalar, a list of one). Each item is stripped; empty ones are dropped."""
    if isinstance(value, str):
        items: Sequence[Any] = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, (int, float)):
        items = (value,)
    else:
        raise ValueError("must be a list: comma-separated, or a YAML list")
    return tuple(text for item in items if (text := str(item).strip()))


def parse_listen(value: Any, default_port: int) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) for a daemon's HTTP server; an empty host is every interface."""
    text = str(value)
    try:
        host, port = host_and_port(text)
    except ValueError:
        port = None
    if not port:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:{default_port})")
    return host or "0.0.0.0", port


def default_state_dir(component: str = "") -> str:
    """Where a daemon keeps what must survive restarts, per the XDG base directory spec."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "gpupack" / component) if component else str(Path(base) / "gpupack")


def load_config_file(path: str | Path) -> ConfigFile:
    data = load_yaml_file(path)
    if data is None:
        data = LineDict()
        data.line, data.key_lines = 1, {}
    if not isinstance(data, dict):
        raise InputError("top level must be a mapping of sections (exporter:, rules:, ...)", path=str(path), line=1)
    return ConfigFile(str(path), data)  # type: ignore[arg-type]


class ResolvedSettings(dict):
    """Settings by key, and where each that is not a default was said, so that output explaining a
    setting cites the flag, variable or config-file line the user actually wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[str, str] = {}

    def said_by(self, key: str) -> str | None:
        """``--resources``, ``GPUPACK_PLAN_RESOURCES`` or ``plan.resources in FILE:LINE``; None for a default."""
        return self.origins.get(key)


def resolve_settings(
    section: str,
    settings: Sequence[Setting],
    config: ConfigFile | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
) -> ResolvedSettings:
    """Defaults < file section < environment < flags (a flag left at None does not count)."""
    file_section = config.section(section) if config else None
    known = {s.key for s in settings}
    if file_section:
        for key in file_section:
            if key not in known:
                raise InputError(
                    f"unknown setting (known: {', '.join(sorted(known))})",
                    path=config.path,  # type: ignore[union-attr]
                    line=file_section.line_of(key),
                    field=f"{section}.{key}",
                )
    values = ResolvedSettings()
    for setting in settings:
        value: Any = setting.default
        origin: tuple[str, str, int | None] | None = None
        if file_section and setting.key in file_section:
            value = file_section[setting.key]
            origin = ("file", config.path, file_section.line_of(setting.key))  # type: ignore[union-attr]
        env_name = setting.env_name(section)
        if env_name in environ:
            value, origin = environ[env_name], ("env", env_name, None)
        flag_value = flags.get(setting.key.replace("-", "_"), _MISSING)
        if flag_value is not _MISSING and flag_value is not None:
            value, origin = flag_value, ("flag", "--" + setting.key.replace("_", "-"), None)
        if origin is not None and value is not None:
            value = _parse(setting, value, section, origin)
            kind, where, line = origin
            values.origins[setting.key] = f"{section}.{setting.key} in {where}:{line}" if kind == "file" else where
        values[setting.key] = value
    return values


def _parse(setting: Setting, value: Any, section: str, origin: tuple[str, str, int | None]) -> Any:
    try:
        return setting.parse(value)
    except (UnitError, ValueError, TypeError) as e:
        kind, where, line = origin
        if kind == "file":
            raise InputError(str(e), path=where, line=line, field=f"{section}.{setting.key}") from e
        raise InputError(f"{where}: {e}") from e
