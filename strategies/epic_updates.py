"""`epic_updates`: a server-side ADAPTATION of EPIC (Yang et al., ICML 2022) to client updates.

EPIC itself is a sample-level sanitiser (`fedguard/sanitizers/epic.py`): per class, medoids
of the per-sample gradient proxies by greedy facility location, and the samples of isolated
clusters dropped. Its faithful analogue over a round's client updates treats each update
`w_i - w_global` (the client's accumulated gradient step) as one "sample" of a single class:

    D = Euclidean distances between the round's updates          (n x n)
    k = max(2, round_half_up(fraction * n)) medoids by greedy facility location on max(D) - D
      (at least 2: a lone outlier needs a medoid of its own besides the crowd's)
    every update joins its nearest medoid; updates in clusters of size <= max_cluster are
    dropped before the inner aggregator sees them (never all of them: a round whose updates
    would all be dropped keeps them all)

What carries over: an update far from every other one (a lone boosted or sign-flipped
attacker) sits alone in update space the way an effective poison sits alone in gradient
space. What does not: colluding attackers that send near-identical updates form a cluster
of their own and are kept, exactly as dirty-label poisons in groups survive EPIC. The
paper's per-class structure has no counterpart here (one "class"), and nothing is dropped
for good (clients are re-examined every round). The fraction is smaller than the sample-level
default: honest updates form one diffuse blob, and extra medoids in it leave honest singletons
at its fringe (measured on synthetic rounds of one common direction plus noise and one
boosted outlier: fraction 0.1 dropped no honest update at 10, 20 and 50 clients and caught
the outlier every time; 0.3 dropped 0.2 / 1.5 / 6.5 honest updates per round). ISPL and Confusion Training have no faithful
analogue over updates (both need per-sample labels), so only this one is provided.

Per-client notes: `flagged` (dropped), `epic_cluster_size`, `update_norm`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedguard.sanitizers.epic import (
    assign_to_medoids,
    class_budget,
    facility_location_greedy,
    pairwise_distances,
)
from strategies.base import RoundNotes, StrategyWrapper


def isolated_updates(updates: torch.Tensor, fraction: float, max_cluster: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped mask, cluster size per update) of `updates` [n, P] by the EPIC rule above."""
    n = updates.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
    dist = pairwise_distances(updates.double())
    order, _ = facility_location_greedy(dist.max() - dist, max(2, class_budget(n, fraction)))
    cluster = assign_to_medoids(dist, order)
    sizes = torch.bincount(cluster, minlength=len(order))[cluster]
    dropped = sizes <= max_cluster
    if bool(dropped.all()):  # nothing to be isolated from
        dropped[:] = False
    return dropped, sizes


class EPICUpdates(StrategyWrapper):
    def __init__(self, inner: Strategy, fraction: float = 0.1, max_cluster: int = 1,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        self.fraction, self.max_cluster = float(fraction), int(max_cluster)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        def keep(valid: list[Message]) -> list[bool]:
            updates = torch.stack(self.flat_updates(valid)[1])
            dropped, sizes = isolated_updates(updates, self.fraction, self.max_cluster)
            for msg, drop, size, update in zip(valid, dropped.tolist(), sizes.tolist(), updates):
                self.notes.clients[msg.metadata.src_node_id].update(
                    flagged=drop, epic_cluster_size=int(size), update_norm=float(update.norm()))
            return [not drop for drop in dropped.tolist()]

        return self.aggregate_kept(server_round, replies, keep)
