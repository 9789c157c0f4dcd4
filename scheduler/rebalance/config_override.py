"""A profiled configuration as Triton sees it: the config override a copy loads with, and back.

The override edits the config Triton reports for the loaded model (inputs, outputs and backend
stay as the repository has them) in only what a :class:`ModelConfig` says: instance count, batch
size, dynamic batching and its queue delay. Reading a loaded config back matches it to the
profile's configurations the same way, so a copy's capacity is that of what is really loaded.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from gpupack.model_configs import ModelConfig

_MICROSECONDS = 1_000_000


def triton_override(loaded: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
    """The JSON config for ``TritonControl.load(model, override)`` that runs ``config``."""
    override = copy.deepcopy(dict(loaded))
    if config.instance_count is not None:
        groups = override.get("instance_group") or [{}]
        override["instance_group"] = [{**group, "count": config.instance_count} for group in groups]
    if config.max_batch_size is not None:
        override["max_batch_size"] = config.max_batch_size
    if config.dynamic_batching is False:
        override.pop("dynamic_batching", None)
    elif config.dynamic_batching or config.max_queue_delay_seconds is not None:
        batching = dict(override.get("dynamic_batching") or {})
        if config.max_queue_delay_seconds is not None:
            batching["max_queue_delay_microseconds"] = round(config.max_queue_delay_seconds * _MICROSECONDS)
        override["dynamic_batching"] = batching
    return override


def _agrees(loaded: Mapping[str, Any], config: ModelConfig) -> bool:
    groups = loaded.get("instance_group") or [{}]
    batching = loaded.get("dynamic_batching")
    delay = int((batching or {}).get("max_queue_delay_microseconds", 0)) / _MICROSECONDS
    return all((
        config.instance_count is None or int(groups[0].get("count", 1)) == config.instance_count,
        config.max_batch_size is None or int(loaded.get("max_batch_size", 0)) == config.max_batch_size,
        config.dynamic_batching is None or (batching is not None) == config.dynamic_batching,
        config.max_queue_delay_seconds is None or abs(delay - config.max_queue_delay_seconds) < 1e-6,
    ))


def loaded_config(loaded: Mapping[str, Any], configs: Sequence[ModelConfig]) -> ModelConfig | None:
    """The profiled configuration the loaded config runs (the most specific that agrees), or None."""
    return max((c for c in configs if _agrees(loaded, c)), key=_specificity, default=None)


def _specificity(config: ModelConfig) -> int:
    return sum(getattr(config, key) is not None
               for key in ("instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_seconds"))
