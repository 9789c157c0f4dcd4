"""A schedule the time limit cuts short keeps the steps it placed: the steps before the cut follow
demand as a full search places them, the rest are placed without drains, and every step still
passes the tests' own step-by-step and move-by-move checks (no fall back to the static plan for
every step). Time is a clock that moves only when a step is placed (three seconds with every drain,
two with the first drains only, one without), so the cut comes at the same step on any machine."""

import json

import pytest

from gpupack import timing
from gpupack.demand_series import load_demand_series
from gpupack.profiles import load_profile
from gpupack.scheduler.constraints import ALL_RESOURCES, build_problem
from gpupack.scheduler.demand import schedule_report
from gpupack.scheduler.demand.schedule import schedule_series
from gpupack.scheduler.demand.schedule_placer import Placer
from gpupack.scheduler.demand.series import series_options
from gpupack.scheduler.demand.series_cli import solve_series
from gpupack.scheduler.devices_file import identical_devices
from gpupack.scheduler.packing.problem import Objective
from gpupack.timing import Deadline

from tests.scheduler.demand.test_schedule import replay_transitions
from tests.scheduler.demand.test_series import GIB, model_yaml, write
from tests.scheduler.demand.test_series_time_limit import check_schedule

MOVES = 6
DAYS = 3


def three_time_zones(tmp_path):
    """Twelve models in two time zones over three days of 4-hour steps: busy in turn, all quiet at night."""
    models, series = [], {}
    for zone, day in enumerate(([100, 60, 10, 10, 10, 40], [40, 100, 60, 10, 10, 10])):
        for k in range(6):
            name = f"z{zone}m{k}"
            models.append(model_yaml(name, 2, [(50, 0.05, 0.45, 0.2), (100, 0.09, 0.8, 0.4)]))
            series[name] = day * DAYS
    return write(tmp_path, models, series, step="4h")


def planned(profile_path, series_path):
    profile, series = load_profile(profile_path), load_demand_series(series_path)
    base = build_problem(profile.models, identical_devices(30, 16 * GIB).devices, profile.server_baseline, None,
                         limited=ALL_RESOURCES)
    outcome, _ = solve_series(profile, series, base, ALL_RESOURCES, (Objective.MIN_DEVICES,), Deadline.after(60))
    return outcome, series_options(profile, series, base.replicas)


@pytest.fixture
def work_clock(monkeypatch):
    """The clock moves by what placing a step costs: more, the more it drains."""
    now = [0.0]
    place = Placer.next

    def timed(self, before, copies, t, limit, drain):
        now[0] += 1.0 + int(drain)
        return place(self, before, copies, t, limit, drain)

    monkeypatch.setattr(timing, "clock", lambda: now[0])
    monkeypatch.setattr(Placer, "next", timed)


def test_a_schedule_cut_short_keeps_the_steps_it_placed_and_every_step_holds(tmp_path, work_clock):
    profile, series_path = three_time_zones(tmp_path)
    outcome, options = planned(profile, series_path)
    full = schedule_series(outcome.series, outcome.plan, options, MOVES)
    # Less than every step fully drained takes, more than every step undrained does.
    cut = schedule_series(outcome.series, outcome.plan, options, MOVES, Deadline.after(30))
    assert full.cut_short_at_step is None
    assert cut.cut_short_at_step is not None and 1 < cut.cut_short_at_step < outcome.series.steps
    k = cut.cut_short_at_step
    assert [s.device_count for s in cut.steps[:k]] == [s.device_count for s in full.steps[:k]], \
        "the steps before the cut are placed as the full search places them"
    assert full.gpu_hours <= cut.gpu_hours < outcome.result.device_count * 6 * DAYS * 4, \
        "fewer GPU-hours than the static plan, though more than the full search"
    assert f"Note: the time limit cut the search short at step {k}: from there on, devices are drained only as far " \
        "as the time left allows." in schedule_report.render_table(outcome, cut)
    document = json.loads(schedule_report.render_json(outcome, cut))
    assert document["cut_short_at_step"] == k
    check_schedule(document, profile, series_path)
    replay_transitions(document, profile, MOVES)

