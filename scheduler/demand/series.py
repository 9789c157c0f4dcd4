"""One placement for a demand series: copies, configurations and devices that serve every step's
demand with every device within every limit at every step (vector packing over the steps).

A copy costs what the demand plan says it costs (see :mod:`cost`), applied at every step: its
configuration's memory whatever the rate, utilisation and bandwidth interpolated at the rate it
serves in that step. A model's copies split each step's demand evenly and sit on distinct devices,
and a model has as many copies as its busiest step needs. So a copy is a vector of (resource, step)
and a device is full when any resource in any step is: models busy at different steps share a
device that their peaks added up would not fit on.

Each model takes one configuration for the whole series, chosen by pricing its volume against the
fleet's busiest (resource, step) cells, and the copies are packed first-fit decreasing; the
plan's lower bound is the busiest cell's volume (the peak of the sum), or the most copies above
half a device in one cell, or the most copies of one model, or a priced mix of the resources that
makes each model pay for one configuration across them all. Packing stops at a deadline with the
best complete placement so far.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from gpupack import timing
from gpupack.demand_series import DemandSeries
from gpupack.domain import Resource
from gpupack.model_configs import POINT_RESOURCES, ModelConfig
from gpupack.profiles import Profile
from gpupack.scheduler.demand.cost import capacity_per_second, copy_peaks_at
from gpupack.scheduler.packing.problem import InfeasibleError, PlacementProblem
from gpupack.timing import Deadline
from gpupack.units import counted

RESOURCES = (Resource.GPU_MEMORY, *POINT_RESOURCES)
SHARPER_PRICES = (1, 2, 4)
TOLERANCE = 1e-9
# Prices for the priced bound: every mix of the resources in steps of 1/PRICE_GRID.
PRICE_GRID = 10


@dataclass(frozen=True)
class SeriesOption:
    model: str
    config: ModelConfig
    copies: int
    capacity_per_second: float  # of one copy, within the budget
    rates_per_copy: np.ndarray  # [step]
    cost: np.ndarray  # [resource, step]: one copy


@dataclass(frozen=True)
class Fleet:
    """Where copies go: each device's room per resource (its limit less the server's baseline;
    infinite for a resource the plan does not limit), from the base problem's devices."""

    names: tuple[str, ...]
    room: np.ndarray  # [device, resource]
    baseline: np.ndarray  # [device, resource]


@dataclass(frozen=True)
class SeriesPlan:
    chosen: tuple[SeriesOption, ...]  # one per model, in profile order
    devices: tuple[tuple[int, ...], ...]  # per model: the fleet devices its copies sit on
    fleet: Fleet
    lower_bound: int
    stopped_early: bool = False  # the deadline came before every packing was tried

    @property
    def device_count(self) -> int:
        return len({d for ds in self.devices for d in ds})

    def used(self) -> list[int]:
        return sorted({d for ds in self.devices for d in ds})

    def loads(self) -> np.ndarray:
        """[device, resource, step]: what the copies use, the server's baseline left out."""
        steps = self.chosen[0].cost.shape[1] if self.chosen else 0
        load = np.zeros((len(self.fleet.names), len(RESOURCES), steps))
        for option, devices in zip(self.chosen, self.devices):
            for d in devices:
                load[d] += option.cost
        return load


def fleet_of(base: PlacementProblem, limited: frozenset[Resource]) -> Fleet:
    room = np.array([[base.limit(d, r) - base.baseline(d.name, r) if r in limited else math.inf for r in RESOURCES]
                     for d in base.devices])
    baseline = np.array([[base.baseline(d.name, r) for r in RESOURCES] for d in base.devices])
    return Fleet(tuple(d.name for d in base.devices), room, baseline)


def series_options(profile: Profile, series: DemandSeries,
                   min_copies: Mapping[str, int] | None = None) -> list[list[SeriesOption]]:
    """Per profiled model, each configuration with the copies its busiest step needs; raises
    :class:`InfeasibleError` naming a model no configuration serves."""
    per_model = []
    for model in profile.models:
        rates = np.array(series.rates_per_second.get(model.model, (0.0,) * series.steps), dtype=float)
        budget = series.latency_p99_seconds.get(model.model)
        peak = float(rates.max(initial=0.0))
        options = []
        for config in profile.configs_of(model):
            capacity = capacity_per_second(config, budget)
            if capacity <= 0 and peak > 0:
                continue
            copies = max((min_copies or {}).get(model.model, 1), math.ceil(peak / capacity - 1e-9) if capacity > 0 else 1)
            options.append(SeriesOption(model.model, config, copies, capacity, rates / copies,
                                        copy_cost(config, rates / copies)))
        if not options:
            served = f"a peak of {peak:g}/s" + (f" within p99 {budget * 1000:g} ms" if budget else "")
            raise InfeasibleError(f"model {model.model}: no configuration serves {served}")
        per_model.append(options)
    return per_model


