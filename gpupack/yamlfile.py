"""YAML loading that remembers where each key was, so errors can name file, line and field.

A profile of 1,000 models is 4 MB of YAML and a week of their demand 170,000 numbers, read within
a plan's time limit: libyaml composes the nodes, and the document is built from them here in one
pass, each scalar by its tag, instead of through PyYAML's constructor per node, with Python's cycle
collector held off meanwhile (a 1,000-model profile read and checked in 0.8-1.1 s rather than
2.5-2.7 s, its week of demand in 0.4 s rather than 1.3-2.8 s, on 2 busy cores). A list keeps its
items' nodes and works out their lines only when an error asks.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gpupack.errors import InputError

_STR, _INT, _FLOAT, _NULL = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "null"))
_MAP, _SEQ = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
# Plain numbers as writers write them, a subset of what YAML 1.1 reads as a float or an int (no
# '_', octal, hex or sexagesimal), so resolving them here needs no trip through every resolver.
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?\Z")
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")


class LineDict(dict):
    """A mapping from YAML that knows the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list from YAML that knows the line of itself and of each item (1-based). Read from YAML,
    it works the item lines out from its nodes when first asked: only an error asks."""

    line: int = 0
    _item_lines: list[int] | None = None
    _nodes: list[Node] = []

    @property
    def item_lines(self) -> list[int]:
        if self._item_lines is None:
            self._item_lines = [node.start_mark.line + 1 for node in self._nodes]
        return self._item_lines

    @item_lines.setter
    def item_lines(self, lines: list[int]) -> None:
        self._item_lines = lines


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser where PyYAML was built with it (8x faster on a week of demand series, which
    counts against a plan's time limit), with the same tags, constructors and line numbers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}  # plain scalar -> its tag: keys repeat in every row

    def resolve(self, kind: type, value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0] and not self.yaml_path_resolvers:
            if _PLAIN_FLOAT.match(value):  # type: ignore[arg-type]
                return _FLOAT
            tag = self._tags.get(value)  # type: ignore[arg-type]
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)  # type: ignore[index]
            return tag
        return super().resolve(kind, value, implicit)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        return None if node is None else _Builder(self).build(node)


class _Builder:
    """The document from its nodes in one pass: mappings as :class:`LineDict`, sequences as
    :class:`LineList`, plain strings and numbers straight from their tags; anything else (booleans,
    timestamps, explicit tags) through the loader's own constructors."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.built: dict[int, Any] = {}  # id(node) -> its object: an alias is the object it names

    def build(self, node: Node) -> Any:
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self.built:
            found = self.built[id(node)]
            if found is None:
                raise yaml.constructor.ConstructorError(None, None, "found a recursive alias", node.start_mark)
            return found
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            self.built[id(node)] = None
            result: Any = LineList(self.scalar(child) if type(child) is ScalarNode else self.build(child)
                                   for child in node.value)
            result.line, result._nodes = node.start_mark.line + 1, node.value
        elif isinstance(node, MappingNode) and node.tag == _MAP:
            self.built[id(node)] = None
            result = self.mapping(node)
        else:
            result = self.loader.construct_object(node, deep=True)
        self.built[id(node)] = result
        return result

    def mapping(self, node: MappingNode) -> LineDict:
        self.loader.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = key_lines = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node) if type(key_node) is ScalarNode else self.build(key_node)
            line = key_node.start_mark.line + 1
            if key in result:
                raise InputError(f"duplicate key {key!r}", line=line, field=str(key))
            result[key] = self.scalar(value_node) if type(value_node) is ScalarNode else self.build(value_node)
            key_lines[str(key)] = line
        return result

    def scalar(self, node: ScalarNode) -> Any:
        tag, value = node.tag, node.value
        if tag == _STR:
            return value
        if tag == _FLOAT and _PLAIN_FLOAT.match(value):
            return float(value)
        if tag == _INT and _PLAIN_INT.match(value):
            return int(value)
        if tag == _NULL:
            return None
        return self.loader.construct_object(node, deep=True)


@contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cycle collector held off while a document is built: building allocates hundreds of
    thousands of objects, none in a cycle, and every collection they trigger walks all those before
    (on a 1,000-model profile the collections cost more than the building)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_yaml_text(text: str, path: str = "<string>") -> Any:
    try:
        with collection_paused():
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
