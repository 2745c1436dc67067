"""Server-side norm clipping of client updates, as a wrapper around any inner strategy.

The classic baseline of the accumulative-poisoning papers: each update `w_i - w_global` is
scaled to norm at most `bound`. The bound is fixed (`clip_norm`) or adaptive: `multiplier`
times the median update norm of the round (robust to a minority of boosted updates).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedguard.models import arrays_from_flat
from strategies.base import RoundNotes, StrategyWrapper, arrays_key


def clip_factors(norms: np.ndarray, bound: float) -> np.ndarray:
    """Scale factor per update: min(1, bound / norm) (1 for a zero update)."""
    norms = np.asarray(norms, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(norms > bound, bound / np.maximum(norms, 1e-30), 1.0)


class NormClipping(StrategyWrapper):
    def __init__(self, inner: Strategy, clip_norm: float | None = None, multiplier: float = 1.0,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        self.clip_norm = clip_norm
        self.multiplier = multiplier

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if valid and self.global_arrays is not None:
            with self.notes.timed("defense_s"):
                self._clip(valid)
        return self.inner.aggregate_train(server_round, replies)

    def _clip(self, replies: list[Message]) -> None:
        base, updates = self.flat_updates(replies)
        norms = np.array([u.norm().item() for u in updates])
        bound = self.clip_norm if self.clip_norm is not None else self.multiplier * float(np.median(norms))
        factors = clip_factors(norms, bound)
        for msg, update, norm, factor in zip(replies, updates, norms, factors):
            if factor < 1.0:
                clipped = base + update * torch.tensor(float(factor))
                msg.content[arrays_key(msg)] = arrays_from_flat(clipped, self.global_arrays)
            self.notes.clients[msg.metadata.src_node_id].update(
                update_norm=float(norm), clip_bound=float(bound), clip_factor=float(factor))
