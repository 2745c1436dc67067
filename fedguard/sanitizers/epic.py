"""EPIC (Yang, Liu, Mirzasoleiman, "Not All Poisons are Created Equal", ICML 2022), run by a
client on a window of its own stream (`sanitizers/window.py`); its knobs are `sanitizer.epic.*`.

The paper's observation: the poisons that actually work end up isolated in gradient space,
away from the clean samples of the class they are labelled with. Each time it runs (every
`every` participations, from server round `start_round` on), with the global model just
received in eval mode:

    g_i = softmax(z_i) - onehot(y_i)          per-sample logit gradient of the CE loss (proxy)
    for every class c with n_c >= min_class samples in the window:
        D = Euclidean distances between the g_i of class c            (n_c x n_c)
        sim = max(D) - D                                              (>= 0)
        k_c = max(1, round_half_up(fraction * n_c))   (capped at n_c)
        S = greedy facility location: k_c times add the sample j maximising
            F(S + j) = sum_i max_{m in S + j} sim(i, m)               (F(empty) = 0)
        every sample of the class joins its nearest medoid (ties: the earlier-picked one)
        flag the samples of every cluster of size <= max_cluster (unless it is the
        whole class: a class in one cluster has nothing to be isolated from)

Flagged samples are dropped for good (`permanent`: the paper drops them from the training set
for the rest of training).

Budget. The budget is per class and computed from that class's own count, so it is right on
non-IID windows (the reference code sizes classes from their share of the data but then offsets
cluster ids by class * budget, as if every class had the same budget: here every class gets
its own id range `offset_c .. offset_c + k_c - 1`, offsets the running sum of the budgets).
The paper's subset sizes (0.1-0.3 of 50k samples) are fractions, so they carry over to a
1024-sample window unchanged: the mean cluster size is 1 / fraction either way.

Departures from the reference code (github YuYang0901/EPIC), deliberate:
- budgets: round-half-up per class, deterministic (the reference takes the ceiling of each
  class's share of the total and then removes one from random classes to hit the total);
- similarity: max(D) - D, a constant minus the distance as in CRAIG, on which EPIC builds
  (the submodlib dense Euclidean kernel the reference calls is, in the versions we read,
  exp(-D / d), d = the proxy dimension: nearly affine in D over the proxies' range [0, 2]);
  with any sim = const - D (const >= max D) the greedy picks the same medoids in the same
  order, so the constant is immaterial;
- assignment: every sample joins its nearest medoid (the reference leaves samples with zero
  similarity to every medoid, i.e. at the class's largest distance, unassigned: dropped);
- a cluster that is its whole class is never dropped, and classes under `min_class`
  are skipped (below).

Small classes. A class with fewer than `min_class` samples in the window (default 3) is
left alone: with one sample it is trivially an isolated cluster, and dropping it would delete
the rare honest classes of a non-IID client rather than poisons.

Warm-up. The paper starts dropping only after some epochs (`--drop_after`): the gradients of
an untrained model say nothing about the data. Before server round `start_round` the
sanitiser selects nothing (the window still fills; the base class counts those
participations as runs).

Cost: one forward pass over the window, then per class O(n_c^2) memory and time (distances,
similarities) plus the greedy, whose gain vector is updated after each pick from the rows
that pick improved only (a few hundred ms for a 1024-sample class on one CPU thread).

Where it falls short. EPIC targets poisons that are each isolated (the clean-label, per-sample
optimised poisons of the paper). Dirty-label poisons at a few percent of a window (BadNets,
blend, label flips) come in groups: every poison of one (true class, label) pair has nearly
the same proxy (~ onehot(true) - onehot(label) while the model has not learnt the poison), so
a 1024-sample window at 5% holds groups of ~5; they form clusters of several members that
survive max_cluster = 1 (a larger max_cluster catches them, at the price of the
clean samples in small clusters). Once the global model has learnt a backdoor its poisons sit
with the clean samples of the target class and nothing here separates them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Context
from torch import Tensor, nn
from torch.nn import functional as F

from fedguard.defense.md import _eval_mode
from fedguard.sanitizers.base import SANITIZERS
from fedguard.sanitizers.window import WindowSanitizer

_CHUNK = 512  # forward pass over the window this many samples at a time


def gradient_proxy(logits: Tensor, y: Tensor) -> Tensor:
    """softmax(z) - onehot(y): the gradient of the cross-entropy loss w.r.t. the logits."""
    p = torch.softmax(logits.float(), dim=1)
    return p - F.one_hot(y.long(), p.shape[1]).to(p.dtype)


def class_budget(n: int, fraction: float) -> int:
    """Medoids of a class of n samples: max(1, round_half_up(fraction * n)), at most n (0 for n = 0)."""
    if n <= 0:
        return 0
    return int(min(n, max(1, math.floor(fraction * n + 0.5))))


def pairwise_distances(g: Tensor) -> Tensor:
    """Euclidean distance matrix of the rows of g (exact, not the |a|^2 + |b|^2 - 2ab trick)."""
    return torch.cdist(g, g, compute_mode="donot_use_mm_for_euclid_dist")


def facility_location_greedy(sim: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Greedy maximisation of F(S) = sum_i max_{m in S} sim[i, m] (F(empty) = 0, sim >= 0).

    Returns (order, values): the `budget` chosen column indices in the order picked (ties: the
    lowest index) and F after each pick (non-decreasing). The marginal gains of all candidates,
    gain_j = sum_i relu(sim[i, j] - best_i), are kept in one vector and updated after each
    pick from the rows whose best similarity the pick raised only, so a step costs
    O(rows changed * n) instead of O(n^2).
    """
    n = sim.shape[0]
    budget = int(min(max(budget, 0), n))
    best = torch.zeros(n, dtype=sim.dtype, device=sim.device)
    gains = torch.clamp(sim, min=0).sum(0)
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    order, values = [], []
    for _ in range(budget):
        j = int(torch.argmax(gains.masked_fill(taken, -math.inf)))  # first maximal index
        taken[j] = True
        new_best = torch.maximum(best, sim[:, j])
        rows = torch.nonzero(new_best > best).flatten()
        if len(rows):
            block = sim[rows]
            gains -= (torch.clamp(block - best[rows, None], min=0)
                      - torch.clamp(block - new_best[rows, None], min=0)).sum(0)
        best = new_best
        order.append(j)
        values.append(best.sum())
    if not order:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=sim.dtype)
    return torch.tensor(order, dtype=torch.long), torch.stack(values).cpu()


