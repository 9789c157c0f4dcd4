"""The lower bounds a series plan and a schedule are judged against are true bounds: on tiny fleets,
no placement found by trying them all needs fewer devices than the bound says (each step alone,
every model in any of its configurations with the copies the step needs, split evenly, on distinct
devices; memory paid whatever the rate, utilisation and bandwidth along the measured points)."""

import itertools
import math

from hypothesis import given, settings, strategies as st

from gpupack.demand_series import DemandSeries
from gpupack.profiles import load_profile
from gpupack.scheduler.constraints import ALL_RESOURCES, build_problem
from gpupack.scheduler.demand.series import fleet_of, series_options, step_bounds, step_choices
from gpupack.scheduler.devices_file import identical_devices

from tests.scheduler.demand.test_series import GIB, linear

ROOM = (15.0, 1.0, 1.0)  # 16 GiB less the 1 GiB server, in GiB; utilisation; bandwidth

configuration = st.tuples(st.sampled_from([1, 3, 5, 7, 9]), st.sampled_from([50, 100]),
                          st.floats(0.1, 0.95), st.floats(0.05, 0.95))
model = st.tuples(st.lists(configuration, min_size=1, max_size=2), st.lists(st.integers(0, 100), min_size=2, max_size=2))


def profile_yaml(models):
    text = "server_baseline: {peak_gpu_memory_bytes: 1GiB}\nmodels:\n"
    for m, (configs, _) in enumerate(models):
        text += f"  - model: m{m}\n    peak_gpu_memory_bytes: {configs[0][0]}GiB\n    configs:\n"
        for c, (memory, capacity, util, bandwidth) in enumerate(configs):
            text += (f"      - name: c{c}\n        peak_gpu_memory_bytes: {memory}GiB\n        points:\n"
                     f"          - {{throughput_per_second: {capacity}, latency_p99_seconds: 0.05, "
                     f"peak_gpu_utilization_ratio: {util}, peak_memory_bandwidth_utilization_ratio: {bandwidth}}}\n")
    return text


def fewest_devices(copies):
    """copies: (model, (memory GiB, utilisation, bandwidth)), at most six; every assignment tried."""
    for count in range(1, len(copies) + 1):
        for devices in itertools.product(range(count), repeat=len(copies)):
            used = [[0.0, 0.0, 0.0] for _ in range(count)]
            held = [set() for _ in range(count)]
            fits = True
            for (m, cost), d in zip(copies, devices):
                if m in held[d]:
                    fits = False
                    break
                held[d].add(m)
                used[d] = [u + c for u, c in zip(used[d], cost)]
            if fits and all(u <= r + 1e-9 for us in used for u, r in zip(us, ROOM)):
                return count
    raise AssertionError("a copy fits no device")


def step_optimum(models, t):
    best = math.inf
    for choice in itertools.product(*(configs for configs, _ in models)):
        copies = []
        for m, ((memory, capacity, util, bandwidth), (_, rates)) in enumerate(zip(choice, models)):
            n = max(1, math.ceil(rates[t] / capacity - 1e-9))
            rate = rates[t] / n
            copies += [(m, (memory, linear(rate, [capacity], [util]), linear(rate, [capacity], [bandwidth])))] * n
        best = min(best, fewest_devices(copies))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(model, min_size=1, max_size=3))
def test_every_step_bound_is_at_most_the_fewest_devices_any_placement_of_that_step_needs(tmp_path_factory, models):
    bounds = step_bound(tmp_path_factory.mktemp("bounds"), models)
    for t in range(2):
        assert bounds[t] <= step_optimum(models, t)

def step_bound(tmp_path, models):
    path = tmp_path / "profile.yaml"
    path.write_text(profile_yaml(models))
    profile = load_profile(path)
    series = DemandSeries(3600.0, {f"m{m}": tuple(float(r) for r in rates) for m, (_, rates) in enumerate(models)},
                          {f"m{m}": 0.1 for m in range(len(models))})
    base = build_problem(profile.models, identical_devices(8, 16 * GIB).devices, profile.server_baseline, None,
                         limited=ALL_RESOURCES)
    options = series_options(profile, series)
    return step_bounds(options, fleet_of(base, ALL_RESOURCES), step_choices(options))


def test_a_model_cheap_in_memory_or_in_utilisation_but_not_both_pays_for_one_configuration(tmp_path):
    """Three models, each 9 GiB at 10% busy or 1 GiB at 90% busy: no device holds two of either
    kind, so three need two devices; the least memory and the least utilisation taken apart would
    each fit on one."""
    models = [([(9, 100, 0.1, 0.1), (1, 100, 0.9, 0.1)], [100, 100])] * 3
    assert step_optimum(models, 0) == 2
    assert list(step_bound(tmp_path, models)) == [2, 2]
