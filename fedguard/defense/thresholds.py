"""Threshold rules for MD scores: a score above the threshold flags the update.

- `schedule_threshold`: the paper's increasing schedule `tau0 + slope * t` (0.5 + 0.02 t).
- `robust_threshold`: data-driven, on log-MD: `exp(median + k * max(1.4826 * MAD,
  min_log_spread))` of this round's scores pooled with the accepted scores of recent rounds
  (each rescaled to this round's level); one-sided (only high MD is suspicious).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD * 1.4826 estimates the standard deviation of a normal sample
LOG_FLOOR = 1e-12  # scores are clipped here before the log (an MD of 0 stays finite)


def schedule_threshold(t: float, tau0: float = 0.5, slope: float = 0.02) -> float:
    """`tau0 + slope * t`, t being the online step (the paper) or the round (federated form)."""
    return tau0 + slope * t


def robust_threshold(scores: np.ndarray, accepted: Sequence[tuple[float, Sequence[float]]] = (),
                     k: float = 2.5, min_log_spread: float = 0.1) -> float:
    """`exp(median + k * max(1.4826 * MAD, min_log_spread))` of the pooled log-scores.

    MD is positive and heavy-tailed, roughly log-normal across honest clients, so the rule
    works on logs. The pool is this round's `scores` plus the scores accepted in recent rounds,
    `accepted` = [(that round's median score, its accepted scores), ...]. MD drifts as training
    goes, so each past round's scores are first rescaled by (this round's median / that round's
    median): the history lends its spread, this round its level (rounds whose median is not
    positive are left out). Median and MAD have a 50% breakdown point, so a minority of
    outliers moves the threshold little; the spread floor stops a few near-equal scores from
    flagging honest ones (with k = 2.5 and a floor of 0.1, nothing under e^0.25 = 1.28 x the
    median is flagged).
    """
    scores = np.asarray(scores)
    level = float(np.median(scores))
    history = [s * level / med for med, kept in accepted if med > 0 for s in kept]
    pool = np.log(np.maximum(np.concatenate([scores, history]), LOG_FLOOR))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(pool - np.median(pool)))), min_log_spread)
    return float(np.exp(np.median(pool) + k * spread))
