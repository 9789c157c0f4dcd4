"""Lower bounds on the number of devices, so that a packing can be proven optimal without search.

Every bound relaxes the vector problem to one resource at a time; on devices of different sizes
each device is treated as the largest one (except in the volume bound), which keeps them valid.
Replicas count as separate items, since they must sit on distinct devices.
"""

from __future__ import annotations

import numpy as np

from gpupack.scheduler.packing.instance import Instance


def device_lower_bound(instance: Instance) -> int:
    """The best of: volume per resource, Martello-Toth L2, Fekete-Schepers dual feasible
    functions, largest replica count and largest anti-affinity group."""
    if instance.n_models == 0:
        return 0
    bound = int(instance.replicas.max())
    bound = max([bound] + [len(g) for g in instance.groups])
    usable = np.all(instance.capacity >= 0, axis=1)
    if not usable.any():
        return bound
    capacity = instance.capacity[usable]
    for r in range(len(instance.resources)):
        sizes = np.repeat(instance.demand[:, r], instance.replicas)
        largest = int(capacity[:, r].max())
        if largest <= 0:
            continue
        bound = max(
            bound,
            volume_bound(sizes, capacity[:, r]),
            martello_toth_l2(sizes, largest),
            dual_feasible_bound(sizes, largest),
        )
    return bound


def volume_bound(sizes: np.ndarray, capacities: np.ndarray) -> int:
    """Fewest devices, biggest first, whose capacities add up to the total demand."""
    total = int(sizes.sum())
    if total == 0:
        return 0
    prefix = np.cumsum(np.sort(capacities)[::-1])
    return int(np.searchsorted(prefix, total, side="left")) + 1


def martello_toth_l2(sizes: np.ndarray, capacity: int) -> int:
    """L2 = max over alpha of |big| + |medium| + the small items that overflow the medium bins' room."""
    w = np.sort(sizes.astype(np.int64))
    prefix = np.concatenate(([0], np.cumsum(w)))
    n = len(w)
    alphas = np.unique(np.concatenate(([0], w[2 * w <= capacity])))
    half = int(np.searchsorted(w, capacity // 2, side="right"))  # w[:half] <= C/2
    big_start = np.searchsorted(w, capacity - alphas, side="right")  # w > C - alpha
    small_start = np.searchsorted(w, alphas, side="left")  # w >= alpha
    n_big = n - big_start
    n_medium = big_start - half
    sum_medium = prefix[big_start] - prefix[half]
    sum_small = prefix[half] - prefix[small_start]
    overflow = sum_small - (n_medium * capacity - sum_medium)
    extra = np.where(overflow > 0, -(-overflow // capacity), 0)
    return int((n_big + n_medium + extra).max())


def dual_feasible_bound(sizes: np.ndarray, capacity: int, max_k: int = 20) -> int:
    """Fekete-Schepers u^(k): rounding items up to multiples of C/k keeps any packing feasible."""
    w = sizes.astype(np.int64)
    best = 0
    for k in range(1, max_k + 1):
        scaled = (k + 1) * w
        whole = scaled % capacity == 0
        # In units of capacity*k, so that the sum stays an exact integer.
        rounded = np.where(whole, w * k, (scaled // capacity) * capacity)
        total = int(rounded.sum())
        best = max(best, -(-total // (capacity * k)))
    return best
