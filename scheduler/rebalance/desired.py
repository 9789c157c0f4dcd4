"""The desired state: which models the fleet should serve, and where, kept durably.

Planning only sees what is loaded now, so without a record a model whose only copy was on a
server that crashed (and came back empty, or not at all) would simply drop out of the fleet. The
record is a JSON file in the state directory (``desired.json``; in Kubernetes the state directory
is a volume beside the Lease, see docs/rebalancing.md), replaced atomically, written before every
step (the step's model desired on its source *and* target, so that a crash mid-step loses
neither) and after every applied plan.

What the servers report updates it: a model seen on servers that answer is desired where it is
seen, plus where it was on servers that are down; a model seen nowhere keeps its last entry, and
the reconciler reloads it. To retire a model, unload it and delete its entry from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from gpupack.errors import GpupackError
from gpupack.scheduler.rebalance.current import FleetView

DESIRED_FILE_NAME = "desired.json"


class DesiredStateError(GpupackError):
    pass


@dataclass(frozen=True, order=True)
class Copy:
    server: str
    device: str


Desired = Mapping[str, tuple[Copy, ...]]  # model -> where its copies should be


def observed(desired: Desired, fleet: FleetView) -> Desired:
    """``desired`` updated with what the servers that answered report (see the module's rule)."""
    seen: dict[str, set[Copy]] = {}
    for m in fleet.models:
        seen.setdefault(m.model, set()).add(Copy(m.server, m.device))
    updated = {model: copies for model, copies in desired.items() if model not in seen}
    for model, copies in seen.items():
        kept_on_down = {c for c in desired.get(model, ()) if c.server in fleet.down}
        updated[model] = tuple(sorted(copies | kept_on_down))
    return MappingProxyType(dict(sorted(updated.items())))


def with_copy(desired: Desired, model: str, copy: Copy) -> Desired:
    """Before a step: the model is desired at its target too, until the step has finished."""
    return MappingProxyType({**desired, model: tuple(sorted({*desired.get(model, ()), copy}))})


def ready_copies(fleet: FleetView) -> dict[str, int]:
    copies: dict[str, set[Copy]] = {}
    for m in fleet.models:
        copies.setdefault(m.model, set()).add(Copy(m.server, m.device))
    return {model: len(c) for model, c in copies.items()}


def lost(desired: Desired, fleet: FleetView) -> list[str]:
    """Models the fleet should serve that no server that answered has ready."""
    ready = ready_copies(fleet)
    return sorted(model for model in desired if not ready.get(model))


class DesiredStateFile:
    """``desired.json`` in the state directory: read whole, replaced whole (write, fsync, rename)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DESIRED_FILE_NAME

    def read(self) -> Desired:
        if not self.path.exists():
            return MappingProxyType({})
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            models = {model: tuple(sorted(Copy(c["server"], c["device"]) for c in copies))
                      for model, copies in document["models"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DesiredStateError(f"{self.path}: not a desired state written by gpupack ({e}); "
                                    "move it away to start from what the servers report") from e
        return MappingProxyType(models)

    def write(self, desired: Desired, at_seconds: float) -> None:
        document = {"written_at_seconds": at_seconds,
                    "models": {model: [{"server": c.server, "device": c.device} for c in copies]
                               for model, copies in sorted(desired.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".desired-", suffix=".json")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as e:
            raise DesiredStateError(f"cannot write the desired state {self.path}: {e.strerror}") from e
