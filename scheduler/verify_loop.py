"""Plan, verify, learn, re-plan: a plan whose devices were replayed under their traffic before anyone
applies it.

Adding each model's peaks measured alone is not what a device does with them together: queueing
delay grows without bound as load nears capacity, so two models that each meet their p99 budget
alone may break it side by side. The loop plans, has a :class:`~gpupack.verification.Verifier`
replay every device at its planned rates, turns each failed device's models into a forbidden group
(no plan puts all of them on one device again), shrunk first to the models the failure needs by
replaying the device without each in turn, and plans again, until every device passes, no new
group can be learned, no plan keeps the groups apart, or the time limit ends. The planner and the
verifier are passed in: this module knows neither the profiler nor how a plan is made.

A device whose copies (model, configuration, rate) were verified in an earlier round is not
replayed again: its verdict stands. A device that fails with one model alone cannot be mended by
separating models, so it ends the loop unverified rather than forbidding the model everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from gpupack.scheduler.packing.problem import InfeasibleError
from gpupack.timing import Deadline
from gpupack.units import counted
from gpupack.verification import DeviceVerdict, ModelVerdict, PlannedDevice, Verifier

Plan = TypeVar("Plan")

EVERY_DEVICE_PASSED = "every device passed"
TIME_LIMIT = "the verification time limit ended"
NOTHING_TO_LEARN = "a failing device cannot be split further"
NO_PLAN = "no plan keeps every failed group apart"


@dataclass(frozen=True)
class Verification:
    """What ``plan --verify`` verifies with: the verifier, how long the whole loop may take, and
    where it replays, for people ("on http://127.0.0.1:8000, 10 s per device")."""

    verifier: Verifier
    time_limit_seconds: float
    described: str


@dataclass(frozen=True)
class VerificationRound:
    number: int
    verdicts: tuple[DeviceVerdict, ...]  # the devices verified in this round (replayed or remembered)
    learned: tuple[frozenset[str], ...]  # groups forbidden after this round
    replayed: int  # devices actually replayed (the others' verdicts were remembered)

    @property
    def failed(self) -> tuple[DeviceVerdict, ...]:
        return tuple(v for v in self.verdicts if not v.passed)

    def document(self) -> dict[str, object]:
        """One entry of the plan's ``verification_rounds``."""
        return {"round": self.number, "devices": [v.document() for v in self.verdicts],
                "replayed": self.replayed, "learned": [sorted(g) for g in self.learned]}


@dataclass(frozen=True)
class VerifiedPlan(Generic[Plan]):
    plan: Plan  # the last plan made
    verified: dict[str, bool]  # device -> passed when replayed (False: failed, or not replayed in time)
    rounds: tuple[VerificationRound, ...]
    forbidden_groups: tuple[frozenset[str], ...]  # every group the plan was made to keep apart
    stopped: str  # why the loop ended: one of the constants above, with detail

    @property
    def every_device_verified(self) -> bool:
        return bool(self.verified) and all(self.verified.values())


def verify_plan(
    plan_with: Callable[[tuple[frozenset[str], ...]], Plan],
    devices_of: Callable[[Plan], Sequence[PlannedDevice]],
    verifier: Verifier,
    deadline: Deadline,
    forbidden: tuple[frozenset[str], ...] = (),
    progress: Callable[[str], None] = lambda line: None,
) -> VerifiedPlan[Plan]:
    """``plan_with(groups)`` plans with ``groups`` forbidden (raising
    :class:`~gpupack.scheduler.packing.problem.InfeasibleError` when no plan keeps them apart);
    ``devices_of`` lists a plan's devices as the verifier replays them. ``progress`` gets one line
    per round and per device, for people."""
    plan = plan_with(forbidden)
    remembered: dict[tuple, DeviceVerdict] = {}
    rounds: list[VerificationRound] = []
    while True:
        devices = list(devices_of(plan))
        verdicts, replayed, out_of_time = _verify(devices, verifier, remembered, deadline, progress)
        verified = {d.name: False for d in devices} | {v.name: v.passed for v in verdicts}
        failed = [v for v in verdicts if not v.passed]
        by_name = {d.name: d for d in devices}
        groups = []
        for verdict in failed:
            if len(verdict.failed_group) > 1:
                group, tried = _smallest_failing(by_name[verdict.name], verdict, verifier, remembered, deadline, progress)
                groups.append(group)
                replayed += tried
        learned = tuple(g for g in dict.fromkeys(groups) if g not in forbidden)
        round_ = VerificationRound(len(rounds) + 1, tuple(verdicts), learned, replayed)
        rounds.append(round_)
        progress(_round_line(round_, len(devices)))
        stopped = _stop_reason(out_of_time, failed, learned, deadline)
        if stopped:
            return VerifiedPlan(plan, verified, tuple(rounds), forbidden, stopped)
        try:
            replanned = plan_with(forbidden + learned)
        except InfeasibleError as e:
            progress(f"no plan keeps {_groups(learned)} apart as well: {e}")
            return VerifiedPlan(plan, verified, tuple(rounds), forbidden, f"{NO_PLAN}: {e}")
        plan, forbidden = replanned, forbidden + learned


