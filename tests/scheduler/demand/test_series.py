"""`gpupack plan --demand-series`: one placement for every step, packed by the peak of the sum.

Every plan is checked step by step by `check_every_step`, written here from the profile and the
series alone: every step's demand served within each copy's capacity, copies on distinct devices,
and every device within every limit at every step."""

import json
import random

import numpy as np
import pytest
import yaml

from gpupack.app.cli import main

GIB = 2**30


def model_yaml(name, memory_gib, points):
    """points: (throughput/s, p99 seconds, utilisation ratio, bandwidth ratio)."""
    rows = "".join(f"          - {{throughput_per_second: {t}, latency_p99_seconds: {p}, peak_gpu_utilization_ratio: {u},"
                   f" peak_memory_bandwidth_utilization_ratio: {b}}}\n" for t, p, u, b in points)
    return (f"  - model: {name}\n    peak_gpu_memory_bytes: {memory_gib}GiB\n    configs:\n      - name: c\n"
            f"        peak_gpu_memory_bytes: {memory_gib}GiB\n        points:\n{rows}")


def write(tmp_path, models, series, step="1h", budgets="{default: 100ms}"):
    profile = tmp_path / "profile.yaml"
    profile.write_text("server_baseline: {peak_gpu_memory_bytes: 1GiB}\nmodels:\n" + "".join(models))
    path = tmp_path / "series.yaml"
    path.write_text(f"step: {step}\nlatency_p99_seconds: {budgets}\nseries:\n"
                    + "".join(f"  {m}: [{', '.join(str(r) for r in rates)}]\n" for m, rates in series.items()))
    return str(profile), str(path)


def plan(capsys, profile, series, *args):
    status = main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series,
                   "--format", "json", "--time-limit", "60s", *args])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


def linear(x, xs, ys):
    """The cost model stated in docs/demand.md, written again: straight lines from (0, 0) through the points."""
    xs, ys = [0.0, *xs], [0.0, *ys]
    if x >= xs[-1]:
        return ys[-1]
    k = next(k for k in range(1, len(xs)) if x <= xs[k])
    return ys[k - 1] + (ys[k] - ys[k - 1]) * (x - xs[k - 1]) / (xs[k] - xs[k - 1])


def check_every_step(document, profile_path, series_path, memory_bytes=16 * GIB):
    profile = yaml.safe_load(open(profile_path))
    series = yaml.safe_load(open(series_path))
    rates = {m: [float(str(r).removesuffix("/s")) for r in rs] for m, rs in series["series"].items()}
    steps = len(next(iter(rates.values())))
    baseline = 1 * GIB
    configs = {m["model"]: {c["name"]: c for c in m["configs"]} for m in profile["models"]}
    served = {m: [0.0] * steps for m in rates}
    for device in document["devices"]:
        models = [c["model"] for c in device["copies"]]
        assert len(models) == len(set(models)), f"{device['name']} holds two copies of a model"
        for t in range(steps):
            memory, util, bandwidth = baseline, 0.0, 0.0
            for copy in device["copies"]:
                config = configs[copy["model"]][copy["config"]]
                points = [p for p in config["points"]]
                rate = copy["rate_per_second"][t]
                within = [p["throughput_per_second"] for p in points if p["latency_p99_seconds"] <= 0.1]
                assert rate <= max(within) + 1e-6, f"{copy['model']} serves {rate}/s above its capacity at step {t}"
                served[copy["model"]][t] += rate
                xs = [p["throughput_per_second"] for p in points]
                memory += float(config["peak_gpu_memory_bytes"].removesuffix("GiB")) * GIB
                util += linear(rate, xs, [p["peak_gpu_utilization_ratio"] for p in points])
                bandwidth += linear(rate, xs, [p["peak_memory_bandwidth_utilization_ratio"] for p in points])
            assert memory <= memory_bytes + 1, f"{device['name']} over memory at step {t}"
            assert util <= 1 + 1e-6, f"{device['name']} at {util:.0%} utilisation at step {t}"
            assert bandwidth <= 1 + 1e-6, f"{device['name']} at {bandwidth:.0%} bandwidth at step {t}"
            assert device["totals_per_step"]["gpu_utilization_ratio"][t] == pytest.approx(util, abs=1e-5)
    for model, demand in rates.items():
        for t in range(steps):
            assert served[model][t] >= demand[t] - 1e-4, f"{model} short of its demand at step {t}"


