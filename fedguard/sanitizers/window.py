"""Offline sanitisers over a buffered window of the client's own stream (EPIC, ISPL, Confusion).

The published methods look at a whole training set; a client of an online stream sees ~
`local_steps * batch_size` new samples a round. So each of them runs on a *window*: the ids of
the last `window` distinct stream samples this client has drawn (its own storage; re-read
through `fetch`, which applies the same outsider poisons the stream applied, so the window is
exactly what the client received). Every `every` participations the method's `select` scores
the whole window with the global model just received and returns which samples it believes
are poisoned; then the round's batches lose every sample whose id is currently removed.

Removed ids: `permanent` methods (EPIC: "dropped for good") only ever add to the set; the
others replace the verdict of every id in the window by the latest one (ids that left the
window keep their last verdict).

State (ConfigRecord `state_key` of `Context.state`, JSON-able, echoed to the server): `seen`
(the window's ids, oldest first), `removed` (sorted ids), `participations`, `runs`. It stays
O(window) per client.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from torch import Tensor, nn

from fedguard.protocol import WINDOW_STATE
from fedguard.sanitizers.base import DROPPED, Batch, Sanitizer

Fetch = Callable[[np.ndarray], tuple[Tensor, Tensor]]  # pool ids -> (x, y) as the stream gives them


def update_window(seen: list[int], new_ids: np.ndarray, window: int) -> list[int]:
    """The last `window` distinct ids after drawing `new_ids` (a re-drawn id moves to the end)."""
    order = dict.fromkeys(int(i) for i in seen)
    for i in np.asarray(new_ids, dtype=np.int64).tolist():
        order.pop(i, None)
        order[i] = None
    return list(order)[-window:] if window > 0 else []


class WindowSanitizer(Sanitizer):
    """Base of the offline sanitisers: subclasses implement `select`."""

    online = False
    permanent = False  # True: a removed id is never re-admitted
    state_key = WINDOW_STATE

    def __init__(self, window: int = 1024, every: int = 1):
        super().__init__()
        if window < 1 or every < 1:
            raise ValueError(f"window ({window}) and every ({every}) must be >= 1")
        self.window, self.every = int(window), int(every)
        self.batch_ids: list[np.ndarray] | None = None  # set by train_sanitized before sanitize
        self.fetch: Fetch | None = None

    def select(self, model: nn.Module, x: Tensor, y: Tensor, ids: np.ndarray) -> Tensor:
        """Bool mask over the window (x, y): True where the sample is judged poisoned.
        `model` is the global model of this round (eval mode is the method's choice; it must
        leave the model's weights, mode and gradients as they were)."""
        raise NotImplementedError

    def sanitize(self, model: nn.Module, batches: list[Batch], context: Context, server_round: int
                 ) -> tuple[list[Batch], list[Tensor]]:
        if self.batch_ids is None or self.fetch is None:
            raise RuntimeError(f"{self.name}: train_sanitized must set batch_ids and fetch first")
        rec = context.state.config_records.get(self.state_key)
        seen = [int(i) for i in rec["seen"]] if rec is not None else []
        removed = set(int(i) for i in rec["removed"]) if rec is not None else set()
        participations = int(rec["participations"]) if rec is not None else 0
        runs = int(rec["runs"]) if rec is not None else 0

        seen = update_window(seen, np.concatenate(self.batch_ids), self.window)
        if participations % self.every == 0:
            ids = np.asarray(seen, dtype=np.int64)
            x, y = self.fetch(ids)
            verdict = self.select(model, x, y, ids).cpu().numpy().astype(bool)
            if len(verdict) != len(ids):
                raise RuntimeError(f"{self.name}.select returned {len(verdict)} verdicts for {len(ids)} samples")
            if not self.permanent:
                removed -= set(ids.tolist())
            removed |= set(ids[verdict].tolist())
            runs += 1
        context.state.config_records[self.state_key] = ConfigRecord({
            "seen": seen, "removed": sorted(removed), "participations": participations + 1, "runs": runs})

        out, flags = [], []
        removed_arr = np.fromiter(removed, dtype=np.int64, count=len(removed))
        for (x, y), ids in zip(batches, self.batch_ids):
            mask = torch.from_numpy(np.isin(ids, removed_arr)).to(y.device)
            self.stats[DROPPED] += int(mask.sum())
            out.append((x[~mask], y[~mask]))
            flags.append(mask)
        return out, flags
