"""Which planned steps a run may take: few moves per run, and no model moved again too soon.

- :class:`Cooldowns` — when each model last moved, persisted so the next run (another process,
  maybe hours later) still respects it.
- :func:`admit` — at most ``max_moves``, none for a model still cooling down, and, because
  skipping a step can change what is safe after it, each admitted step re-checked against the
  state the admitted ones before it leave.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from gpupack.domain import Placement
from gpupack.scheduler.rebalance.locks import StateError
from gpupack.scheduler.rebalance.moves import check_order
from gpupack.scheduler.rebalance.steps import Budget, Step


class Cooldowns:
    """Per-model time of the last move, in a JSON file replaced atomically on every change."""

    def __init__(self, path: str | Path, cooldown_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StateError(f"cannot read the cooldown file {self.path}: {e}") from e
        if not isinstance(data, dict):
            raise StateError(f"cannot read the cooldown file {self.path}: not a JSON object")
        return {str(model): float(moved_at) for model, moved_at in data.items()}

    def remaining_seconds(self) -> Mapping[str, float]:
        """Models still cooling down and for how long."""
        now = self._clock()
        remaining = {model: moved_at + self.cooldown_seconds - now for model, moved_at in self._load().items()}
        return {model: seconds for model, seconds in remaining.items() if seconds > 0}

    def record_move(self, model: str) -> None:
        data = self._load()
        data[model] = self._clock()
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as e:
            raise StateError(f"cannot write the cooldown file {self.path}: {e.strerror}") from e


@dataclass(frozen=True)
class Admission:
    admitted: tuple[Step, ...]
    deferred: tuple[tuple[Step, str], ...]  # each step left for a later run, and why


def admit(
    current: Placement,
    steps: Sequence[Step],
    budget: Budget,
    max_moves: int | None,
    cooling_seconds: Mapping[str, float],
) -> Admission:
    """The steps this run may take, in plan order; the rest deferred with a reason."""
    admitted: list[Step] = []
    deferred: list[tuple[Step, str]] = []
    for step in steps:
        if max_moves is not None and len(admitted) >= max_moves:
            deferred.append((step, f"the limit of {max_moves} moves per run is reached"))
        elif step.model in cooling_seconds:
            deferred.append((step, f"{step.model} moved recently (cooldown {cooling_seconds[step.model]:.0f}s left)"))
        elif (problem := check_order(current, [*admitted, step], budget)) is not None:
            deferred.append((step, f"unsafe without a deferred step: {problem}"))
        else:
            admitted.append(step)
    return Admission(tuple(admitted), tuple(deferred))
