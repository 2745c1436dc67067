"""`defense=geomed`: the geometric median of the updates (RFA: Pillutla, Kakade, Harchaoui,
"Robust Aggregation for Federated Learning", IEEE Trans. Signal Processing 2022).

With updates u_1..u_n and weights alpha_i (the replies' `num-examples`, normalised), the
aggregate approximates

    argmin_v  sum_i alpha_i ||v - u_i||

by the smoothed Weiszfeld iteration, from v_0 = sum_i alpha_i u_i (the weighted mean):

    beta_i  = alpha_i / max(nu, ||v_t - u_i||)
    v_{t+1} = sum_i beta_i u_i / sum_i beta_i

until the objective changes by at most `tol` times itself, or `iters` iterations. `nu` (the
smoothing) keeps a step defined when v_t lands on an update.

What the server holds: the global model it sent this round; nothing across rounds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from strategies.base import RoundNotes
from strategies.updates import Aggregate, UpdateAggregator


def weiszfeld(points: np.ndarray, weights: np.ndarray, nu: float = 1e-6, iters: int = 100,
              tol: float = 1e-6) -> np.ndarray:
    """The smoothed-Weiszfeld geometric median of `points` [n, d] with `weights` [n]."""
    alpha = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    v = alpha @ points

    def objective(v):
        return float(alpha @ np.linalg.norm(points - v, axis=1))

    obj = objective(v)
    for _ in range(iters):
        beta = alpha / np.maximum(nu, np.linalg.norm(points - v, axis=1))
        v = beta @ points / beta.sum()
        obj, previous = objective(v), obj
        if abs(previous - obj) <= tol * obj:
            break
    return v


class GeometricMedian(UpdateAggregator):
    def __init__(self, nu: float = 1e-6, iters: int = 100, tol: float = 1e-6, notes: RoundNotes | None = None,
                 **flower):
        super().__init__(notes, **flower)
        if nu <= 0 or iters < 1 or tol < 0:
            raise ValueError(f"geomed needs nu > 0, iters >= 1, tol >= 0, got {nu}, {iters}, {tol}")
        self.nu, self.iters, self.tol = float(nu), int(iters), float(tol)

    def aggregate_updates(self, server_round: int, updates: np.ndarray, weights: np.ndarray,
                          replies: list[Message]) -> Aggregate:
        return Aggregate(weiszfeld(updates, weights, self.nu, self.iters, self.tol), range(len(updates)))
