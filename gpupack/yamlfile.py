"""YAML loading that remembers where each key was, so errors can name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gpupack.errors import InputError


class LineDict(dict):
    """A mapping from YAML that knows the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    line: int = 0
    item_lines: list[int]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser where PyYAML was built with it (8x faster on a week of demand series, which
    counts against a plan's time limit), with the same constructors and line numbers."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise InputError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1, field=str(key))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml_text(text: str, path: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except InputError as e:
        raise InputError(e.reason, path=path, line=e.line, field=e.field) from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise InputError(f"invalid YAML: {e.problem or e.context}", path=path, line=line) from e
    except yaml.YAMLError as e:
        raise InputError(f"invalid YAML: {e}", path=path) from e


def load_yaml_file(path: str | Path) -> Any:
    return load_yaml_text(read_text_file(path), str(path))


def read_text_file(path: str | Path) -> str:
    """A file the user named, as UTF-8 text; any failure is one :class:`InputError` naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise InputError("file not found", path=str(path)) from e
    except IsADirectoryError as e:
        raise InputError("is a directory, expected a file", path=str(path)) from e
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=str(path)) from e
    except UnicodeDecodeError as e:
        raise InputError("not UTF-8 text", path=str(path)) from e
