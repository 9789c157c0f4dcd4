"""`gpupack plan --demand-series --schedule`: a plan per step, the fleet following demand.

Every step is checked by `check_every_step` (test_series.py) and every transition replayed here,
move by move in the order given, make-before-break: an arriving copy counts on its new device
before it leaves the old one, each copy at the larger of its two steps' costs, and no device may
go over a limit on the way."""

import json

from gpupack.app.cli import main

from tests.scheduler.demand.test_series import GIB, check_every_step, linear, model_yaml, write

BUDGET_SECONDS = 0.1


def schedule(capsys, profile, series, *args):
    status = main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series, "--schedule",
                   "--format", "json", "--time-limit", "60s", *args])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


def daily_fleet(tmp_path):
    """Six models, two time zones, a day of four steps: busy in turn, all quiet at night."""
    models, series = [], {}
    for group, curve in (("east", [100, 60, 10, 10]), ("west", [10, 100, 60, 10])):
        for k in range(3):
            models.append(model_yaml(f"{group}{k}", 2, [(50, 0.05, 0.45, 0.2), (100, 0.09, 0.8, 0.4)]))
            series[f"{group}{k}"] = curve
    return write(tmp_path, models, series, step="6h")


def copy_cost(profile, model, rate):
    config = next(m for m in profile["models"] if m["model"] == model)["configs"][0]
    xs = [p["throughput_per_second"] for p in config["points"]]
    return (float(config["peak_gpu_memory_bytes"].removesuffix("GiB")) * GIB,
            linear(rate, xs, [p["peak_gpu_utilization_ratio"] for p in config["points"]]),
            linear(rate, xs, [p["peak_memory_bandwidth_utilization_ratio"] for p in config["points"]]))


def replay_transitions(document, profile_path, max_moves):
    import yaml

    profile = yaml.safe_load(open(profile_path))
    steps = document["schedule"]
    for before, after in zip(steps, steps[1:]):
        assert len(after["moves"]) <= max_moves
        rate = {}
        for state in (before, after):
            for device in state["devices"]:
                for copy in device["copies"]:
                    rate.setdefault(copy["model"], []).append(copy["rate_per_second"])
        cost = {m: tuple(max(c) for c in zip(*(copy_cost(profile, m, r) for r in rates))) for m, rates in rate.items()}
        holds = {d["name"]: {c["model"] for c in d["copies"]} for d in before["devices"]}
        for move in after["moves"]:
            if move["target"] is not None:
                holds.setdefault(move["target"], set()).add(move["model"])
                used = [1 * GIB, 0.0, 0.0]
                for model in holds[move["target"]]:
                    used = [u + c for u, c in zip(used, cost[model])]
                assert used[0] <= 16 * GIB + 1 and used[1] <= 1 + 1e-6 and used[2] <= 1 + 1e-6, \
                    f"step {after['step']}: {move} overloads {move['target']}"
            if move["source"] is not None:
                holds[move["source"]].discard(move["model"])
        assert {d: ms for d, ms in holds.items() if ms} == {d["name"]: {c["model"] for c in d["copies"]}
                                                            for d in after["devices"]}


def as_plan(step):
    """One step of a schedule as a plan's devices: each copy's rate at every step (this one only)."""
    return {"devices": [{"name": d["name"], "copies": [{**c, "rate_per_second": [c["rate_per_second"]]} for c in d["copies"]],
                         "totals_per_step": None} for d in step["devices"]]}


def test_the_fleet_follows_demand_and_every_step_and_transition_holds(capsys, tmp_path):
    profile, series = daily_fleet(tmp_path)
    status, document, _ = schedule(capsys, profile, series, "--max-moves-per-step", "6")
    assert status == 0
    counts = [s["device_count"] for s in document["schedule"]]
    assert [s["step"] for s in document["schedule"]] == [0, 1, 2, 3]
    assert counts[3] < counts[1], "the night needs fewer devices than the busiest step"
    assert document["gpu_hours"] == sum(counts) * 6
    assert document["gpu_hours"] < document["sum_of_peaks"]["gpu_hours"]
    assert document["gpu_hours"] >= document["gpu_hours_lower_bound"]
    import yaml

    rates = yaml.safe_load(open(series))["series"]
    for t, step in enumerate(document["schedule"]):
        one_step = tmp_path / f"step{t}.yaml"
        one_step.write_text(yaml.safe_dump({"step": "6h", "series": {m: [r[t]] for m, r in rates.items()}}))
        check_every_step(_with_totals(as_plan(step), profile), profile, str(one_step))
    replay_transitions(document, profile, 6)


def _with_totals(plan, profile_path):
    import yaml

    profile = yaml.safe_load(open(profile_path))
    for device in plan["devices"]:
        util = sum(copy_cost(profile, c["model"], c["rate_per_second"][0])[1] for c in device["copies"])
        device["totals_per_step"] = {"gpu_utilization_ratio": [util]}
    return plan


