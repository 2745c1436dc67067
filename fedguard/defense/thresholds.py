"""Threshold rules for MD scores: a score above the threshold flags the update.

- `schedule_threshold`: the paper's increasing schedule `tau0 + slope * t` (0.5 + 0.02 t).
- `robust_threshold`: data-driven, `median + k * 1.4826 * MAD` of this round's scores pooled
  with recently accepted scores; one-sided (only high MD is suspicious).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of a normal sample


def schedule_threshold(t: float, tau0: float = 0.5, slope: float = 0.02) -> float:
    """`tau0 + slope * t`, t being the online step (the paper) or the round (federated form)."""
    return tau0 + slope * t


def robust_threshold(scores: Sequence[float] | np.ndarray, accepted_history: Sequence[float] | np.ndarray = (),
                     k: float = 3.0, min_history: int = 5, rel_floor: float = 0.01,
                     fallback: float = math.inf) -> float:
    """`median + k * max(1.4826 * MAD, rel_floor * |median|, 1e-12)` over the pooled sample.

    The pool is this round's `scores` concatenated with `accepted_history` (scores accepted in
    recent rounds; pass only accepted ones, and only recent ones, since MD drifts as training
    goes). MAD = median(|pool - median(pool)|). Median and MAD have a 50% breakdown point, so
    a minority of outliers moves the threshold little. The floor keeps the rule sane when most
    scores are equal (MAD = 0). Non-finite scores are left out of the pool. With fewer than
    `min_history` pooled finite scores, returns `fallback` (default +inf: flag nothing).
    """
    pool = np.concatenate([np.asarray(scores, dtype=np.float64).ravel(),
                           np.asarray(accepted_history, dtype=np.float64).ravel()])
    pool = pool[np.isfinite(pool)]
    if pool.size < max(1, min_history):
        return float(fallback)
    med = float(np.median(pool))
    mad = float(np.median(np.abs(pool - med)))
    scale = max(MAD_TO_SIGMA * mad, rel_floor * abs(med), 1e-12)
    return med + k * scale