def copy_cost(config: ModelConfig, rates_per_copy: np.ndarray) -> np.ndarray:
    """[resource, step]: one copy serving each step's rate."""
    peaks = copy_peaks_at(config, rates_per_copy)
    return np.stack([peaks.get(r, np.zeros(len(rates_per_copy))) for r in RESOURCES])


def plan_series(options: Sequence[Sequence[SeriesOption]], fleet: Fleet,
                seeds: Sequence[Mapping[str, str]] = (), deadline: Deadline | None = None) -> SeriesPlan:
    """The fewest devices found over the pricings tried and the ``seeds`` (model -> configuration,
    as another plan chose them), each packed first-fit and best-fit, until the ``deadline`` (the
    best complete packing so far then, at least one); raises :class:`InfeasibleError`."""
    scale = _scale(fleet)
    volumes = [[o.copies * o.cost / scale for o in mine] for mine in options]
    least = sum((np.min(np.stack(v), axis=0) for v in volumes), np.zeros_like(scale))
    bound = int(np.maximum(_bounds(options, scale, [[(o.copies, o.cost) for o in mine] for mine in options]),
                           _priced_bound([np.stack(v) for v in volumes])).max(initial=0))
    prices = [np.ones_like(least)] + [(least / max(float(least.max()), 1e-12)) ** k for k in SHARPER_PRICES]
    choices = [tuple(mine[int(np.argmin([float((v * price).sum()) for v in vs]))] for mine, vs in zip(options, volumes))
               for price in prices]
    for seed in seeds:
        choices.append(tuple(next((o for o in mine if o.config.name == seed.get(o.model)), mine[0]) for mine in options))
    best: SeriesPlan | None = None
    # Models with the most copies first, after every packing biggest first: copies of one model need
    # distinct devices, and placed last they open devices the rest no longer fill (bench/time_plans.py:
    # 85 devices rather than 100 on 100 models; on 1,000 the biggest-first packings win, 722 against 738).
    tries = [(chosen, best_fit, copies_first) for copies_first in (False, True) for chosen in choices
             for best_fit in (False, True)]
    packing_seconds = 0.0
    for chosen, best_fit, copies_first in tries:
        # Another packing is tried only when it would end before the deadline.
        if best is not None and (best.device_count <= bound or
                                 (deadline is not None and deadline.remaining() < packing_seconds)):
            best = dataclasses.replace(best, stopped_early=best.device_count > bound)
            break
        started = timing.clock()
        devices = pack(chosen, fleet, best_fit, copies_first)
        packing_seconds = max(packing_seconds, timing.clock() - started)
        if devices is not None and (best is None or len({d for ds in devices for d in ds}) < best.device_count):
            best = SeriesPlan(chosen, devices, fleet, bound)
    if best is None:
        raise InfeasibleError(f"no packing of {counted(len(options), 'model')} into "
                              f"{counted(len(fleet.names), 'device')} holds every limit at every step")
    return best


