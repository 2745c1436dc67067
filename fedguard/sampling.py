"""Which clients train in a round: seeded by `seed` and the round, so the server, the
ClientApps (for injected faults) and the recorder all derive the same set."""

from __future__ import annotations

import numpy as np


def sampled_count(num_clients: int, fraction: float) -> int:
    """How many clients a round samples: round(fraction * num_clients), at least one."""
    return min(num_clients, max(1, int(round(fraction * num_clients))))


def sample_partitions(num_clients: int, fraction: float, seed: int, server_round: int) -> list[int]:
    """The partition ids trained in `server_round` (seeded; sorted)."""
    k = sampled_count(num_clients, fraction)
    if k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())