def shifted_fleet(tmp_path, per_group=4):
    """Two groups of four models; each copy is 60% busy at its group's peak and 12% off it."""
    models, series = [], {}
    for group, curve in (("day", [100, 20]), ("night", [20, 100])):
        for k in range(per_group):
            name = f"{group}{k}"
            models.append(model_yaml(name, 1, [(100, 0.05, 0.6, 0.3)]))
            series[name] = curve
    return write(tmp_path, models, series)


def test_groups_peaking_at_different_steps_share_devices_the_sum_of_the_peaks_would_not(capsys, tmp_path):
    profile, series = shifted_fleet(tmp_path)
    status, document, _ = plan(capsys, profile, series)
    assert status == 0
    check_every_step(document, profile, series)
    assert document["device_count"] == 4 and document["proof"]["status"] == "optimal"
    assert document["lower_bound"] == 4  # four copies at 60% in the busiest step: no two share a device
    assert document["sum_of_peaks"]["device_count"] == 8
    assert document["devices_saved"] == 4


def test_the_table_puts_the_peak_of_the_sum_beside_the_sum_of_the_peaks(capsys, tmp_path):
    profile, series = shifted_fleet(tmp_path)
    assert main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series]) == 0
    out = capsys.readouterr().out
    assert "by the peak of the sum, 2 steps of 3600 s: 4 devices (proven optimal" in out
    assert "by the sum of the peaks (every model at its own peak): 8 devices" in out
    assert "saves 4 devices (50%) against the sum of the peaks" in out
    assert out.splitlines()[-1].startswith("Time: ")


def test_random_fleets_hold_every_limit_at_every_step(capsys, tmp_path):
    rng = random.Random(7)
    models, series = [], {}
    for k in range(30):
        capacity = rng.choice([50, 200, 800])
        points = [(capacity / 2, 0.02, rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.4)),
                  (capacity, 0.08, rng.uniform(0.5, 0.95), rng.uniform(0.4, 0.9))]
        models.append(model_yaml(f"m{k}", rng.choice([1, 2, 4]), points))
        shift = rng.randrange(24)
        series[f"m{k}"] = [round(capacity * rng.uniform(0.3, 2.5) * (0.2 + 0.8 * ((t + shift) % 24 < 10)), 3)
                           for t in range(24)]
    profile, path = write(tmp_path, models, series)
    status, document, _ = plan(capsys, profile, path)
    assert status == 0
    check_every_step(document, profile, path)
    assert document["device_count"] >= document["lower_bound"]
    assert document["device_count"] <= document["sum_of_peaks"]["device_count"]


@pytest.mark.parametrize("series, where, message", [
    ("step: 1h\nseries:\n  a: [1, 2]\n  b: [1]\n", "series.yaml:4: series.b", "has 1 steps but series.a has 2"),
    ("step: 1h\nseries:\n  a: [1, fast]\n", "series.yaml:3: series.a[1]", "is not a rate"),
    ("series:\n  a: [1]\n", "series.yaml:1: step", "missing"),
    ("step: 1h\nlatency_p99_seconds: {default: 100ms, z: 1s}\nseries:\n  a: [1]\n",
     "series.yaml:2: latency_p99_seconds.z", "model not in series"),
])
def test_a_bad_series_file_names_file_line_and_field_and_plans_nothing(capsys, tmp_path, series, where, message):
    profile, _ = shifted_fleet(tmp_path)
    path = tmp_path / "series.yaml"
    path.write_text(series)
    status, _, err = plan(capsys, profile, str(path))
    assert status == 2
    assert where in err and message in err


