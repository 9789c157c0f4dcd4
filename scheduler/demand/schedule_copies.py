"""What each step of a schedule needs before any copy is placed: one configuration per model for
every step, and the copies of each model in each step, kept through a step between two that need
more, and evened out so that no transition changes more copies than a share of the move limit
(copies a step will need are loaded ahead of it, copies a step no longer needs are unloaded later)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gpupack.scheduler.demand.series import Fleet, SeriesOption, copy_cost, step_volumes

# The powers of each step's resource prices tried when choosing the schedule's configurations.
STEP_PRICES = (1, 2)
# Rounds of changing one model's configuration at a time (a round that changes none ends them).
MAX_PASSES = 3


def schedule_configs(options: Sequence[Sequence[SeriesOption]], choices: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
                     fleet: Fleet, static: Sequence[SeriesOption]) -> tuple[SeriesOption, ...]:
    """One configuration per model for every step, priced step by step: in each step, each
    resource at its share of that step's busiest one (squared, or not), so that a model takes what
    is cheap when its devices are scarce and does not pay for the series' busiest hour at 3 a.m.
    ``choices``: each configuration's copies and costs per step (:func:`step_choices`).
    The static plan's choice competes; the least volume summed over the steps' busiest resources
    wins, then models change configuration while that needs fewer devices (:func:`_fewer_devices`)."""
    volumes = step_volumes(choices, fleet)  # per model: [option, resource, step]
    least = sum((v.min(axis=0) for v in volumes), np.zeros(volumes[0].shape[1:]))
    top = np.maximum(least.max(axis=0, keepdims=True), 1e-12)
    picks = [[int(np.argmin((v * (least / top) ** k).sum(axis=(1, 2)))) for v in volumes] for k in STEP_PRICES]
    picks.append([next(i for i, o in enumerate(mine) if o.config.name == s.config.name) for mine, s in zip(options, static)])
    best = min(picks, key=lambda pick: float(sum(v[i] for v, i in zip(volumes, pick)).max(axis=0).sum()))
    copies = [[np.minimum(np.broadcast_to(n, least.shape[1:]), o.copies) for (n, _), o in zip(per, mine)]
              for per, mine in zip(choices, options)]
    return tuple(mine[i] for mine, i in zip(options, _fewer_devices(best, volumes, copies)))


def _fewer_devices(pick: Sequence[int], volumes: Sequence[np.ndarray], copies: Sequence[Sequence[np.ndarray]]) -> list[int]:
    """``pick`` changed one model at a time while that lowers the devices the steps need at least:
    each step its busiest resource's volume, or the most copies one model has, which go on distinct
    devices. Priced by volume alone, a busy model took a configuration that needs 59 copies at its
    peak where another needs 50: 59 devices for a step whose bound is 50 (bench/time_plans.py, 100
    models: 1.208x the bound rather than 1.226x). Models with the most copies are tried first."""
    pick = list(pick)
    total = sum(v[i] for v, i in zip(volumes, pick))  # [resource, step]
    mine = np.stack([c[i] for c, i in zip(copies, pick)])  # [model, step]
    steps = np.arange(mine.shape[1])
    tried = sorted((m for m, c in enumerate(copies) if len(c) > 1), key=lambda m: -max(n.max() for n in copies[m]))
    stacked = {m: np.stack(copies[m]) for m in tried}  # [configuration, step]
    for _ in range(MAX_PASSES):
        changed, stale = False, True
        for m in tried:
            if stale:  # each step's two models with the most copies
                most = mine.argmax(axis=0)
                first, second = mine[most, steps], np.where(np.arange(len(mine))[:, None] == most, 0, mine).max(axis=0)
                stale = False
            others = np.where(most == m, second, first)
            rest = total - volumes[m][pick[m]]
            counts = np.maximum(np.ceil((rest + volumes[m]).max(axis=1) - 1e-6), np.maximum(others, stacked[m])).sum(axis=1)
            best = int(np.argmin(counts))
            if counts[best] < counts[pick[m]] - 1e-9:
                pick[m], total, mine[m], changed, stale = best, rest + volumes[m][best], copies[m][best], True, True
        if not changed:
            break
    return pick


def copy_costs(chosen: Sequence[SeriesOption], copies: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per model: one copy's [resource, step] cost at each step's copies."""
    return tuple(copy_cost(o.config, o.rates_per_copy * o.copies / copies[m]) for m, o in enumerate(chosen))


def copies_within_moves(chosen: Sequence[SeriesOption], steps: int, limits: np.ndarray) -> np.ndarray:
    """[model, step]: each step's copies, raised through one-step dips and where the transition into
    a step would change more than ``limits`` [step] allows (``limits[0]``, before the first step, is
    not read)."""
    rates = np.array([o.rates_per_copy * o.copies for o in chosen], dtype=float).reshape(len(chosen), steps)
    capacity = np.array([o.capacity_per_second for o in chosen], dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(capacity > 0, np.maximum(1, np.ceil(rates / capacity - 1e-9)), 1).astype(int)
    need = np.minimum(need, np.array([o.copies for o in chosen])[:, None])
    # A copy a model needs again the step after is kept through the step it is not needed: a tenth
    # of copy changes were such dips (100 models over eight seeds: 1.180x the bound rather than 1.189x;
    # kept through dips of two or three steps, 1.182x and 1.185x).
    if steps > 2:
        need[:, 1:-1] = np.maximum(need[:, 1:-1], np.minimum(need[:, :-2], need[:, 2:]))
    for t in range(steps - 1, 0, -1):  # load ahead what a step adds beyond the limit
        _even_out(need, t, int(limits[t]), rising=True)
    for t in range(1, steps):  # unload later what a step drops beyond the limit
        _even_out(need, t, int(limits[t]), rising=False)
    return need


def _even_out(need: np.ndarray, t: int, limit: int, rising: bool) -> None:
    """The copies changed into step ``t`` brought within ``limit``: the biggest rises are loaded a
    step ahead (``rising``), or the biggest drops unloaded a step later, a copy at a time off the
    biggest, the first model first among equals. Worked out at once, level by level: merged runs of
    steps change hundreds of copies a transition on 1,000 models, and a copy at a time took 0.3 s for
    48 runs of a week (14 ms so), 60 ms for its 168 steps (6-9 ms)."""
    change = need[:, t] - need[:, t - 1] if rising else need[:, t - 1] - need[:, t]
    excess = int(np.abs(change).sum()) - limit
    up = np.maximum(change, 0)
    if excess <= 0 or not up.any():
        return
    if excess >= up.sum():
        cut = up
    else:
        level, above = int(up.max()), 0  # the changes come down to level; above: the copies that takes
        while above + (at_level := int((up >= level).sum())) <= excess:
            above += at_level
            level -= 1
        cut = np.maximum(up - level, 0)
        cut[np.flatnonzero(up - cut == level)[:excess - int(cut.sum())]] += 1
    if rising:
        need[:, t - 1] += cut
    else:
        need[:, t] += cut