def assign_to_medoids(dist: Tensor, medoids: Tensor) -> Tensor:
    """Position (in `medoids`) of each row's nearest medoid (ties: the earlier medoid)."""
    return torch.argmin(dist[:, medoids.to(dist.device)], dim=1).cpu()


def epic_clusters(g: Tensor, y: Tensor, fraction: float, min_class: int = 3
                  ) -> tuple[Tensor, dict[int, Tensor]]:
    """Per-class facility-location clustering of the proxies g (N, C) with labels y (N,).

    Returns (cluster, medoids): cluster[i] is sample i's global cluster id (-1 for classes
    below `min_class`, left unclustered), class c owning ids offset_c .. offset_c + k_c - 1;
    medoids[c] the window indices of class c's medoids, in greedy order (cluster offset_c + t
    is the cluster of medoids[c][t]).
    """
    y = y.cpu()
    cluster = torch.full((len(y),), -1, dtype=torch.long)
    medoids: dict[int, Tensor] = {}
    offset = 0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        if len(idx) < max(1, min_class):
            continue
        dist = pairwise_distances(g[idx.to(g.device)].double())
        sim = dist.max() - dist
        k = class_budget(len(idx), fraction)
        order, _ = facility_location_greedy(sim, k)
        cluster[idx] = offset + assign_to_medoids(dist, order)
        medoids[int(c)] = idx[order]
        offset += k
    return cluster, medoids


def small_clusters(cluster: Tensor, y: Tensor, max_size: int) -> Tensor:
    """True for the samples whose cluster (id >= 0) has at most `max_size` members, unless
    that cluster is its whole class (one cluster: nothing to be isolated from)."""
    cluster, y = cluster.cpu(), y.cpu().long()
    flags = torch.zeros(len(cluster), dtype=torch.bool)
    valid = cluster >= 0
    if not valid.any() or max_size < 1:
        return flags
    sizes = torch.bincount(cluster[valid])[cluster[valid]]
    class_n = torch.bincount(y[valid])[y[valid]]
    flags[valid] = (sizes <= max_size) & (sizes < class_n)
    return flags


@SANITIZERS.register("epic", "EPIC: drop the samples isolated in logit-gradient space, per class, from the "
                     "stream window (Yang et al., ICML 2022)", knobs=("window", "every"))
class EPICSanitizer(WindowSanitizer):
    name = "epic"
    state_key = "epic"
    permanent = True

    def __init__(self, window: int = 1024, every: int = 1, fraction: float = 0.1, max_cluster: int = 1,
                 min_class: int = 3, start_round: int = 5):
        super().__init__(window, every)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"epic fraction must be in (0, 1], got {fraction}")
        self.fraction, self.max_cluster = float(fraction), int(max_cluster)
        self.min_class, self.start_round = int(min_class), int(start_round)
        if max_cluster < 0 or min_class < 1:
            raise ValueError(f"epic max_cluster ({max_cluster}) must be >= 0 and min_class ({min_class}) >= 1")
        self._round: int | None = None  # the server round (begin_round); None: select always runs

    @classmethod
    def from_config(cls, san) -> EPICSanitizer:
        e = san.epic
        return cls(san.window, san.every, e.fraction, e.max_cluster, e.min_class, e.start_round)

    def begin_round(self, model: nn.Module, context: Context, server_round: int) -> None:
        super().begin_round(model, context, server_round)
        self._round = int(server_round)

    def proxies(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The gradient proxies of the window under `model` (eval mode, no grad), on CPU."""
        device = next(model.parameters()).device
        out = []
        with torch.no_grad(), _eval_mode(model):
            for s in range(0, len(y), _CHUNK):
                logits = model(x[s:s + _CHUNK].to(device))
                out.append(gradient_proxy(logits, y[s:s + _CHUNK].to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def select(self, model: nn.Module, x: Tensor, y: Tensor, ids: np.ndarray) -> Tensor:
        if (self._round is not None and self._round < self.start_round) or len(y) == 0:
            return torch.zeros(len(y), dtype=torch.bool)
        g = self.proxies(model, x, y)
        cluster, _ = epic_clusters(g, y, self.fraction, self.min_class)
        return small_clusters(cluster, y, self.max_cluster)
