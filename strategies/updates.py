"""`UpdateAggregator`: the base of fedguard's own aggregators, which work on client updates.

A Flower `FedAvg` (sampling, messages, evaluation and metric aggregation are Flower's) whose
`aggregate_train` hands a subclass the round's updates instead of the models:

    U[i] = w_i - w_global      float64, one row per valid reply, in reply order

where `w_global` is the global model this strategy sent in `configure_train`. The subclass
returns the aggregated update `u` (and the replies it used, for the metrics); the new global
model is `w_global + u`, cast back to the arrays' dtypes.

Every floating-point array that travels is part of the flat vector, BatchNorm running
statistics included (`fedguard.models`: integer buffers stay local), exactly as Flower's
strategies treat them: an aggregator's rule applies to them like to any coordinate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedguard.models import arrays_from_flat
from strategies.base import RoundNotes, arrays_key


def flat64(arrays: ArrayRecord) -> np.ndarray:
    """All arrays of a record as one flat float64 vector, in the record's key order."""
    return np.concatenate([np.asarray(a.numpy(), dtype=np.float64).reshape(-1) for a in arrays.values()])


class Aggregate(NamedTuple):
    update: np.ndarray  # the aggregated update, float64 [d]
    used: Sequence[int]  # rows of U whose replies' metrics are aggregated


class UpdateAggregator(FedAvg):
    """Subclasses implement `aggregate_updates`; `notes` gets per-client observations."""

    def __init__(self, notes: RoundNotes | None = None, **flower: Any):
        super().__init__(**flower)
        self.notes = notes or RoundNotes()
        self.global_arrays: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_updates(self, server_round: int, updates: np.ndarray, weights: np.ndarray,
                          replies: list[Message]) -> Aggregate | None:
        """The round's aggregate from `updates` [n, d] and the replies' `num-examples` weights
        [n]; None keeps the previous global model."""
        raise NotImplementedError

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(list(replies), is_train=True)
        if not valid:
            return None, None
        if self.global_arrays is None:
            raise RuntimeError(f"{type(self).__name__} needs the global model: call configure_train first")
        base = flat64(self.global_arrays)
        updates = np.stack([flat64(m.content[arrays_key(m)]) - base for m in valid])
        weights = np.array([float(next(iter(m.content.metric_records.values()))[self.weighted_by_key])
                            for m in valid])
        with self.notes.timed("defense_s"):
            result = self.aggregate_updates(server_round, updates, weights, valid)
        if result is None:
            return None, None
        arrays = arrays_from_flat(torch.from_numpy(base + result.update), self.global_arrays)
        metrics = self.train_metrics_aggr_fn([valid[i].content for i in result.used], self.weighted_by_key)
        return arrays, metrics

    # checkpoint/resume (see StrategyWrapper): a stateful subclass extends both
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
