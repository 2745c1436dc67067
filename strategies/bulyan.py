"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018) on client updates, in float64.

For n >= 4f + 3 updates and f assumed attackers:

  1. selection, iterated: theta = n - 2f times, run Krum (`fedguard.defense.krum`, with k = n' - f - 2
     neighbours among the n' updates still unselected) on the unselected updates and move its
     pick into the selection set S;
  2. aggregation, coordinate-wise: with beta = theta - 2f and m_j the median of S at coordinate
     j, the result at j is the mean of the beta values of S closest to m_j.

Why not Flower's Message-API `Bulyan`: its default selection rule is a one-shot MultiKrum (the
theta lowest Krum scores of the full set, each score computed once), which is not the paper's
step 1; on random inputs (n = 10..11, d = 50, f = 2) it picks a different S on most seeds. Its
`selection_rule` hook only sees the replies' contents (whole weight vectors, not updates), so
this class implements both steps on updates instead (Flower's distances: see `strategies.krum`).
Flower's legacy `aggregate_bulyan` iterates as here.

Fewer than 4f + 3 valid replies: no aggregate (the previous global model is kept), as Flower's.
What the server holds: the global model it sent this round. Per-client notes: `selected`.
"""

from __future__ import annotations

from logging import WARN

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from fedguard.defense.krum import krum_scores_of, pairwise_sq_distances
from strategies.base import RoundNotes
from strategies.updates import Aggregate, UpdateAggregator


def bulyan_select(updates: np.ndarray, f: int) -> list[int]:
    """Step 1: the theta = n - 2f indices Krum picks one at a time, in the order picked."""
    dist = pairwise_sq_distances(updates)
    remaining, selected = list(range(len(dist))), []
    while len(selected) < len(dist) - 2 * f:
        pick = remaining[int(np.argmin(krum_scores_of(dist[np.ix_(remaining, remaining)], f)))]
        selected.append(pick)
        remaining.remove(pick)
    return selected


def bulyan_aggregate(selected: np.ndarray, f: int) -> np.ndarray:
    """Step 2: per coordinate, the mean of the beta = theta - 2f selected values closest to
    their median (theta = len(selected))."""
    beta = len(selected) - 2 * f
    dev = np.abs(selected - np.median(selected, axis=0))
    closest = np.argpartition(dev, beta - 1, axis=0)[:beta]
    return np.take_along_axis(selected, closest, axis=0).mean(axis=0)


class Bulyan(UpdateAggregator):
    def __init__(self, num_malicious: int, notes: RoundNotes | None = None, **flower):
        super().__init__(notes, **flower)
        self.f = int(num_malicious)

    def aggregate_updates(self, server_round: int, updates: np.ndarray, weights: np.ndarray,
                          replies: list[Message]) -> Aggregate | None:
        if len(updates) < 4 * self.f + 3:
            log(WARN, "Bulyan needs at least 4f + 3 = %d replies, got %d: previous global model kept",
                4 * self.f + 3, len(updates))
            return None
        chosen = bulyan_select(updates, self.f)
        for i, msg in enumerate(replies):
            self.notes.clients[msg.metadata.src_node_id]["selected"] = i in chosen
        return Aggregate(bulyan_aggregate(updates[chosen], self.f), chosen)
