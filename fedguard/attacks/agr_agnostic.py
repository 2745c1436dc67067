"""MinMax and MinSum (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021): the AGR-agnostic attacks,
full-knowledge form (the attacker reads every benign update of the round). The math, on flat
update vectors; the server-side placement is `strategies.omniscient` (`attack=minmax|minsum`).

With g_1..g_n the benign updates, mean their mean and p a perturbation direction, every
malicious client sends

    g_m = mean + gamma * p,   gamma the largest gamma >= 0 that keeps

- MinMax: max_i ||g_m - g_i||^2 <= max_{i,j} ||g_i - g_j||^2
  (the malicious update is no farther from any benign update than two benign ones are);
- MinSum: sum_i ||g_m - g_i||^2 <= max_i sum_j ||g_i - g_j||^2
  (its summed squared distance to the benign updates is no larger than a benign one's).

The paper's perturbations (`attack.perturbation`): unit_vec p = -mean / ||mean|| (inverse unit
vector), std p = -std (inverse coordinate-wise standard deviation), sign p = -sign(mean)
(inverse sign). Scaling p by a constant scales gamma inversely and leaves g_m unchanged, so the
std's ddof does not matter.

gamma = 0 always satisfies both conditions (the mean is within the benign spread), and both
sides are convex in gamma, so the feasible gammas are an interval [0, gamma*]. The paper finds
gamma* by a halving search from gamma_init; `max_gamma` first doubles gamma_init until the
condition fails (the paper's search cannot leave [0, 2 gamma_init)), then bisects to a relative
tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PERTURBATIONS = ("unit_vec", "std", "sign")
AGR_AGNOSTIC = ("minmax", "minsum")


def perturbation(honest: Tensor, kind: str) -> Tensor:
    """The paper's perturbation p of the benign updates `honest` (k, d): unit_vec
    -mean/||mean||, std -std (population), sign -sign(mean). A zero mean gives p = 0."""
    mean = honest.mean(0)
    if kind == "unit_vec":
        norm = mean.norm()
        return -mean / norm if norm > 0 else torch.zeros_like(mean)
    if kind == "std":
        return -honest.std(0, unbiased=False)
    if kind == "sign":
        return -torch.sign(mean)
    raise ValueError(f"perturbation {kind!r}; allowed: {', '.join(PERTURBATIONS)}")


def max_gamma(feasible: Callable[[float], bool], gamma_init: float = 1.0, rel_tol: float = 1e-5,
              max_iters: int = 200) -> float:
    """The largest gamma >= 0 with `feasible(gamma)`, for a feasible set [0, gamma*] (gamma = 0
    is taken as feasible): double `gamma_init` until infeasible, then bisect until the bracket
    is within `rel_tol` of its upper end. Returns the feasible end of the bracket."""
    lo, hi = 0.0, float(gamma_init)
    for _ in range(max_iters):  # bracket: hi infeasible
        if not feasible(hi):
            break
        lo, hi = hi, 2.0 * hi
    else:
        return lo  # feasible as far as we looked (e.g. p = 0)
    for _ in range(max_iters):
        if hi - lo <= rel_tol * hi:
            break
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _distance_terms(honest: Tensor, p: Tensor) -> tuple[Tensor, Tensor, float, Tensor]:
    """For d_i = mean - g_i: (||d_i||^2, <d_i, p>, ||p||^2, D) in float64, D the benign pairwise
    squared distances; ||g_m(gamma) - g_i||^2 = ||d_i||^2 + 2 gamma <d_i, p> + gamma^2 ||p||^2."""
    g = honest.double()
    p = p.double()
    d = g.mean(0) - g
    pair = torch.cdist(g, g).square() if len(g) > 1 else torch.zeros(1, 1, dtype=torch.float64)
    return (d * d).sum(1), d @ p, float(p @ p), pair


def agr_agnostic_gamma(honest: Tensor, p: Tensor, kind: str, gamma_init: float = 1.0,
                       rel_tol: float = 1e-5) -> float:
    """gamma* of `kind` (minmax | minsum) for the benign updates `honest` (k, d) and direction `p`."""
    if kind not in AGR_AGNOSTIC:
        raise ValueError(f"AGR-agnostic attack {kind!r}; allowed: {', '.join(AGR_AGNOSTIC)}")
    dd, dp, pp, pair = _distance_terms(honest, p)
    if pp == 0.0:
        return 0.0

    def sq_dists(gamma: float) -> Tensor:  # ||g_m - g_i||^2 for every benign i
        return dd + 2.0 * gamma * dp + gamma * gamma * pp

    if kind == "minmax":
        bound = float(pair.max())
        return max_gamma(lambda gamma: float(sq_dists(gamma).max()) <= bound, gamma_init, rel_tol)
    bound = float(pair.sum(1).max())
    return max_gamma(lambda gamma: float(sq_dists(gamma).sum()) <= bound, gamma_init, rel_tol)


def agr_agnostic_update(honest: Tensor, kind: str, perturbation_kind: str = "unit_vec") -> tuple[Tensor, float]:
    """(the malicious update mean + gamma* p, gamma*) of MinMax or MinSum."""
    p = perturbation(honest, perturbation_kind)
    gamma = agr_agnostic_gamma(honest, p, kind)
    return (honest.double().mean(0) + gamma * p.double()).to(honest.dtype), gamma