def _verify(devices: list[PlannedDevice], verifier: Verifier, remembered: dict[tuple, DeviceVerdict],
            deadline: Deadline, progress: Callable[[str], None]) -> tuple[list[DeviceVerdict], int, bool]:
    """Each device's verdict, replaying one device at a time so that the time limit is seen
    between devices; a device whose copies were replayed before keeps that verdict."""
    verdicts: list[DeviceVerdict] = []
    replayed = 0
    for device in devices:
        key = _key(device)
        if key not in remembered:
            if deadline.passed():
                return verdicts, replayed, True
            (verdict,) = verifier.verify([device])
            remembered[key] = verdict
            replayed += 1
            progress(f"  {device.name}: {_verdict_line(verdict)}")
        verdicts.append(dataclasses.replace(remembered[key], name=device.name))
    return verdicts, replayed, False


def _smallest_failing(device: PlannedDevice, verdict: DeviceVerdict, verifier: Verifier,
                      remembered: dict[tuple, DeviceVerdict], deadline: Deadline,
                      progress: Callable[[str], None]) -> tuple[frozenset[str], int]:
    """A failed device's models shrunk to a group every one of which it needs to fail, and how
    many replays that took. Each model in turn is left out and the rest replayed at the same
    rates; when the rest still fail, that model was not needed. Load added to a device never mends
    it, so the smaller group is forbidden as soundly as the whole one, and forbids far more plans:
    forbidding only whole devices, the planner finds a new dense mix to try round after round.
    Models that kept their budget are left out first, then those least over it; the time limit
    stops the shrinking where it is."""
    def over_budget(m: ModelVerdict) -> tuple[bool, float]:
        ratio = (m.p99_seconds or 0.0) / m.budget_seconds if m.budget_seconds else 0.0
        return not m.passed, ratio

    copies, replayed = list(device.copies), 0
    for model in sorted(verdict.models, key=over_budget):
        if len(copies) <= 2:
            break
        trial = PlannedDevice(f"{device.name} without {model.model}", tuple(c for c in copies if c.model != model.model))
        key = _key(trial)
        if key not in remembered:
            if deadline.passed():
                break
            (remembered[key],) = verifier.verify([trial])
            replayed += 1
            progress(f"  {trial.name}: {_verdict_line(remembered[key])}")
        if not remembered[key].passed:
            copies = list(trial.copies)
    return frozenset(c.model for c in copies), replayed


def _key(device: PlannedDevice) -> tuple:
    """What a device replays: its copies, whatever the device is called in this round."""
    return tuple(sorted((c.model, c.config or "", round(c.rate_per_second, 6), c.budget_seconds or 0.0)
                        for c in device.copies))


def _stop_reason(out_of_time: bool, failed: list[DeviceVerdict], learned: tuple[frozenset[str], ...],
                 deadline: Deadline) -> str:
    if out_of_time:
        return TIME_LIMIT
    if not failed:
        return EVERY_DEVICE_PASSED
    if not learned:
        alone = [v.name for v in failed if len(v.failed_group) <= 1]
        verb = "fails" if len(alone) == 1 else "fail"
        detail = f" ({', '.join(alone)} {verb} with one model alone)" if alone else ""
        return NOTHING_TO_LEARN + detail
    if deadline.passed():
        return TIME_LIMIT
    return ""


def _verdict_line(verdict: DeviceVerdict) -> str:
    if verdict.passed:
        return "passed"
    reasons = [f"{m.model}: {m.reason}" if m.reason else m.model for m in verdict.models if not m.passed]
    return "failed" + (f" ({'; '.join(reasons)})" if reasons else "")


def _round_line(round_: VerificationRound, device_count: int) -> str:
    failed = round_.failed
    text = (f"round {round_.number}: {counted(device_count, 'device')}, {len(round_.verdicts) - len(failed)} passed, "
            f"{len(failed)} failed")
    if failed:
        text += f" ({', '.join(v.name for v in failed)})"
    if round_.learned:
        text += f"; learned: never {_groups(round_.learned)} on one device"
    return text


def _groups(groups: Sequence[frozenset[str]]) -> str:
    return " nor ".join(" + ".join(sorted(g)) for g in groups)
