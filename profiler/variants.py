"""The configurations a search tries: instance count and kind, ``max_batch_size``, dynamic batching.

A :class:`Variant` is loaded through Triton's load API with a config override built from the
model's own config (read from the server), so the user's repository is never touched; the chosen
one is written as a ``config.pbtxt`` (protobuf text, through Triton's own ``ModelConfig`` message)
for the user to deploy.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from gpupack.units import counted

INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class Batching:
    """Dynamic batching off, or on with a maximum queue delay (preferred size: the max batch)."""

    enabled: bool
    max_queue_delay_seconds: float = 0.0

    @property
    def label(self) -> str:
        if not self.enabled:
            return "dyn-off"
        return f"dyn-{round(self.max_queue_delay_seconds * 1e6)}us"

    @property
    def description(self) -> str:
        if not self.enabled:
            return "dynamic batching off"
        return f"dynamic batching with {round(self.max_queue_delay_seconds * 1e6)} µs maximum queue delay"


@dataclass(frozen=True)
class Variant:
    instance_count: int
    instance_kind: str | None  # KIND_CPU / KIND_GPU; None keeps the model's own
    max_batch_size: int
    batching: Batching

    @property
    def name(self) -> str:
        kind = f"-{self.instance_kind.removeprefix('KIND_').lower()}" if self.instance_kind else ""
        return f"i{self.instance_count}{kind}-b{self.max_batch_size}-{self.batching.label}"

    @property
    def description(self) -> str:
        """The name in words, for a reader who has not learned ``i2-b1-dyn-0us``."""
        kind = f" on the {self.instance_kind.removeprefix('KIND_')}" if self.instance_kind else ""
        return f"{counted(self.instance_count, 'instance')}{kind}, max batch {self.max_batch_size}, {self.batching.description}"

    def override(self, base_config: Mapping[str, Any]) -> dict[str, Any]:
        """The model's config with this variant's settings in place of its own."""
        config = copy.deepcopy(dict(base_config))
        groups = config.get("instance_group") or [{}]
        group = {key: groups[0][key] for key in ("kind", "gpus") if groups[0].get(key)}
        if self.instance_kind:
            group["kind"] = self.instance_kind
            if self.instance_kind != "KIND_GPU":
                group.pop("gpus", None)
        config["instance_group"] = [dict(group, count=self.instance_count)]
        config["max_batch_size"] = self.max_batch_size
        if self.batching.enabled:
            batching: dict[str, Any] = {
                "max_queue_delay_microseconds": str(round(self.batching.max_queue_delay_seconds * 1e6)),
            }
            if self.max_batch_size > 1:
                batching["preferred_batch_size"] = [self.max_batch_size]
            config["dynamic_batching"] = batching
        else:
            config.pop("dynamic_batching", None)
        return config


@dataclass(frozen=True)
class SearchSpace:
    """The grid of the flags; :attr:`axes` orders it for the guided search's neighbours."""

    instance_counts: tuple[int, ...]
    max_batch_sizes: tuple[int, ...]
    batchings: tuple[Batching, ...]
    instance_kinds: tuple[str | None, ...] = (None,)

    @property
    def axes(self) -> tuple[tuple[Any, ...], ...]:
        return (self.instance_counts, self.instance_kinds, self.max_batch_sizes, self.batchings)

    def variant(self, index: Sequence[int]) -> Variant:
        count, kind, batch, batching = (axis[i] for axis, i in zip(self.axes, index))
        return Variant(count, kind, batch, batching)

    def indexes(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(len(axis)) for axis in self.axes)))

    def variants(self) -> list[Variant]:
        return [self.variant(index) for index in self.indexes()]


def batchings(dynamic: Sequence[bool], queue_delays_seconds: Sequence[float]) -> tuple[Batching, ...]:
    options: list[Batching] = []
    for enabled in dynamic:
        if enabled:
            options += [Batching(True, delay) for delay in queue_delays_seconds]
        else:
            options.append(Batching(False))
    return tuple(dict.fromkeys(options))


def config_pbtxt(config: Mapping[str, Any]) -> str:
    """Triton's JSON model config as the protobuf text a repository's config.pbtxt holds."""
    from google.protobuf import json_format, text_format  # noqa: PLC0415 - only when writing one
    from tritonclient.grpc import model_config_pb2  # noqa: PLC0415

    message = model_config_pb2.ModelConfig()
    json_format.ParseDict(dict(config), message, ignore_unknown_fields=True)
    return str(text_format.MessageToString(message))


def write_config(out_repository: str | Path, model: str, config: Mapping[str, Any]) -> Path:
    """``DIR/<model>/config.pbtxt``; the version directories stay in the user's repository."""
    path = Path(out_repository) / model / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_pbtxt(config), encoding="utf-8")
    return path
