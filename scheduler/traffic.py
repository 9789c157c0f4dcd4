"""How a model's traffic splits between its copies: by what each copy's configuration serves.

One rule for every place that says it: the router weights a move sets, and the ``traffic_share``
of ``/api/v1/placement``. A copy that serves twice the rate gets twice the share, so no copy is
sent more than its configuration was profiled to serve while another idles. A copy whose capacity
is unknown (no profile names its configuration) counts as the average known copy of its model;
when none is known, the copies split evenly.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

from gpupack.router import MAX_WEIGHT

Copy = TypeVar("Copy")


def traffic_shares(capacities: Mapping[Copy, float | None]) -> dict[Copy, float]:
    """Each copy's part (0-1) of its model's traffic, from its capacity per second (None: unknown)."""
    known = [c for c in capacities.values() if c is not None and c > 0]
    stand_in = sum(known) / len(known) if known else 1.0
    served = {copy: c if c is not None and c > 0 else stand_in for copy, c in capacities.items()}
    total = sum(served.values())
    return {copy: rate / total for copy, rate in served.items()}


def router_weights(capacities: Mapping[Copy, float | None]) -> dict[Copy, int]:
    """:func:`traffic_shares` as router weights: the largest share is ``MAX_WEIGHT``, none below 1."""
    shares = traffic_shares(capacities)
    top = max(shares.values(), default=1.0)
    return {copy: max(1, round(MAX_WEIGHT * share / top)) for copy, share in shares.items()}