def test_the_timeline_shows_devices_and_moves_per_step_and_gpu_hours(capsys, tmp_path):
    profile, series = daily_fleet(tmp_path)
    plot = tmp_path / "schedule.png"
    assert main(["plan", "--profile", profile, "--device-memory", "16GiB", "--demand-series", series, "--schedule",
                 "--max-moves-per-step", "6", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["step", "devices", "bound", "moves"]
    assert "GPU-hours over 4 steps of 6 h: schedule" in out and "by the sum of the peaks" in out
    assert lines[-1].startswith("Time: ") and "schedule" in lines[-1]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_a_move_limit_below_what_demand_needs_loads_copies_ahead(capsys, tmp_path):
    models = [model_yaml(f"m{k}", 1, [(100, 0.05, 0.5, 0.2)]) for k in range(4)]
    profile, series = write(tmp_path, models, {f"m{k}": [10, 10, 350, 10] for k in range(4)})
    status, document, _ = schedule(capsys, profile, series, "--max-moves-per-step", "4")
    assert status == 0
    assert all(len(s["moves"]) <= 4 for s in document["schedule"])
    copies = [sum(len(d["copies"]) for d in s["devices"]) for s in document["schedule"]]
    assert copies[2] == 16 and copies[1] > 4, "copies for step 2 are loaded ahead, a few moves at a time"
    replay_transitions(document, profile, 4)


def test_schedule_needs_a_demand_series(capsys, tmp_path):
    profile, _ = daily_fleet(tmp_path)
    assert main(["plan", "--profile", profile, "--device-memory", "16GiB", "--schedule"]) == 2
    assert "--schedule and --forecast-weeks plan a demand series" in capsys.readouterr().err


def test_a_busy_model_takes_the_configuration_that_needs_fewer_devices_for_its_copies(capsys, tmp_path):
    # At 1,000 requests/s, one instance (50/s a copy) needs 20 copies, on 20 distinct devices; four
    # instances (200/s) need 5. One instance is cheaper by volume (0.05 of a device's utilisation per
    # 50/s against 0.3 per 200/s), and the rest of the fleet fills about two devices.
    busy = ("  - model: busy\n    peak_gpu_memory_bytes: 4GiB\n    configs:\n"
            "      - name: one-instance\n        peak_gpu_memory_bytes: 1GiB\n        points:\n"
            "          - {throughput_per_second: 50, latency_p99_seconds: 0.01, peak_gpu_utilization_ratio: 0.05,"
            " peak_memory_bandwidth_utilization_ratio: 0.05}\n"
            "      - name: four-instances\n        peak_gpu_memory_bytes: 4GiB\n        points:\n"
            "          - {throughput_per_second: 200, latency_p99_seconds: 0.01, peak_gpu_utilization_ratio: 0.3,"
            " peak_memory_bandwidth_utilization_ratio: 0.2}\n")
    others = [model_yaml(f"m{k}", 2, [(100, 0.05, 0.5, 0.2)]) for k in range(4)]
    profile, series = write(tmp_path, [busy, *others], {"busy": [1000, 1000, 100, 100],
                                                        **{f"m{k}": [50, 50, 50, 50] for k in range(4)}})
    status, document, _ = schedule(capsys, profile, series, "--max-moves-per-step", "30")
    assert status == 0
    counts = [s["device_count"] for s in document["schedule"]]
    assert counts[2] < counts[0] < 20, "five copies of four instances, not twenty of one, set the busy steps' devices"
    assert {c["config"] for s in document["schedule"] for d in s["devices"] for c in d["copies"]
            if c["model"] == "busy"} == {"four-instances"}
    replay_transitions(document, profile, 30)


def test_a_transition_that_needs_more_moves_gets_fewer_copy_changes_on_its_own(capsys, tmp_path, monkeypatch):
    """The move limit is 10, of which copy changes may take 7, then 4, then 1. The transition into
    step 2 is made to need more moves than 7 copy changes leave (the placer refuses it then):
    it gets 4, and the others keep 7."""
    from gpupack.scheduler.demand.schedule_placer import Placer
    from gpupack.scheduler.packing.problem import InfeasibleError

    place = Placer.next

    def refusing(self, before, copies, t, limit, drain):
        if t == 2 and sum(abs(int(n) - len(ds)) for n, ds in zip(copies, before)) > 4:
            raise InfeasibleError("step 2: no transition within 10 moves keeps every device within its limits")
        return place(self, before, copies, t, limit, drain)

    monkeypatch.setattr(Placer, "next", refusing)
    models = [model_yaml(f"m{k}", 1, [(100, 0.05, 0.5, 0.2)]) for k in range(4)]
    profile, series = write(tmp_path, models, {f"m{k}": [10, 10, 350, 10] for k in range(4)})
    status, document, _ = schedule(capsys, profile, series, "--max-moves-per-step", "10")
    assert status == 0 and "static" not in document.get("note", "")
    copy_changes = [sum(1 for m in s["moves"] if m["source"] is None or m["target"] is None) for s in document["schedule"]]
    assert copy_changes[2] <= 4
    assert max(copy_changes[1:]) > 4, "the other transitions keep their share of copy changes"
    replay_transitions(document, profile, 10)
