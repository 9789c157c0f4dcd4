"""``gpupack profile --colocate a,b,c`` (or ``--colocate-from-plan plan.json``): groups measured together.

Per run: the server alone (the baseline); per model of any group, the model alone at its load;
per group, every member at once at the same loads. Each model's throughput, p50/p99 and Triton's
queue and compute times are shown together beside alone, and the device's peaks beside the sum
of the parts (the baseline plus what each model added alone: what a plan adds up). The groups go
to the profile's ``colocations`` (:mod:`gpupack.profiles`), where the planner reads them; a
profile already at ``--out`` keeps everything else it holds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from gpupack.profiler.colocate import GroupMeasurement, GroupRun, Guards, Member
from gpupack.profiler.control import ServerControl, ServerGoneError
from gpupack.profiler.loadgen import Load
from gpupack.profiler.planned import load_planned_devices
from gpupack.profiler.sampler import Peaks, Probe
from gpupack.profiler.session import (
    default_backend,
    probe_factory,
    server_under_test,
    stopped_by_signals,
)
from gpupack.profiler.stats import PointResult
from gpupack.profiler.target import Target, resolve_target
from gpupack.profiler.verify import latency_text, override

from gpupack.config import ConfigFile, split_list
from gpupack.domain import ModelFootprint, Resource
from gpupack.errors import ExitStatus, InputError
from gpupack.model_configs import ConfigPoint
from gpupack.profile_colocations import ColocatedModel, Colocation
from gpupack.profiles import Profile, load_profile
from gpupack.units import counted, format_bytes, format_percent


@dataclass(frozen=True)
class Group:
    name: str  # the plan's device, or the models joined by '+'
    members: tuple[Member, ...]
    configs: Mapping[str, str | None]  # model -> the configuration it runs (a plan's), for the profile


def groups_from_flags(colocate: Sequence[str], values: Mapping[str, Any]) -> list[Group]:
    """``--colocate a,b`` groups at ``--request-rate`` or ``--concurrency``: one value for every
    model, or one per model of each group, in its order (default: concurrency 1)."""
    groups = []
    for text in colocate:
        models = tuple(dict.fromkeys(split_list(text)))
        if len(models) < 2:
            raise InputError(f"{text!r} names {counted(len(models), 'model')}: a group measured together has two "
                             "or more", field="--colocate")
        loads = _loads(values, len(models), text)
        groups.append(Group("+".join(models), tuple(Member(m, load) for m, load in zip(models, loads)), {}))
    return groups


def groups_from_plan(path: str, values: Mapping[str, Any], existing: Profile | None) -> list[Group]:
    """Each device of a plan with two or more copies: a demand plan's copies at their rates and in
    their configurations (named in the profile at ``--out``), a plain plan's at the flags' loads."""
    groups = []
    for device in load_planned_devices(path, unrated=True):
        if len(device.copies) < 2:
            continue
        rated = all(c.rate_per_second > 0 for c in device.copies)
        loads = ([Load(request_rate_per_second=c.rate_per_second) for c in device.copies] if rated
                 else _loads(values, len(device.copies), device.name))
        members = tuple(Member(c.model, load, _configure(c.model, c.config, existing, path))
                        for c, load in zip(device.copies, loads))
        groups.append(Group(device.name, members, {c.model: c.config for c in device.copies}))
    if not groups:
        raise InputError("no device of the plan holds two or more models: nothing to measure together",
                         field="--colocate-from-plan", path=path)
    return groups


def _configure(model: str, config: str | None, existing: Profile | None,
               path: str) -> Callable[[Mapping[str, Any]], dict] | None:
    found = next((c for c in (existing.configs.get(model, ()) if existing else ()) if c.name == config), None)
    if found is None:
        return None  # no configuration, or the profile's default one: as the repository has it
    return lambda own: override(own, found)


def _loads(values: Mapping[str, Any], count: int, where: str) -> list[Load]:
    rates, concurrencies = values["request_rate"], values["concurrency"]
    given = [Load(request_rate_per_second=r) for r in rates] if rates else \
        [Load(concurrency=c) for c in concurrencies] if concurrencies else [Load(concurrency=1)]
    if len(given) == 1:
        return given * count
    if len(given) != count:
        flag = "--request-rate" if rates else "--concurrency"
        raise InputError(f"{flag} gives {len(given)} values for a group of {count} models ({where}): give one for "
                         "every model, or one per model in the group's order", field=flag)
    return given


def run_from_flags(args: argparse.Namespace, values: dict[str, Any], config: ConfigFile | None) -> int:
    """``profile --colocate`` / ``--colocate-from-plan``: everything checked before a server starts."""
    if args.colocate and args.colocate_from_plan:
        raise InputError("give --colocate or --colocate-from-plan, not both")
    if args.models:
        raise InputError("--colocate names the models of each group: leave --models out")
    if values["request_rate"] and values["concurrency"]:
        raise InputError("give --concurrency or --request-rate, not both")
    out = Path(values["out"])
    existing = load_profile(out) if out.exists() else None
    groups = (groups_from_plan(args.colocate_from_plan, values, existing) if args.colocate_from_plan
              else groups_from_flags(args.colocate, values))
    models = tuple(dict.fromkeys(m.model for g in groups for m in g.members))
    target = resolve_target({**values, "models": models}, config, bool(values["shared_server"]))
    backend = values["backend"] or default_backend()
    with stopped_by_signals() as stop:
        try:
            with server_under_test(target) as (address, pid):
                probes = probe_factory(backend, address, pid, target.shared_with)
                return run_colocate(groups, values, existing, address, probes, target, stop.exit_status)
        except KeyboardInterrupt:
            print(f"gpupack profile: stopped by {stop.name or 'SIGINT'}", file=sys.stderr)
            return stop.exit_status


def run_colocate(groups: list[Group], values: Mapping[str, Any], existing: Profile | None, address: str,
                 probe_factory: Callable[[], Probe], target: Target, stopped_status: int) -> int:
    """Measure every group on the server at ``address``, print them, add them to the profile at ``--out``."""
    out = Path(values["out"])
    measured: list[tuple[Group, GroupMeasurement, dict[str, GroupMeasurement]]] = []
    with contextlib.ExitStack() as stack:
        guards = stack.enter_context(Guards(address)) if target.server is not None else None
        run = GroupRun(address, ServerControl(address), probe_factory, warmup_seconds=values["warmup"],
                       on_loaded=guards.loaded if guards else lambda model, loaded: None)
        baseline, status = _measure_groups(run, groups, values["duration"], measured, stopped_status)
    if not measured or baseline is None:
        print("gpupack profile: no group was measured: no profile written", file=sys.stderr)
        return status if status != ExitStatus.OK else ExitStatus.FAILURE
    # A group with a member that did not load measured something else: shown, not recorded.
    colocations = [_colocation(group, together, parts, baseline) for group, together, parts in measured]
    print("\n\n".join(format_group(g, t, a, c) for (g, t, a), c in zip(measured, colocations)))
    _write(out, existing, baseline, measured,
           [c for (_, together, _), c in zip(measured, colocations) if not together.failures])
    print(f"wrote {out}", file=sys.stderr)
    failed = {model: why for _, together, _ in measured for model, why in together.failures.items()}
    for model, why in failed.items():
        print(f"gpupack profile: {model} was not measured: {why}", file=sys.stderr)
    return ExitStatus.FAILURE if status == ExitStatus.OK and failed else status


def _measure_groups(run: GroupRun, groups: list[Group], duration_seconds: float,
                    measured: list[tuple[Group, GroupMeasurement, dict[str, GroupMeasurement]]],
                    stopped_status: int) -> tuple[Peaks | None, int]:
    """The baseline, each model alone (once per load) and each group together, into ``measured`` as
    they finish; (baseline, status): a stop or a dead server ends it with what was measured before."""
    baseline = None
    try:
        print("measuring the server alone", file=sys.stderr, flush=True)
        baseline = run.baseline(duration_seconds)
        alone: dict[tuple[str, Load], GroupMeasurement] = {}
        for group in groups:
            for member in group.members:
                if (member.model, member.load) not in alone:
                    print(f"measuring {member.model} alone at {member.load}", file=sys.stderr, flush=True)
                    alone[member.model, member.load] = run.measure([member], duration_seconds)
            print(f"measuring {group.name} together: "
                  + ", ".join(f"{m.model} at {m.load}" for m in group.members), file=sys.stderr, flush=True)
            together = run.measure(group.members, duration_seconds)
            measured.append((group, together, {m.model: alone[m.model, m.load] for m in group.members}))
    except KeyboardInterrupt:
        print("gpupack profile: interrupted: the profile holds the groups measured so far", file=sys.stderr)
        return baseline, stopped_status
    except ServerGoneError as e:
        print(f"gpupack profile: error: {e}; the profile holds the groups measured before", file=sys.stderr)
        return baseline, ExitStatus.FAILURE
    return baseline, ExitStatus.OK


def _colocation(group: Group, together: GroupMeasurement, alone: Mapping[str, GroupMeasurement],
                baseline: Peaks) -> Colocation:
    models = []
    for m in group.members:
        if m.model in together.points:
            by_itself = alone[m.model].points.get(m.model)
            models.append(ColocatedModel(m.model, _point(together.points[m.model], m.load),
                                         _point(by_itself, m.load, alone[m.model].peaks) if by_itself else None,
                                         group.configs.get(m.model)))
    parts = _sum_of_parts(baseline, [alone[m.model].peaks for m in group.members])
    return Colocation(tuple(models), _peaks(together.peaks), parts)


def _point(point: PointResult, load: Load, device: Peaks | None = None) -> ConfigPoint:
    breakdown = point.server_latency
    return ConfigPoint(
        throughput_per_second=point.throughput_per_second,
        peaks={Resource.GPU_UTILIZATION: device.utilization_ratio}
        if device is not None and device.utilization_ratio is not None else {},
        concurrency=load.concurrency,
        request_rate_per_second=load.request_rate_per_second,
        latency_p50_seconds=point.latencies.p50_seconds if point.latencies else None,
        latency_p99_seconds=point.latencies.p99_seconds if point.latencies else None,
        latency_breakdown_seconds={"queue": breakdown.queue_seconds, "compute_input": breakdown.compute_input_seconds,
                                   "compute_infer": breakdown.compute_infer_seconds,
                                   "compute_output": breakdown.compute_output_seconds} if breakdown else {},
    )


def _peaks(peaks: Peaks) -> dict[Resource, float]:
    values = {Resource.GPU_MEMORY: peaks.memory_bytes, Resource.GPU_UTILIZATION: peaks.utilization_ratio,
              Resource.MEMORY_BANDWIDTH_UTILIZATION: peaks.memory_bandwidth_utilization_ratio}
    return {r: float(v) for r, v in values.items() if v is not None}


def _sum_of_parts(baseline: Peaks, parts: Sequence[Peaks]) -> dict[Resource, float]:
    """The baseline once plus what each model added to it alone: the device as a plan adds it up."""
    base = _peaks(baseline)
    total = dict(base)
    for part in parts:
        for resource, value in _peaks(part).items():
            total[resource] = total.get(resource, 0.0) + max(0.0, value - base.get(resource, 0.0))
    return total


def _write(out: Path, existing: Profile | None, baseline: Peaks, measured: list, colocations: list[Colocation]) -> None:
    from gpupack.profiles import write_profile  # noqa: PLC0415 - only once something was measured

    groups = {c.group for c in colocations}
    if existing is None:
        existing = Profile(_peaks(baseline), ())
    known = {m.model for m in existing.models}
    added = []
    for _, _, alone in measured:
        for model, part in alone.items():
            point = part.points.get(model)
            if model in known or point is None:
                continue
            known.add(model)
            added.append(_footprint(model, point, part.peaks, baseline))
    kept = tuple(c for c in existing.colocations if c.group not in groups)
    write_profile(replace(existing, models=existing.models + tuple(added), colocations=kept + tuple(colocations)), out)


def _footprint(model: str, point: PointResult, device: Peaks, baseline: Peaks) -> ModelFootprint:
    """A model the profile at ``--out`` lacked, as measured alone: its peaks above the baseline."""
    peaks = {r: max(0.0, v - _peaks(baseline).get(r, 0.0)) if r.is_bytes else v for r, v in _peaks(device).items()}
    return ModelFootprint(model, peaks, batch_size=point.batch_size, concurrency=point.concurrency,
                          throughput_per_second=point.throughput_per_second,
                          latency_p99_seconds=point.latencies.p99_seconds if point.latencies else None)


def format_group(group: Group, together: GroupMeasurement, alone: Mapping[str, GroupMeasurement],
                 colocation: Colocation) -> str:
    """Each model together beside alone, then the device beside the sum of its parts."""
    rows = [("model", "load", "throughput alone → together", "p50 alone → together", "p99 alone → together",
             "queue alone → together")]
    for member in group.members:
        before, after = alone[member.model].points.get(member.model), together.points.get(member.model)
        rows.append((member.model, member.load.label,
                     _pair(before, after, lambda p: f"{p.throughput_per_second:.3g}/s"),
                     _pair(before, after, lambda p: latency_text(p.latencies.p50_seconds if p.latencies else None)),
                     _pair(before, after, lambda p: latency_text(p.latencies.p99_seconds if p.latencies else None)),
                     _pair(before, after,
                           lambda p: latency_text(p.server_latency.queue_seconds if p.server_latency else None))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"{group.name} together:"] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                                             for row in rows]
    device = []
    for resource, shown in ((Resource.GPU_MEMORY, format_bytes), (Resource.GPU_UTILIZATION, format_percent)):
        if resource in colocation.peaks:
            parts = colocation.sum_of_parts.get(resource)
            device.append(f"{resource.short_name} {shown(colocation.peaks[resource])}"
                          + (f" (sum of the parts {shown(parts)})" if parts is not None else ""))
    lines.append("  device: " + ", ".join(device))
    return "\n".join(lines)


def _pair(before: PointResult | None, after: PointResult | None, shown: Callable[[PointResult], str]) -> str:
    return f"{shown(before) if before else '-'} → {shown(after) if after else 'not measured'}"
