"""A configuration search's progress on disk, so ``--resume`` continues it after a kill.

Rewritten whole (write, fsync, rename) after every point, so a ``kill -9`` at any instant leaves
the last complete state. It also names the model whose variant may be loaded right now: a
resumed run unloads it first, restoring the server as the search found it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from gpupack.errors import InputError
from gpupack.profiler.rank import MeasuredConfig
from gpupack.profiler.sampler import Peaks
from gpupack.profiler.stats import Latencies, PointResult, PointStatus, ServerLatency
from gpupack.profiler.variants import Variant

_VERSION = 1


class Checkpoint:
    def __init__(self, path: str | Path, settings: dict[str, Any]) -> None:
        self.path = Path(path)
        self.settings = settings  # what the search was asked: a resume must ask the same
        self.baseline: Peaks | None = None
        self.base_configs: dict[str, dict] = {}  # model -> its own config, as the server read it
        self.configs: dict[str, dict[str, dict]] = {}  # model -> variant name -> record
        self.loaded: str | None = None  # the model whose variant may be loaded now

    @classmethod
    def resume(cls, path: str | Path, settings: dict[str, Any]) -> "Checkpoint":
        checkpoint = cls(path, settings)
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise InputError("no checkpoint to resume from (run without --resume first)", path=str(path)) from e
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the checkpoint: {e}", path=str(path)) from e
        if document.get("version") != _VERSION:
            raise InputError("checkpoint of another gpupack version", path=str(path), field="version")
        for key, value in settings.items():
            if document["settings"].get(key) != value:
                raise InputError(f"the checkpoint was made with {key} = {document['settings'].get(key)!r}, "
                                 f"not {value!r}: resume with the same settings", path=str(path), field=key)
        if document.get("baseline") is not None:
            checkpoint.baseline = Peaks(**document["baseline"])
        checkpoint.base_configs = document.get("base_configs", {})
        checkpoint.configs = document.get("configs", {})
        checkpoint.loaded = document.get("loaded")
        return checkpoint

    def record(self, model: str, variant: Variant) -> MeasuredConfig | None:
        """The variant as far as it was measured before, or None if it was never started."""
        raw = self.configs.get(model, {}).get(variant.name)
        if raw is None:
            return None
        return MeasuredConfig(variant, raw["config"], [_point(p) for p in raw["points"]], raw.get("failure"),
                              raw.get("stopped"))

    def is_done(self, model: str, variant: Variant) -> bool:
        return bool(self.configs.get(model, {}).get(variant.name, {}).get("done"))

    def store(self, model: str, measured: MeasuredConfig, *, done: bool) -> None:
        self.configs.setdefault(model, {})[measured.name] = {
            "config": measured.config, "points": [dataclasses.asdict(p) for p in measured.points],
            "failure": measured.failure, "stopped": measured.stopped, "done": done,
        }
        self.save()

    def save(self) -> None:
        document = {
            "version": _VERSION, "settings": self.settings,
            "baseline": dataclasses.asdict(self.baseline) if self.baseline is not None else None,
            "base_configs": self.base_configs, "configs": self.configs, "loaded": self.loaded,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(self.path.name + ".tmp")
        with staging.open("w", encoding="utf-8") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self.path)


def _point(raw: dict[str, Any]) -> PointResult:
    values = dict(raw)
    values["status"] = PointStatus(values["status"])
    values["latencies"] = Latencies(**values["latencies"]) if values.get("latencies") else None
    values["server_latency"] = ServerLatency(**values["server_latency"]) if values.get("server_latency") else None
    values["errors"] = tuple(values.get("errors", ()))
    return PointResult(**values)
