"""Krum's scores (Blanchard et al., NeurIPS 2017) on client updates, in float64: the math the
Krum, MultiKrum and Bulyan strategies (`strategies/krum.py`, `strategies/bulyan.py`) and
Fang et al.'s Krum attack (`fedguard/attacks/fang.py`) share.

With D_ij = ||u_i - u_j||^2, score(i) = the sum of D_ij over the k = max(1, n - f - 2) nearest
j != i. D is summed from the differences themselves (not |x|^2 + |y|^2 - 2 x.y, which cancels
badly when a common global model dominates the norms).
"""

from __future__ import annotations

import numpy as np


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """D[i, j] = ||u_i - u_j||^2 in float64, summed from the differences (no Gram trick)."""
    u = np.asarray(updates, dtype=np.float64)
    dist = np.zeros((len(u), len(u)))
    for i in range(len(u)):
        diff = u[i + 1:] - u[i]
        dist[i, i + 1:] = dist[i + 1:, i] = np.einsum("ij,ij->i", diff, diff)
    return dist


def krum_scores_of(dist: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of each row of a squared-distance matrix: the sum over its k = max(1, n-f-2)
    nearest others."""
    n = len(dist)
    k = max(1, n - f - 2)
    others = dist[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return np.sort(others, axis=1)[:, :k].sum(axis=1)


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    return krum_scores_of(pairwise_sq_distances(updates), f)
