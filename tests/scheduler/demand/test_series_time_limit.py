"""`plan --demand-series` on a large fleet stops at `--time-limit`, start-up included, with a
complete answer that says the limit cut it short: the plan serves every step, the schedule covers
every step with transitions the rebalancer can carry out (checked by the tests' own step-by-step
and move-by-move checks)."""

import json
import random
import time

import yaml

from gpupack.app.cli import main

from tests.scheduler.demand.test_schedule import replay_transitions
from tests.scheduler.demand.test_series import check_every_step, linear, model_yaml, write

# Writing the answer after the clock stops, on a shared machine.
SLACK_SECONDS = 1.5
LIMIT_SECONDS = 10


def large_fleet(tmp_path, models=60, steps=672):
    """Three time zones of business-hours models, four weeks of hourly steps."""
    rng = random.Random(3)
    profile, series = [], {}
    for k in range(models):
        capacity = rng.choice([40, 100, 400])
        points = [(capacity / 2, 0.02, rng.uniform(0.1, 0.3), rng.uniform(0.05, 0.2)),
                  (capacity, 0.08, rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.7))]
        profile.append(model_yaml(f"m{k}", rng.choice([1, 2, 3]), points))
        shift, peak = rng.choice([0, 8, 16]), capacity * rng.uniform(0.2, 3.0)
        series[f"m{k}"] = [round(peak * (0.15 + 0.85 * ((t + shift) % 24 < 9)) * rng.uniform(0.9, 1.0), 3)
                           for t in range(steps)]
    return write(tmp_path, profile, series)


def timed_plan(capsys, profile, series, *args, limit=f"{LIMIT_SECONDS}s"):
    started = time.monotonic()
    status = main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series,
                   "--format", "json", "--time-limit", limit, *args])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert status == 0, err
    return json.loads(out), seconds


def check_schedule(document, profile_path, series_path):
    """Every step of a schedule as a plan: demand served, copies on distinct devices, every limit held."""
    profile = yaml.safe_load(open(profile_path))
    rates = yaml.safe_load(open(series_path))["series"]
    configs = {m["model"]: m["configs"][0] for m in profile["models"]}
    for t, step in enumerate(document["schedule"]):
        served = dict.fromkeys(rates, 0.0)
        for device in step["devices"]:
            models = [c["model"] for c in device["copies"]]
            assert len(models) == len(set(models)), f"step {t}: {device['name']} holds two copies of a model"
            memory, util, bandwidth = 1.0, 0.0, 0.0
            for copy in device["copies"]:
                points = configs[copy["model"]]["points"]
                xs = [p["throughput_per_second"] for p in points]
                rate = copy["rate_per_second"]
                assert rate <= xs[-1] + 1e-6, f"step {t}: {copy['model']} above its capacity"
                served[copy["model"]] += rate
                memory += float(configs[copy["model"]]["peak_gpu_memory_bytes"].removesuffix("GiB"))
                util += linear(rate, xs, [p["peak_gpu_utilization_ratio"] for p in points])
                bandwidth += linear(rate, xs, [p["peak_memory_bandwidth_utilization_ratio"] for p in points])
            assert memory <= 16 and util <= 1 + 1e-6 and bandwidth <= 1 + 1e-6, f"step {t}: {device['name']} over"
        for model, demand in rates.items():
            assert served[model] >= demand[t] - 1e-4, f"step {t}: {model} short of its demand"


def test_a_series_plan_with_no_time_left_answers_with_its_first_packing_and_says_so(capsys, tmp_path):
    profile, series = large_fleet(tmp_path)
    document, _ = timed_plan(capsys, profile, series, limit="0.1s")
    check_every_step(document, profile, series)
    assert document["proof"]["note"] == "the time limit stopped the search; the best packing found by then"


def test_a_large_schedule_stops_at_the_time_limit_and_still_covers_every_step(capsys, tmp_path):
    profile, series = large_fleet(tmp_path)
    document, seconds = timed_plan(capsys, profile, series, "--schedule", "--max-moves-per-step", "60")
    assert seconds <= LIMIT_SECONDS + SLACK_SECONDS
    assert [s["step"] for s in document["schedule"]] == list(range(672))
    check_schedule(document, profile, series)
    replay_transitions(document, profile, 60)
