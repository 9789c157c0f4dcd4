"""A schedule ends by its deadline: the steps to come are reserved what placing them undrained has
cost (measured as the schedule goes, with a margin), and when the time left cannot place every step
even undrained, the schedule plans runs of steps as one (where their bounds differ least), or keeps
the static plan. Time is a clock
that moves only when a step is placed (three seconds with every drain, one without), so the same
thing happens on any machine."""

import json
import re

import numpy as np

from gpupack import timing
from gpupack.scheduler.demand import schedule_report
from gpupack.scheduler.demand.schedule import _runs, schedule_series
from gpupack.scheduler.demand.schedule_placer import Placer
from gpupack.timing import Deadline

from tests.scheduler.demand.test_schedule import replay_transitions
from tests.scheduler.demand.test_schedule_time_limit import MOVES, planned, three_time_zones, work_clock  # noqa: F401
from tests.scheduler.demand.test_series import model_yaml, write
from tests.scheduler.demand.test_series_time_limit import check_schedule


def two_hour_steps(tmp_path):
    """The three time zones' days in 2-hour steps, each rate held for two steps: planning two steps
    as one loses little."""
    models, series = [], {}
    for zone, day in enumerate(([100, 60, 10, 10, 10, 40], [40, 100, 60, 10, 10, 10])):
        for k in range(6):
            name = f"z{zone}m{k}"
            models.append(model_yaml(name, 2, [(50, 0.05, 0.45, 0.2), (100, 0.09, 0.8, 0.4)]))
            series[name] = [rate for rate in day for _ in range(2)] * 3
    return write(tmp_path, models, series, step="2h")


def test_a_schedule_with_too_little_time_for_every_step_ends_by_its_deadline(tmp_path, work_clock):  # noqa: F811
    profile, series_path = three_time_zones(tmp_path)
    outcome, options = planned(profile, series_path)
    deadline = Deadline.after(6)  # 18 steps: their 17 transitions take 17 s or more
    schedule = schedule_series(outcome.series, outcome.plan, options, MOVES, deadline)
    assert timing.clock() <= deadline.at, "the schedule ran past its deadline"
    assert [s.device_count for s in schedule.steps] == [outcome.result.device_count] * outcome.series.steps
    assert "every step keeps" in schedule.note, "the note says every step keeps the static plan"
    check_schedule(json.loads(schedule_report.render_json(outcome, schedule)), profile, series_path)


def test_a_schedule_short_of_time_plans_steps_together_and_ends_by_its_deadline(tmp_path, work_clock):  # noqa: F811
    profile, series_path = two_hour_steps(tmp_path)
    outcome, options = planned(profile, series_path)
    deadline = Deadline.after(30)  # 36 steps, 1 s each undrained: too little for every step (35 s), enough for every other
    schedule = schedule_series(outcome.series, outcome.plan, options, MOVES, deadline)
    assert timing.clock() <= deadline.at, "the schedule ran past its deadline"
    plans = int(re.match(r"the time limit left time for (\d+) plans of the 36 steps only: the fleet changes between "
                         r"them, each serving the busiest of its steps", schedule.note).group(1))
    assert 2 <= plans < 36
    assert sum(1 for step in schedule.steps[1:] if step.moves) <= plans - 1, "the fleet changes only between plans"
    assert schedule.gpu_hours < outcome.result.device_count * outcome.series.steps * 2, "fewer GPU-hours than static"
    document = json.loads(schedule_report.render_json(outcome, schedule))
    check_schedule(document, profile, series_path)
    replay_transitions(document, profile, MOVES)


def test_a_schedule_times_an_undrained_step_before_planning_steps_together(tmp_path, work_clock):  # noqa: F811
    """Drained steps cost 3 s, so the 35 left look out of reach of 70 s even undrained (at 0.9 of
    a drained step); one undrained step is timed instead (1 s), and every step is planned."""
    profile, series_path = two_hour_steps(tmp_path)
    outcome, options = planned(profile, series_path)
    deadline = Deadline.after(70)
    schedule = schedule_series(outcome.series, outcome.plan, options, MOVES, deadline)
    assert timing.clock() <= deadline.at, "the schedule ran past its deadline"
    assert "plans of the" not in schedule.note and "every step keeps" not in schedule.note, schedule.note
    document = json.loads(schedule_report.render_json(outcome, schedule))
    check_schedule(document, profile, series_path)
    replay_transitions(document, profile, MOVES)


def test_a_schedule_that_slows_down_midway_still_ends_by_its_deadline(tmp_path, monkeypatch):
    """The machine gets busy after the fourth step: every step from then on costs three times as much."""
    profile, series_path = two_hour_steps(tmp_path)
    outcome, options = planned(profile, series_path)
    now, placed, place = [0.0], [0], Placer.next

    def timed(self, before, copies, t, limit, drain):
        placed[0] += 1
        now[0] += (1.0 + int(drain)) * (3 if placed[0] > 4 else 1)
        return place(self, before, copies, t, limit, drain)

    monkeypatch.setattr(timing, "clock", lambda: now[0])
    monkeypatch.setattr(Placer, "next", timed)
    deadline = Deadline.after(80)  # enough for every step undrained at the first steps' pace
    schedule = schedule_series(outcome.series, outcome.plan, options, MOVES, deadline)
    assert timing.clock() <= deadline.at, "the schedule ran past its deadline"
    document = json.loads(schedule_report.render_json(outcome, schedule))
    check_schedule(document, profile, series_path)
    replay_transitions(document, profile, MOVES)


def test_steps_are_planned_together_where_that_adds_the_fewest_device_steps():
    # One resource; model a is busy at steps 0-1, model b at steps 2-3 (each needs 0.6 of a device
    # then, 0.1 otherwise), and steps 4-7 are quiet. A run holds each model at its busiest step in it.
    a = [0.6, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    b = [0.1, 0.1, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1]
    volumes = np.array([[a], [b]])
    assert _runs(volumes, 8).tolist() == list(range(8))
    assert _runs(volumes, 5).tolist() == [0, 2, 4, 6, 7], "equal neighbours first, the shorter run first"
    assert _runs(volumes, 3).tolist() == [0, 2, 4], "the quiet steps together"
    # Steps 0-1 with 2-3 would hold both at 0.6 (1.2 for four steps, 2.0 more than 0.7 each): the
    # busy runs join the quiet one instead (0.7 for six steps, 1.0 more).
    assert _runs(volumes, 2).tolist() == [0, 2]
    assert _runs(volumes, 1).tolist() == [0]
