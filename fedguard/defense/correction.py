"""Discrepancy-aware scale correction of a suspicious update (federated form of DSC).

The corrected model is `global + alpha * update`; `scale_correction` finds the largest
alpha in [0, 1] whose MD stays under the threshold, by bisection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def scale_correction(md_of_alpha: Callable[[float], float], threshold: float, iters: int = 20) -> float:
    """Largest alpha in [0, 1] with `md_of_alpha(alpha) <= threshold`, to within 2**-iters.

    Returns 1.0 if md(1) <= threshold (no correction), 0.0 if even md(0) > threshold (drop the
    update: md(0) is the MD of the global model itself). Otherwise bisection keeps `lo`
    feasible and `hi` infeasible, and returns `lo`: md(result) <= threshold always holds, even
    when md is not monotone in alpha (then `lo` is the edge of some feasible stretch).
    Costs at most `iters + 2` evaluations.
    """
    if md_of_alpha(1.0) <= threshold:
        return 1.0
    if md_of_alpha(0.0) > threshold:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if md_of_alpha(mid) <= threshold:
            lo = mid
        else:
            hi = mid
    return lo


def batched_scale_correction(md_of_alphas: Callable[[Tensor], Tensor], threshold: float,
                             count: int, iters: int = 20, md_one: Tensor | None = None,
                             md_zero: Tensor | None = None) -> Tensor:
    """`scale_correction` for `count` updates at once: `md_of_alphas(alphas[count])` scores
    `global + alphas[i] * update_i` for all i in one call (one batched MD evaluation per
    bisection step instead of one per update and step). Same guarantees, per update.

    `md_one` / `md_zero` (`[count]`): the MD at alpha = 1 and alpha = 0 when the caller already
    has them (the round's scores; the global model's own MD, the same for every update), each
    saving one batched call; `iters` steps bring alpha within 2**-iters of the edge.
    """
    lo, hi = torch.zeros(count), torch.ones(count)
    full = (md_of_alphas(hi) if md_one is None else md_one) <= threshold
    feasible0 = (md_of_alphas(lo) if md_zero is None else md_zero) <= threshold
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        ok = md_of_alphas(mid) <= threshold
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(full, torch.ones(count), torch.where(feasible0, lo, torch.zeros(count)))