def test_rates_carry_units_as_in_demand_files(tmp_path):
    from gpupack.demand_series import load_demand_series

    path = tmp_path / "s.yaml"
    path.write_text("step: 30m\nlatency_p99_seconds: {default: 100ms, a: 50ms}\nseries:\n  a: [20/s, 1200/m, 0]\n  b: [1, 2, 3]\n")
    series = load_demand_series(path)
    assert series.rates_per_second["a"] == (20.0, 20.0, 0.0)
    assert series.step_seconds == 1800 and series.latency_p99_seconds == {"a": 0.05, "b": 0.1}


def test_forecast_weeks_plans_the_busiest_same_hour_of_recent_weeks_with_headroom(capsys, tmp_path):
    """Two weeks of two-step 'weeks' (step 3.5 days): the plan is for each step's busier week, plus 10%."""
    models = [model_yaml(f"m{k}", 1, [(100, 0.05, 0.4, 0.2)]) for k in range(2)]
    profile, series = write(tmp_path, models, {"m0": [50, 10, 80, 20], "m1": [10, 60, 30, 40]}, step="84h")
    status, document, _ = plan(capsys, profile, series, "--forecast-weeks", "2", "--headroom", "10%")
    assert status == 0
    rates = {c["model"]: c["rate_per_second"] for d in document["devices"] for c in d["copies"]}
    assert rates["m0"] == pytest.approx([88, 22]) and rates["m1"] == pytest.approx([33, 66])
    status, _, err = plan(capsys, profile, series, "--forecast-weeks", "3")
    assert status == 2 and "needs 6 steps of history; there are 4" in err


def test_exceeded_share_counts_steps_above_what_was_placed():
    from gpupack.demand_series import DemandSeries
    from gpupack.scheduler.demand.forecast import exceeded_share

    placed = DemandSeries(3600, {"a": (10, 10), "b": (5, 5)}, {})
    actual = DemandSeries(3600, {"a": (12, 10), "b": (1, 5)}, {})
    assert exceeded_share(placed, actual) == 0.25


def test_a_profile_with_measured_colocations_is_refused_rather_than_ignored(capsys, tmp_path):
    profile, series = write(tmp_path, [model_yaml("a", 1, [(100, 0.01, 0.5, 0.1)]),
                                       model_yaml("b", 1, [(100, 0.01, 0.5, 0.1)])], {"a": [10, 20], "b": [20, 10]})
    with open(profile, "a") as f:
        f.write("colocations:\n  - peak_gpu_memory_bytes: 3GiB\n    models:\n"
                "      - {model: a, request_rate_per_second: 10, throughput_per_second: 10, latency_p99_seconds: 1}\n"
                "      - {model: b, request_rate_per_second: 10, throughput_per_second: 10, latency_p99_seconds: 1}\n")
    status, _, err = plan(capsys, profile, series)
    assert status == 2 and "does not plan with measured colocations yet" in err


def test_a_model_with_many_small_copies_is_packed_before_bigger_single_copies():
    # Two models of one copy at 50% of the memory and one of four copies at 45%: biggest first, the
    # two halves fill one device and the four copies need four more; most copies first, each half
    # joins one of the four.
    from gpupack.scheduler.demand.series import Fleet, SeriesOption, plan_series

    def option(name, copies, memory):
        return SeriesOption(name, None, copies, 1.0, np.zeros(1), np.array([[memory], [0.0], [0.0]]))

    options = [[option("x", 1, 0.5)], [option("y", 1, 0.5)], [option("z", 4, 0.45)]]
    fleet = Fleet(tuple(f"gpu{d}" for d in range(6)), np.ones((6, 3)), np.zeros((6, 3)))
    plan = plan_series(options, fleet)
    assert plan.device_count == 4 == plan.lower_bound
    assert len(set(plan.devices[2])) == 4
