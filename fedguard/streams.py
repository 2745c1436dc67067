"""Online data streams.

A client's partition is consumed as a stream: each round the client takes its next
`local_steps` batches from a cursor; when the partition is exhausted it is reshuffled
(a new epoch). The order of epoch e is a permutation seeded by (seed, partition, e), so
the whole stream position is two integers, kept in `Context.state` between rounds (the
ConfigRecord `protocol.STREAM_STATE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context

from fedguard.protocol import STREAM_STATE


@dataclass
class StreamCursor:
    epoch: int = 0
    position: int = 0


class IndexStream:
    """Yields batches of indices into `indices`, reshuffling at each epoch boundary."""

    def __init__(self, indices: np.ndarray, seed: int, stream_id: int, cursor: StreamCursor | None = None):
        if len(indices) == 0:
            raise ValueError(f"stream {stream_id} has no samples")
        self.indices = np.asarray(indices)
        self.seed = seed
        self.stream_id = stream_id
        self.cursor = cursor or StreamCursor()

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.stream_id, epoch])
        return self.indices[rng.permutation(len(self.indices))]

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next `batch_size` indices (a batch may straddle an epoch boundary)."""
        out: list[np.ndarray] = []
        need = batch_size
        while need > 0:
            order = self._order(self.cursor.epoch)
            take = order[self.cursor.position:self.cursor.position + need]
            out.append(take)
            need -= len(take)
            self.cursor.position += len(take)
            if self.cursor.position >= len(order):
                self.cursor = StreamCursor(self.cursor.epoch + 1, 0)
        return np.concatenate(out)


def load_cursor(context: Context, key: str = STREAM_STATE) -> StreamCursor:
    record = context.state.config_records.get(key)
    if record is None:
        return StreamCursor()
    return StreamCursor(int(record["epoch"]), int(record["position"]))


def save_cursor(context: Context, cursor: StreamCursor, key: str = STREAM_STATE) -> None:
    context.state.config_records[key] = ConfigRecord({"epoch": cursor.epoch, "position": cursor.position})


def next_batches(context: Context, indices: np.ndarray, seed: int, stream_id: int, count: int,
                 batch_size: int) -> list[np.ndarray]:
    """The next `count` index batches of the stream over `indices` whose cursor lives in
    `context.state`; the cursor is advanced and saved back."""
    stream = IndexStream(indices, seed, stream_id, load_cursor(context))
    batches = [stream.next_batch(batch_size) for _ in range(count)]
    save_cursor(context, stream.cursor)
    return batches
