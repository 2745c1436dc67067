"""`defense=mddsc`: memorization discrepancy against a history of global models, with
discrepancy-aware correction of suspicious client updates before aggregation.

Federated form of Zhu et al. (ICML 2023). The paper corrects *samples* of one learner;
here the server corrects *updates*. Each round:
  1. take the next batch of the server's clean validation stream;
  2. score every client's proposed model (global + update) by the mean over the batch of
     `KL(p_hist || p_client)` against the reference snapshot(s) of the history
     (all clients in one vmapped call);
  3. threshold: the paper's schedule `tau0 + slope * t`, or a robust rule over this round's
     scores and recently accepted ones;
  4. correct the updates above it: `scale` (largest alpha in [0, 1] with
     MD(global + alpha * update) under the threshold), `pgd` (projected steps on the update
     that descend the validation loss until MD is under the threshold; falls back to scale),
     or `drop`;
  5. delegate to the inner strategy, then push the new global model into the history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedguard.defense.correction import batched_scale_correction, scale_correction
from fedguard.defense.history import ModelHistory
from fedguard.defense.md import md_against, reference_logits, unflatten_state
from fedguard.defense.thresholds import robust_threshold, schedule_threshold
from fedguard.models import arrays_from_flat, flat_from_arrays
from fedguard.streams import IndexStream, StreamCursor
from strategies.base import RoundNotes, StrategyWrapper, arrays_key

VAL_STREAM_ID = 2**31 - 1  # stream id of the server's validation stream


class MDDSC(StrategyWrapper):
    """Built from the `defense` config section (`settings`): `val_batch`, `score_chunk` and the
    sub-sections `history` (size, stride, dtype, reference, lag, spill), `threshold` (rule, k,
    min_log_spread, window, tau0, slope) and `correction` (method, scale_iters, pgd_eps,
    pgd_steps, pgd_lr); see `fedguard/config` for what each knob means."""

    def __init__(self, inner: Strategy, model: nn.Module, val_x: np.ndarray, val_y: np.ndarray, settings, *,
                 seed: int = 0, spill_dir: str | None = None, device: torch.device | None = None,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        h, self.thresholds, self.corrections = settings.history, settings.threshold, settings.correction
        self.device = device or torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.val_x, self.val_y = val_x, val_y
        self.val_stream = IndexStream(np.arange(len(val_y)), seed, VAL_STREAM_ID)
        self.val_batch = min(settings.val_batch, len(val_y))
        self.history = ModelHistory(h.size, h.stride, h.dtype, spill=h.spill, spill_dir=spill_dir)
        self.reference, self.lag = h.reference, h.lag
        if settings.score_chunk is not None and settings.score_chunk < 1:
            raise ValueError(f"score_chunk must be >= 1 or None, got {settings.score_chunk}")
        self.score_chunk = settings.score_chunk  # candidates per vmap call (None: all at once)
        self._ref_logits: list[torch.Tensor] | None = None  # the references' logits on this round's batch
        self.accepted: deque[tuple[float, list[float]]] = deque(maxlen=self.thresholds.window)  # (median, accepted)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """History of global models, recently accepted scores, validation-stream cursor."""
        cur = self.val_stream.cursor
        return {**super().state_dict(), "history": self.history.state_dict(),
                "accepted": [[float(med), [float(s) for s in acc]] for med, acc in self.accepted],
                "val_cursor": [int(cur.epoch), int(cur.position)]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.history.load_state_dict(state["history"])
        self.accepted.clear()
        self.accepted.extend((float(med), [float(s) for s in acc]) for med, acc in state["accepted"])
        self.val_stream.cursor = StreamCursor(*(int(v) for v in state["val_cursor"]))

    # ------------------------------------------------------------------ scoring
    def _val_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.val_stream.next_batch(self.val_batch)
        return (torch.from_numpy(self.val_x[idx]).to(self.device),
                torch.from_numpy(self.val_y[idx]).to(self.device))

    def scores(self, stacked: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean MD per candidate `[K]` on `x`, averaged over the reference snapshot(s),
        `score_chunk` candidates per vmapped call. Within a round (see `aggregate_train`) the
        references' logits on the round's batch are computed once and reused by every call."""
        logits = self._ref_logits
        if logits is None:
            logits = [reference_logits(self.model, snap.params.to(self.device), x)
                      for snap in self.history.reference(self.reference, self.lag)]
        total = torch.zeros(stacked.shape[0], device=self.device)
        for ref in logits:
            total += md_against(self.model, ref, stacked, x, chunk_size=self.score_chunk).mean(dim=1)
        return total / len(logits)

    def threshold(self, server_round: int, scores: np.ndarray) -> float:
        """The paper's schedule `tau0 + slope * round`, or the robust rule over this round's
        scores and the accepted scores of the last `threshold.window` rounds
        (`fedguard.defense.thresholds`)."""
        t = self.thresholds
        if t.rule == "schedule":
            return schedule_threshold(server_round, t.tau0, t.slope)
        return robust_threshold(scores, self.accepted, t.k, t.min_log_spread)

    # ------------------------------------------------------------------ correction
    def _md_of(self, candidate: torch.Tensor, x: torch.Tensor) -> float:
        return float(self.scores(candidate[None], x)[0])

    def _scale(self, base: torch.Tensor, update: torch.Tensor, x: torch.Tensor, tau: float) -> float:
        return scale_correction(lambda a: self._md_of(base + a * update, x), tau, self.corrections.scale_iters)

    def _pgd(self, base: torch.Tensor, update: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             tau: float) -> tuple[torch.Tensor, int]:
        """Steps on the update descending the validation loss, projected to an L2 ball of
        radius `pgd_eps * ||update||` around it, until MD is under `tau`."""
        c = self.corrections
        radius = c.pgd_eps * float(update.norm())
        u = update.clone()
        for step in range(1, c.pgd_steps + 1):
            u.requires_grad_(True)
            logits = functional_call(self.model, unflatten_state(self.model, base + u), (x,))
            grad, = torch.autograd.grad(F.cross_entropy(logits, y), u)
            with torch.no_grad():
                u = u - c.pgd_lr * grad
                delta = u - update
                if float(delta.norm()) > radius:
                    u = update + delta * (radius / float(delta.norm()))
            if self._md_of(base + u, x) <= tau:
                return u.detach(), step
        return u.detach(), -1

    # ------------------------------------------------------------------ the round
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [m for m in replies if not m.has_error()]
        if self.global_arrays is None or not valid:
            return self.inner.aggregate_train(server_round, replies)
        base = flat_from_arrays(self.global_arrays).to(self.device)
        if len(self.history) == 0:
            self.history.push(server_round - 1, base.cpu())
        with self.notes.timed("defense_s"):
            x, y = self._val_batch()
            # the reference snapshot(s) are read (a spilled history: from disk) and run on this
            # round's batch once, for the scoring and every correction step
            self._ref_logits = [reference_logits(self.model, s.params.to(self.device), x)
                                for s in self.history.reference(self.reference, self.lag)]
            try:
                kept = self._defend(server_round, base, valid, x, y)
            finally:
                self._ref_logits = None
        kept_ids = {id(m) for m in kept}
        arrays, metrics = self.inner.aggregate_train(
            server_round, [m for m in replies if m.has_error() or id(m) in kept_ids])
        if arrays is not None:
            self.history.push(server_round, flat_from_arrays(arrays))
        self.notes.round["history_bytes"] = self.history.nbytes
        if self.history.spill:
            self.notes.round["history_disk_bytes"] = self.history.disk_bytes
        return arrays, metrics

    def _correct(self, base: torch.Tensor, updates: torch.Tensor, md_one: torch.Tensor, x: torch.Tensor,
                 y: torch.Tensor, tau: float) -> list[tuple[torch.Tensor | None, str]]:
        """(corrected update or None for dropped, what was done) for each flagged update."""
        method = self.corrections.method
        if method == "drop":
            return [(None, "drop")] * len(updates)
        if method == "pgd":
            out = []
            for update in updates:
                new_update, steps = self._pgd(base, update, x, y, tau)
                if steps < 0:  # PGD did not get under the threshold: scale what it found
                    new_update = new_update * self._scale(base, new_update, x, tau)
                out.append((new_update, f"pgd:{steps}"))
            return out
        # scale: one bisection for all flagged updates, one batched MD call per step; MD at
        # alpha = 1 is the score, at alpha = 0 the global model's own (the same for all)
        md_zero = self.scores(base[None], x).cpu().expand(len(updates))
        alphas = batched_scale_correction(
            lambda a: self.scores(base + a.to(self.device)[:, None] * updates, x).cpu(), tau, len(updates),
            iters=self.corrections.scale_iters, md_one=md_one, md_zero=md_zero)
        return [(float(a) * u, f"scale:{float(a):.4f}") for a, u in zip(alphas, updates)]

    def _defend(self, server_round: int, base: torch.Tensor, replies: list[Message], x: torch.Tensor,
                y: torch.Tensor) -> list[Message]:
        keys = [arrays_key(m) for m in replies]
        stacked = torch.stack([flat_from_arrays(m.content[k]) for m, k in zip(replies, keys)]).to(self.device)
        scores = self.scores(stacked, x).cpu().numpy()
        tau = self.threshold(server_round, scores)
        updates = stacked - base
        flagged = [i for i, score in enumerate(scores) if score > tau]
        corrected = self._correct(base, updates[flagged], torch.from_numpy(scores[flagged]), x, y, tau) if flagged else []
        corrections = dict(zip(flagged, corrected))
        kept = []
        for i, (msg, key) in enumerate(zip(replies, keys)):
            new_update, action = corrections.get(i, (updates[i], None))
            self.notes.clients[msg.metadata.src_node_id].update(
                md=float(scores[i]), threshold=float(tau), flagged=i in corrections,
                update_norm=float(updates[i].norm()), correction=action)
            if new_update is None:  # dropped
                continue
            if action is not None:
                msg.content[key] = arrays_from_flat((base + new_update).cpu(), self.global_arrays)
            kept.append(msg)
        self.accepted.append((float(np.median(scores)), [float(scores[i]) for i in range(len(scores))
                                                          if i not in corrections]))
        return kept
