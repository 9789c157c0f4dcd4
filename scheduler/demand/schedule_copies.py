"""What each step of a schedule needs before any copy is placed: one configuration per model for
every step, and the copies of each model in each step, evened out so that no transition changes
more copies than a share of the move limit (copies a step will need are loaded ahead of it, copies
a step no longer needs are unloaded later)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gpupack.scheduler.demand.series import Fleet, SeriesOption, copy_cost, step_choices, step_volumes

# The powers of each step's resource prices tried when choosing the schedule's configurations.
STEP_PRICES = (1, 2)


def schedule_configs(options: Sequence[Sequence[SeriesOption]], fleet: Fleet,
                     static: Sequence[SeriesOption]) -> tuple[SeriesOption, ...]:
    """One configuration per model for every step, priced step by step: in each step, each
    resource at its share of that step's busiest one (squared, or not), so that a model takes what
    is cheap when its devices are scarce and does not pay for the series' busiest hour at 3 a.m.
    The static plan's choice competes; the least volume summed over the steps' busiest resources wins."""
    volumes = step_volumes(step_choices(options), fleet)  # per model: [option, resource, step]
    least = sum((v.min(axis=0) for v in volumes), np.zeros(volumes[0].shape[1:]))
    top = np.maximum(least.max(axis=0, keepdims=True), 1e-12)
    picks = [[int(np.argmin((v * (least / top) ** k).sum(axis=(1, 2)))) for v in volumes] for k in STEP_PRICES]
    picks.append([next(i for i, o in enumerate(mine) if o.config.name == s.config.name) for mine, s in zip(options, static)])
    best = min(picks, key=lambda pick: float(sum(v[i] for v, i in zip(volumes, pick)).max(axis=0).sum()))
    return tuple(mine[i] for mine, i in zip(options, best))


def copy_costs(chosen: Sequence[SeriesOption], copies: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per model: one copy's [resource, step] cost at each step's copies."""
    return tuple(copy_cost(o.config, o.rates_per_copy * o.copies / copies[m]) for m, o in enumerate(chosen))


def copies_within_moves(chosen: Sequence[SeriesOption], steps: int, limit: int) -> np.ndarray:
    """[model, step]: each step's copies, raised where a transition would change more than ``limit``."""
    need = np.array([[max(1, math.ceil(float(r) * o.copies / o.capacity_per_second - 1e-9)) if o.capacity_per_second > 0
                      else 1 for r in o.rates_per_copy] for o in chosen], dtype=int).reshape(len(chosen), steps)
    need = np.minimum(need, np.array([o.copies for o in chosen])[:, None])
    for t in range(steps - 1, 0, -1):  # load ahead what a step adds beyond the limit
        _even_out(need, t, limit, rising=True)
    for t in range(1, steps):  # unload later what a step drops beyond the limit
        _even_out(need, t, limit, rising=False)
    return need


def _even_out(need: np.ndarray, t: int, limit: int, rising: bool) -> None:
    while np.abs(need[:, t] - need[:, t - 1]).sum() > limit:
        change = need[:, t] - need[:, t - 1] if rising else need[:, t - 1] - need[:, t]
        if change.max() <= 0:
            return
        m = int(np.argmax(change))
        if rising:
            need[m, t - 1] += 1
        else:
            need[m, t] += 1
