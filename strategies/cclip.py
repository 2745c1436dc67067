"""`defense=cclip`: centered clipping (Karimireddy, He, Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021), on client updates.

With updates u_1..u_n, a radius tau and L iterations:

    v_0     = the previous round's aggregate (`init="previous"`; 0 in the first round) or 0
    v_{l+1} = v_l + (1/n) sum_i (u_i - v_l) * min(1, tau / ||u_i - v_l||)
    aggregate = v_L

An update far from the center moves it by at most tau / n, however large it is. The paper
clips worker momenta around the previous aggregate momentum; here the clients' updates (their
accumulated local steps) play the momenta's part and the previous aggregate update is the
center. `tau=None` takes, at each iteration, the median of the distances ||u_i - v_l|| (a
scale-free radius, fedguard's choice for runs across models whose update sizes differ by
orders of magnitude); a number is the paper's fixed radius.

What the server holds: the global model it sent, and (`init="previous"`) the previous
aggregate update (one model-sized vector, checkpointed).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Message

from strategies.base import RoundNotes
from strategies.clipping import clip_factors
from strategies.updates import Aggregate, UpdateAggregator

CCLIP_INITS = ("previous", "zero")


def centered_clip(updates: np.ndarray, center: np.ndarray, tau: float | None, iters: int) -> np.ndarray:
    """v_L of the iteration above from v_0 = `center` (tau None: the median distance each time)."""
    v = np.array(center, dtype=np.float64)
    for _ in range(iters):
        diff = updates - v
        norms = np.linalg.norm(diff, axis=1)
        bound = float(np.median(norms)) if tau is None else tau
        v = v + (diff * clip_factors(norms, bound)[:, None]).mean(axis=0)
    return v


class CenteredClipping(UpdateAggregator):
    def __init__(self, tau: float | None = None, iters: int = 1, init: str = "previous",
                 notes: RoundNotes | None = None, **flower):
        super().__init__(notes, **flower)
        if init not in CCLIP_INITS:
            raise ValueError(f"cclip init {init!r}; allowed: {', '.join(CCLIP_INITS)}")
        if iters < 1 or (tau is not None and tau <= 0):
            raise ValueError(f"cclip needs iters >= 1 and tau > 0 (or None), got iters={iters}, tau={tau}")
        self.tau, self.iters, self.init = tau, int(iters), init
        self.previous: np.ndarray | None = None

    def aggregate_updates(self, server_round: int, updates: np.ndarray, weights: np.ndarray,
                          replies: list[Message]) -> Aggregate:
        center = self.previous if self.init == "previous" and self.previous is not None else np.zeros(updates.shape[1])
        v = centered_clip(updates, center, self.tau, self.iters)
        if self.init == "previous":
            self.previous = v
        return Aggregate(v, range(len(updates)))

    def state_dict(self) -> dict:
        return {"previous": None if self.previous is None else torch.from_numpy(self.previous.copy())}

    def load_state_dict(self, state: dict) -> None:
        prev = state.get("previous")
        self.previous = None if prev is None else prev.double().numpy()
