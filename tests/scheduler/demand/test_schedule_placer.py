"""One step of a schedule placed from the one before (scheduler/demand/schedule_placer.py), on a
hand-made fleet: the step's devices, and its moves replayed make-before-break."""

import numpy as np

from gpupack.scheduler.demand.schedule_placer import Drain, Placer
from gpupack.scheduler.demand.series import Fleet, SeriesOption

DEVICES = 6


def placer(utilisation):
    """One copy of each model costs 10% of the memory, 5% of the bandwidth and its utilisation in
    each step; every device has room for 100% of each."""
    costs = [np.array([[0.1] * len(u), u, [0.05] * len(u)]) for u in utilisation]
    chosen = [SeriesOption(f"m{m}", None, 1, 1.0, np.zeros(len(u)), c) for m, (u, c) in enumerate(zip(utilisation, costs))]
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


def test_a_deep_drain_goes_on_past_devices_that_cannot_be_emptied():
    # The five emptiest devices each hold a copy at 55% that fits beside no other; the sixth holds
    # two at 30% that fit beside any of them. A drain gives up after five devices; a deep one does not.
    utilisation = [[0.55, 0.55]] * 5 + [[0.3, 0.3]] * 2
    before = ((0,), (1,), (2,), (3,), (4,), (5,), (5,))
    place, cost = placer(utilisation)
    assert place.next(before, np.ones(7, dtype=int), 1, 10, Drain.ALL).device_count == 6
    step = place.next(before, np.ones(7, dtype=int), 1, 10, Drain.DEEP)
    assert step.device_count == 5
    replay(before, step, cost)


def test_a_device_full_only_at_the_next_step_opens_no_device_ahead_of_it():
    # gpu0's two copies fit in step 1 (90%) but not in step 2 (120%), and no open device has room:
    # step 1 keeps two devices, and step 2 relieves gpu0 when it must.
    utilisation = [[0.45, 0.45, 0.6], [0.45, 0.45, 0.6], [0.9, 0.9, 0.9]]
    before = ((0,), (0,), (1,))
    place, cost = placer(utilisation)
    step = place.next(before, np.ones(3, dtype=int), 1, 10, Drain.ALL)
    assert step.device_count == 2, "a device opened in step 1 for demand that comes in step 2"
    replay(before, step, cost)
    after = place.next(step.devices, np.ones(3, dtype=int), 2, 10, Drain.ALL)
    assert after.device_count == 3


def test_a_deep_drain_moves_a_smaller_copy_aside_to_make_room():
    # Four devices at 30%, 90% (50% + 40%), 55% and 20% of their utilisation, 195% in all. Drains
    # that only move copies where they fit stop at three devices; making room for a copy that fits
    # nowhere, by moving a smaller one from where it would fit to a third device, gets two.
    utilisation = [[u, u] for u in (0.4, 0.2, 0.5, 0.4, 0.15, 0.3)]
    before = ((2,), (3,), (1,), (1,), (2,), (0,))
    place, cost = placer(utilisation)
    assert place.next(before, np.ones(6, dtype=int), 1, 10, Drain.ALL).device_count == 3
    step = place.next(before, np.ones(6, dtype=int), 1, 10, Drain.DEEP)
    assert step.device_count == 2
    replay(before, step, cost)


def test_a_copy_loaded_in_the_step_is_drained_without_a_move_of_its_own():
    # m0 leaves gpu0 (one copy too many) and a new copy of m1 arrives: the two moves the limit
    # allows. m1 fits beside what gpu0 holds after, not beside all it held too, so it is loaded on
    # a third device first; loading it on gpu0 instead is the same one move, once m0 has left.
    utilisation = [[0.5, 0.3], [0.4, 0.4], [0.2, 0.2], [0.5, 0.5]]
    before = ((0, 1), (), (0,), (1,))
    place, cost = placer(utilisation)
    step = place.next(before, np.ones(4, dtype=int), 1, 2, Drain.ALL)
    assert step.device_count == 2, "the new copy keeps a device of its own"
    assert len(step.moves) == 2
    replay(before, step, cost)
