"""`defense=dnc`: Divide-and-Conquer (Shejwalkar, Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021, Alg. 3),
a filter in front of `defense.inner`.

With updates u_1..u_n, f assumed attackers, a filtering fraction c, `iters` rounds of filtering
and a subsample size b:

    good = {1..n}
    repeat `iters` times:
        r   = b coordinates drawn at random without replacement (all of them if d <= b)
        x_i = u_i[r] - mean_j u_j[r]                  centred subsampled updates
        v   = the top right singular vector of X = [x_1; ...; x_n]
        s_i = <x_i, v>^2                              outlier score
        good = good ∩ {the max(1, n - floor(c f)) lowest s_i}
    the inner strategy aggregates the replies in `good`

The paper averages the kept updates (`defense.inner=fedavg`). The coordinates are drawn from a
generator seeded by (seed, round), so a run is reproducible. If the intersection is empty the
inner strategy sees no reply and the previous global model is kept.

What the server holds: the global model it sent this round. Per-client notes: `flagged`
(left out), `dnc_score` (the last iteration's s_i).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from strategies.base import RoundNotes, StrategyWrapper


def dnc_scores(sub: np.ndarray) -> np.ndarray:
    """s_i = <x_i, v>^2 for the centred rows x_i of `sub` and their top right singular vector v."""
    centred = np.asarray(sub, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    return (centred @ v) ** 2


def dnc_good(updates: np.ndarray, removed: int, subsets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask, last scores): the intersection over `subsets` (coordinate indices) of the
    n - `removed` lowest-scoring rows of `updates` [n, d]."""
    n = len(updates)
    good = np.ones(n, dtype=bool)
    scores = np.zeros(n)
    for coords in subsets:
        scores = dnc_scores(updates[:, coords])
        kept = np.zeros(n, dtype=bool)
        kept[np.argsort(scores, kind="stable")[:n - removed]] = True
        good &= kept
    return good, scores


class DnC(StrategyWrapper):
    def __init__(self, inner: Strategy, num_malicious: int, iters: int = 5, subsample: int = 10000,
                 filter_frac: float = 1.0, seed: int = 0, notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        if iters < 1 or subsample < 1 or filter_frac < 0:
            raise ValueError(f"dnc needs iters >= 1, subsample >= 1, filter_frac >= 0, got {iters}, {subsample}, "
                             f"{filter_frac}")
        self.f, self.iters, self.subsample = int(num_malicious), int(iters), int(subsample)
        self.c, self.seed = float(filter_frac), int(seed)

    def subsets(self, server_round: int, d: int) -> list[np.ndarray]:
        """The coordinates of each iteration (one set of all d when d <= subsample: the
        iterations would repeat it)."""
        if d <= self.subsample:
            return [np.arange(d)]
        rng = np.random.default_rng([self.seed, server_round])
        return [np.sort(rng.choice(d, self.subsample, replace=False)) for _ in range(self.iters)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        def keep(valid: list[Message]) -> list[bool]:
            updates = torch.stack(self.flat_updates(valid)[1]).numpy()
            removed = min(int(np.floor(self.c * self.f)), len(valid) - 1)
            good, scores = dnc_good(updates, removed, self.subsets(server_round, updates.shape[1]))
            for msg, kept, score in zip(valid, good, scores):
                self.notes.clients[msg.metadata.src_node_id].update(flagged=not kept, dnc_score=float(score))
            return list(good)

        return self.aggregate_kept(server_round, replies, keep)
