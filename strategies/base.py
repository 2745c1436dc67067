"""What every wrapper defense shares: delegation to an inner Flower strategy, the global
model of the current round, and a notebook (`RoundNotes`) for per-client observations.

Built the way Flower's `DifferentialPrivacyServerSideFixedClipping(strategy, ...)` is:
remember the global arrays in `configure_train`, inspect/correct replies in
`aggregate_train`, then delegate.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedguard.models import flat_from_arrays


class RoundNotes:
    """Per-round observations the strategies make, read by the recorder.

    Keyed by the sender's node id (from message metadata, never from what a client
    claims about itself). `timing` accumulates seconds per phase ("defense_s", ...).
    """

    def __init__(self) -> None:
        self.clients: dict[int, dict[str, Any]] = defaultdict(dict)
        self.timing: dict[str, float] = defaultdict(float)
        self.round: dict[str, Any] = {}

    def reset(self) -> None:
        self.clients.clear()
        self.timing.clear()
        self.round.clear()

    @contextmanager
    def timed(self, key: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing[key] += time.perf_counter() - start


def arrays_key(msg: Message) -> str:
    """Name of the ArrayRecord a reply carries (the reply validator checked there is one)."""
    return next(iter(msg.content.array_records))


class StrategyWrapper(Strategy):
    """Delegates everything to `inner`; subclasses override `aggregate_train`."""

    def __init__(self, inner: Strategy, notes: RoundNotes | None = None):
        self.inner = inner
        self.notes = notes or RoundNotes()
        self.global_arrays: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    # checkpoint/resume: a subclass with state of its own extends both (plain tensors,
    # lists and numbers only: checkpoints load with torch.load(weights_only=True)); an inner
    # strategy with a `state_dict` (a wrapper, a fedguard aggregator) is saved with it
    def state_dict(self) -> dict[str, Any]:
        inner = self.inner.state_dict() if hasattr(self.inner, "state_dict") else None
        return {"inner": inner}

    def aggregate_kept(self, server_round: int, replies: Iterable[Message], keep
                       ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of the replies a filtering defense keeps: `keep(valid)`
        (timed as `defense_s`) returns one bool per valid reply. With fewer than two valid
        replies, or before this wrapper has seen the round's global model, nothing is filtered."""
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if len(valid) < 2 or self.global_arrays is None:
            return self.inner.aggregate_train(server_round, replies)
        with self.notes.timed("defense_s"):
            gone = {id(m) for m, kept in zip(valid, keep(valid)) if not kept}
        return self.inner.aggregate_train(server_round, [m for m in replies if id(m) not in gone])

    def flat_updates(self, replies: list[Message]) -> tuple[Tensor, list[Tensor]]:
        """(the flat global model of this round, each reply's flat update `w_i - w_global`)."""
        base = flat_from_arrays(self.global_arrays)
        return base, [flat_from_arrays(m.content[arrays_key(m)]) - base for m in replies]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.inner, "load_state_dict") and state.get("inner") is not None:
            self.inner.load_state_dict(state["inner"])
