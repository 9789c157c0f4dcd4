"""One step of a schedule placed from the one before (scheduler/demand/schedule_placer.py), on a
hand-made fleet: the step's devices, and its moves replayed make-before-break."""

import numpy as np

from gpupack.scheduler.demand.schedule_placer import Drain, Placer
from gpupack.scheduler.demand.series import Fleet, SeriesOption

DEVICES = 6


def placer(utilisation):
    """One copy of each model costs 10% of the memory, 5% of the bandwidth and its utilisation in
    each of two steps; every device has room for 100% of each."""
    costs = [np.array([[0.1, 0.1], u, [0.05, 0.05]]) for u in utilisation]
    chosen = [SeriesOption(f"m{m}", None, 1, 1.0, np.zeros(2), c) for m, c in enumerate(costs)]
    fleet = Fleet(tuple(f"gpu{d}" for d in range(DEVICES)), np.ones((DEVICES, 3)), np.zeros((DEVICES, 3)))
    return Placer(chosen, costs, fleet), np.stack(costs)


def replay(before, step, cost):
    """Each move in the order given, the arriving copy counted before the leaving one goes, each
    copy at the larger of its two steps' costs: no device over 100% on the way, and the step reached."""
    passing = cost.max(axis=2)
    holds = {d: {m for m, ds in enumerate(before) if d in ds} for d in range(DEVICES)}
    for move in step.moves:
        m = int(move.model.removeprefix("m"))
        if move.target is not None:
            target = int(move.target.removeprefix("gpu"))
            holds[target].add(m)
            assert np.all(passing[sorted(holds[target])].sum(axis=0) <= 1 + 1e-9), f"{move} overloads {move.target}"
        if move.source is not None:
            holds[int(move.source.removeprefix("gpu"))].discard(m)
    after = {d: {m for m, ds in enumerate(step.devices) if d in ds} for d in range(DEVICES)}
    assert {d: ms for d, ms in holds.items() if ms} == {d: ms for d, ms in after.items() if ms}
    for ms in after.values():
        assert np.all(cost[sorted(ms), :, 1].sum(axis=0) <= 1 + 1e-9), "a device over 100% in the step"


def test_a_quiet_step_drains_devices_onto_those_that_copies_leave():
    # Four models fall from step 0 to step 1, one rises: the step's copies need a single device's
    # utilisation (99%), yet each device holds what was busy in step 0 until its copies leave.
    utilisation = [[0.35, 0.15], [0.15, 0.3], [0.43, 0.16], [0.24, 0.12], [0.39, 0.26]]
    before = ((1, 3), (1, 2), (0,), (0, 2), (3,))
    place, cost = placer(utilisation)
    step = place.next(before, np.array([1, 1, 1, 1, 1]), 1, 10, Drain.ALL)
    assert step.device_count == 2, "a third device is left a quarter full"
    assert len(step.moves) <= 10
    replay(before, step, cost)
