"""Groups a profile measured together (``colocations:``, from ``gpupack profile --colocate``) that
broke a budget or a limit: forbidden groups, which no plan puts all on one device again.

A group broke when, measured together on one server, any of its models

- answered with a p99 over its budget (the demand's ``latency_p99_seconds``, when planning for one),
- served less than its load (below ``1 - SHORTFALL_RATIO`` of the rate it was sent: it fell behind),

or when the server's memory peak with the group driven was over every device's memory limit. The
rule is conservative: a group measured to break at some rates stays forbidden at any rate, since
planned rates are demands at their peak, and a verified plan (``plan --verify``) is the way to learn
that a lighter load would coexist.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from gpupack.domain import Device, Resource
from gpupack.profile_colocations import Colocation

# The share of its load a model may fall short of and still count as keeping up (as verify says).
SHORTFALL_RATIO = 0.1


def broken_groups(colocations: Iterable[Colocation], budgets: Mapping[str, float | None],
                  devices: Iterable[Device]) -> tuple[frozenset[str], ...]:
    """The groups of two models or more that broke a budget or a limit, in the profile's order."""
    memory = max((d.capacity_of(Resource.GPU_MEMORY) for d in devices), default=float("inf"))
    groups = [c.group for c in colocations if len(c.group) > 1 and _broke(c, budgets, memory)]
    return tuple(dict.fromkeys(groups))


def _broke(colocation: Colocation, budgets: Mapping[str, float | None], memory_bytes: float) -> bool:
    for member in colocation.models:
        point, budget = member.together, budgets.get(member.model)
        if budget is not None and point.latency_p99_seconds is not None and point.latency_p99_seconds > budget:
            return True
        sent, served = point.request_rate_per_second, point.throughput_per_second
        if sent and served is not None and served < sent * (1 - SHORTFALL_RATIO):
            return True
    return colocation.peaks.get(Resource.GPU_MEMORY, 0.0) > memory_bytes