def step_choices(options: Sequence[Sequence[SeriesOption]]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per model and configuration: the copies each step alone needs, and one copy's
    [resource, step] cost at them (what a plan per step may use)."""
    per_step = []
    for mine in options:
        choices = []
        for o in mine:
            rates = o.rates_per_copy * o.copies
            copies = np.maximum(1, np.ceil(rates / o.capacity_per_second - 1e-9)) if o.capacity_per_second > 0 \
                else np.ones_like(rates)
            choices.append((copies, copy_cost(o.config, rates / copies)))
        per_step.append(choices)
    return per_step


def step_volumes(choices: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], fleet: Fleet) -> list[np.ndarray]:
    """Per model, [configuration, resource, step]: the share of the largest device its copies take
    (0 for a resource nothing limits)."""
    scale = _scale(fleet)
    return [np.stack([n * c / scale for n, c in mine]) for mine in choices]


def step_bounds(options: Sequence[Sequence[SeriesOption]], fleet: Fleet,
                per_step: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> np.ndarray:
    """[step]: the devices no plan of each step alone can do without, each configuration with the
    copies that step needs (``per_step``, :func:`step_choices`: what a schedule may use): the
    bounds of :func:`_bounds`, or the priced bound of :func:`_priced_bound`, whichever is higher."""
    return np.maximum(_bounds(options, _scale(fleet), per_step), _priced_bound(step_volumes(per_step, fleet)))


def _priced_bound(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """[step]: the most, over prices p on the resources (p >= 0, summing to 1), of the sum over
    models of their cheapest configuration's priced volume. On D devices every resource's volume is
    at most D, so any priced mix of them is too, and each model pays at least its cheapest price:
    a bound that, unlike the busiest resource's least volume, makes each model pick one
    configuration for all resources at once (the LP relaxation's dual, on a grid of prices)."""
    if not volumes:
        return np.zeros(0, dtype=int)
    resources = volumes[0].shape[1]
    grid = np.array([p for p in itertools.product(range(PRICE_GRID + 1), repeat=resources) if sum(p) == PRICE_GRID],
                    dtype=float) / PRICE_GRID
    priced = np.zeros((len(grid), volumes[0].shape[2]))
    for volume in volumes:  # [option, resource, step]
        priced += np.einsum("pr,ort->pot", grid, volume).min(axis=1)
    return np.ceil(priced.max(axis=0) - 1e-6).astype(int)


def _bounds(options: Sequence[Sequence[SeriesOption]], scale: np.ndarray,
            choices: Sequence[Sequence[tuple[np.ndarray | int, np.ndarray]]]) -> np.ndarray:
    """[step]: the busiest (resource) cell's least volume; or the most copies above half a device
    in one cell, which cannot share one; or the most copies one model needs."""
    steps = options[0][0].cost.shape[1] if options else 0
    least = np.zeros((len(RESOURCES), steps))
    big = np.zeros((len(RESOURCES), steps))
    copies = np.zeros(steps)
    for mine in choices:
        least += np.min(np.stack([np.asarray(n) * c / scale for n, c in mine]), axis=0)
        big += np.min(np.stack([np.asarray(n) * (c / scale > 0.5 + 1e-9) for n, c in mine]), axis=0)
        copies = np.maximum(copies, np.min(np.stack([np.broadcast_to(n, (steps,)) for n, _ in mine]), axis=0))
    return np.maximum.reduce([np.ceil(least.max(axis=0) - 1e-6), big.max(axis=0), copies]).astype(int)


def pack(chosen: Sequence[SeriesOption], fleet: Fleet, best_fit: bool,
         copies_first: bool = False) -> tuple[tuple[int, ...], ...] | None:
    """First-fit (or best-fit) decreasing over (resource, step) vectors (``copies_first``: models
    with the most copies first, then the biggest), a model's copies on
    distinct devices; None when the fleet runs out."""
    scale = _scale(fleet)
    slack = fleet.room[:, :, None] + TOLERANCE * np.maximum(np.abs(fleet.room[:, :, None]), 1.0)
    load = np.zeros((len(fleet.names), len(RESOURCES), chosen[0].cost.shape[1] if chosen else 0))
    size = [float((o.cost / scale).max(initial=0.0)) for o in chosen]
    order = sorted(range(len(chosen)), key=lambda m: (-chosen[m].copies if copies_first else 0, -size[m]))
    placed: list[tuple[int, ...]] = [()] * len(chosen)
    opened = 0
    for m in order:
        option = chosen[m]
        # Devices past those opened are empty: the next few are checked first, every one if they fall short.
        free: np.ndarray = np.array([], dtype=int)
        for seen in dict.fromkeys((min(len(fleet.names), opened + option.copies), len(fleet.names))):
            free = np.flatnonzero(np.all(load[:seen] + option.cost[None] <= slack[:seen], axis=(1, 2)))
            if len(free) >= option.copies:
                break
        if len(free) < option.copies:
            return None
        if best_fit:  # the open devices left with the least room, then empty ones
            residual = np.where(np.isfinite(slack[free]), slack[free] - load[free] - option.cost[None], 0.0) / scale
            tightness = np.where(free < opened, residual.sum(axis=(1, 2)), np.inf)
            free = free[np.argsort(tightness, kind="stable")]
        devices = tuple(sorted(int(d) for d in free[:option.copies]))
        opened = max(opened, devices[-1] + 1)
        load[list(devices)] += option.cost
        placed[m] = devices
    return tuple(placed)


def _scale(fleet: Fleet) -> np.ndarray:
    """[resource, 1]: the largest device's room, to compare resources (1 where unlimited)."""
    room = np.where(np.isfinite(fleet.room), fleet.room, 0.0).max(axis=0)
    return np.where(room > 0, room, np.inf)[:, None]
