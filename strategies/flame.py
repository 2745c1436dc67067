"""`defense=flame`: FLAME (Nguyen et al., "FLAME: Taming Backdoors in Federated Learning",
USENIX Security 2022), around `defense.inner`.

With updates u_i = w_i - w_global of n replies:

  1. filter: HDBSCAN (min_cluster_size = floor(n/2) + 1, min_samples = 1, single cluster
     allowed) on the cosine distances c_ij = 1 - cos(u_i, u_j); the replies in the largest
     cluster are admitted, the rest (HDBSCAN's outliers) left out. No cluster found: all admitted.
     When all updates form one cluster (no attack, or attackers among the honest), HDBSCAN
     labels only the points still in it at its final split, at least n/2 + 1 of them: measured
     on random honest-only rounds of 20, 11 to 15 admitted. That is how HDBSCAN labels a single
     cluster (`allow_single_cluster`, sklearn's implementation), kept as is;
  2. clip: S = median_i ||u_i|| over all n replies; each admitted u_i -> u_i * min(1, S / ||u_i||);
  3. aggregate: the inner strategy (the paper: the mean, `defense.inner=fedavg`) over the
     admitted, clipped replies;
  4. noise: w_global' = aggregate + N(0, (lambda * S)^2 I), drawn from a generator seeded by
     (seed, round).

The cosine distances are taken between updates, not whole models: on whole weight vectors the
common global model dominates every cosine (all pairwise distances near 0). The
paper derives lambda from an (epsilon, delta) budget; here it is a plain constant, default
0.001 (fedguard's choice, small next to the clipped updates; set it from the paper's budget
when reproducing a specific table). The noise goes to the parameters only: BatchNorm running
statistics (when the model is known) are left noise-free, a variance pushed negative by noise
would break the model.

What the server holds: the global model it sent this round. Per-client notes: `flagged` (left
out by the clustering), `flame_cluster` (HDBSCAN label, -1 outlier), `clip_factor`; per round
`flame_noise_std`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedguard.models import arrays_from_flat, flat_from_arrays
from strategies.base import RoundNotes, StrategyWrapper, arrays_key
from strategies.clipping import clip_factors


def cosine_distances(updates: np.ndarray) -> np.ndarray:
    """1 - cos(u_i, u_j) in float64, in [0, 2], 0 on the diagonal (a zero update: cosine 0)."""
    u = np.asarray(updates, dtype=np.float64)
    norms = np.linalg.norm(u, axis=1)
    unit = np.divide(u, norms[:, None], out=np.zeros_like(u), where=norms[:, None] > 0)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def flame_clusters(updates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(admitted mask, HDBSCAN labels) of step 1."""
    from sklearn.cluster import HDBSCAN  # here: scikit-learn costs ~1 s to import in every process

    n = len(updates)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", copy=False,
                     allow_single_cluster=True).fit(cosine_distances(updates)).labels_
    clustered = labels[labels >= 0]
    if len(clustered) == 0:
        return np.ones(n, dtype=bool), labels
    return labels == np.bincount(clustered).argmax(), labels


class FLAME(StrategyWrapper):
    def __init__(self, inner: Strategy, noise: float = 0.001, seed: int = 0, param_mask: Tensor | None = None,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        if noise < 0:
            raise ValueError(f"flame noise lambda must be >= 0, got {noise}")
        self.noise, self.seed, self.param_mask = float(noise), int(seed), param_mask

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if sum(not m.has_error() for m in replies) < 2 or self.global_arrays is None:
            return self.inner.aggregate_train(server_round, replies)
        bound = 0.0

        def keep(valid: list[Message]) -> list[bool]:
            nonlocal bound
            admitted, bound = self._filter_and_clip(valid)
            return admitted.tolist()

        arrays, metrics = self.aggregate_kept(server_round, replies, keep)
        if arrays is not None and self.noise > 0:
            arrays = self._add_noise(server_round, arrays, self.noise * bound)
        self.notes.round["flame_noise_std"] = self.noise * bound
        return arrays, metrics

    def _filter_and_clip(self, replies: list[Message]) -> tuple[np.ndarray, float]:
        """Steps 1-2 on `replies` in place (notes per client); returns (admitted mask, S)."""
        base, flat = self.flat_updates(replies)
        updates = torch.stack(flat)
        admitted, labels = flame_clusters(updates.numpy())
        norms = updates.double().norm(dim=1).numpy()
        bound = float(np.median(norms))
        factors = clip_factors(norms, bound)
        for msg, update, ok, label, factor in zip(replies, updates, admitted, labels, factors):
            self.notes.clients[msg.metadata.src_node_id].update(
                flagged=not ok, flame_cluster=int(label), clip_factor=float(factor))
            if ok and factor < 1.0:
                msg.content[arrays_key(msg)] = arrays_from_flat(base + update * float(factor), self.global_arrays)
        return admitted, bound

    def _add_noise(self, server_round: int, arrays: ArrayRecord, std: float) -> ArrayRecord:
        flat = flat_from_arrays(arrays)
        rng = np.random.default_rng([self.seed, server_round])
        noise = torch.from_numpy(rng.normal(0.0, std, size=flat.numel())).float()
        if self.param_mask is not None:
            noise = noise * self.param_mask
        return arrays_from_flat(flat + noise, arrays)
