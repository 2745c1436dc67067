"""Sample-level discrepancy-aware correction (DSC; Zhu et al., ICML 2023), run by a client.

The paper's algorithm (centralized online learning), applied to each incoming batch right
before its SGD step, with the model as it is then (`online` sanitiser):

    t = the client's online step count (batches it has processed, over the whole run)
    threshold = tau0 + slope * t
    repeat at most `steps` times:
        if mean_x KL(p_hist(x) || p_cur(x)) <= threshold: stop
        x <- x - step * sign(grad_x CE(cur(x), y))        (descent: easier for the current model)
        x <- clamp(project_{L-inf eps}(x; x_original), 0, 1)
    train on the corrected batch (one ordinary SGD step)

p = softmax(logits), no temperature, both models in eval mode (`defense.md.md_per_sample`).
Values outside [0, 1] in the original data (e.g. synthetic features) bound the clamp there:
the box is [min(0, x0), max(1, x0)] elementwise, i.e. exactly [0, 1] for images.

Historical model: the global model this client received `history_lag` participations ago
(1 = at its previous participation; 0 = this round's global model, i.e. MD against the start
of the round). The paper used a fixed checkpoint 20 epochs behind: with `history_round` the
historical model is instead the global model received in that round (or at the first
participation after it), kept for the rest of the run. A client keeps its snapshots (the last
`history_lag` global models it saw, or the `history_round` one) as flat float32 vectors in an
ArrayRecord of its `Context.state` ("dsc-history"), and `t` plus their rounds in a
ConfigRecord ("dsc"). With fewer snapshots than the lag the oldest is used; with none (first
participation, or before `history_round`) nothing is corrected. The ArrayRecord is not echoed
to the server (checkpoints carry JSON state only): after a resume a client starts a new
history (its `t` goes on).

Pretraining: the paper corrects an online phase that starts from a trained model. Before
server round `start_round` the client trains on its batches as they are and `t` does not
count (its snapshots are still kept), so `t` is the step count of the online phase.

Flags: the samples of a corrected batch (>= 1 step) are all flagged (DSC acts on the batch);
with `drop_above`, samples whose own MD after correction is above it are also flagged and are
dropped from the batch. With `skip_uncorrected`, a batch whose mean MD is still above the
threshold when the correction ends is dropped whole (its SGD step is skipped); with
`steps=0` that is an MD gate: DSC's test with the batch skipped instead of corrected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from fedguard.defense.md import _eval_mode, md_per_sample, unflatten_state
from fedguard.defense.thresholds import schedule_threshold
from fedguard.models import exchanged_state, flat_state
from fedguard.protocol import DSC_HISTORY, DSC_STATE
from fedguard.sanitizers.base import CORRECTED, DROPPED, MD, SANITIZERS, STEPS, Batch, Sanitizer

STATE_KEY = DSC_STATE  # ConfigRecord: t, rounds of the stored snapshots
HISTORY_KEY = DSC_HISTORY  # ArrayRecord: the snapshots, oldest first


@dataclass
class DSCResult:
    x: Tensor  # the corrected batch
    steps: int  # signed-gradient steps taken
    md_before: float  # batch-mean MD of the original batch
    md_after: float  # batch-mean MD of the returned batch
    md_samples: Tensor  # per-sample MD of the returned batch


def flat_params(model: nn.Module) -> Tensor:
    """The model's exchanged tensors as one flat float32 CPU vector (`unflatten_state` layout)."""
    return flat_state(exchanged_state(model))


def dsc_correct(model: nn.Module, hist_params: Tensor, x: Tensor, y: Tensor, threshold: float,
                eps: float = 0.2, step: float = 0.02, steps: int = 10) -> DSCResult:
    """Correct one batch against the historical model `hist_params` (flat, `exchanged_state`
    layout of `model`); `model` is the current model. Both in eval mode; the model's
    train/eval flags, weights and gradients are left as they were."""
    x0 = x.detach()
    hist = hist_params.to(device=x0.device)
    lo, hi = torch.clamp(x0, max=0.0), torch.clamp(x0, min=1.0)  # [0, 1], widened to x0 outside it
    xa = x0.clone()
    taken = 0
    with _eval_mode(model):
        hist_state = unflatten_state(model, hist)

        def md(inp: Tensor) -> Tensor:
            with torch.no_grad():
                return md_per_sample(functional_call(model, hist_state, (inp,)), model(inp))

        per_sample = md(xa)
        before = float(per_sample.mean())
        while float(per_sample.mean()) > threshold and taken < steps:
            xg = xa.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y)
            (grad,) = torch.autograd.grad(loss, xg)
            xa = xa - step * grad.sign()
            xa = torch.minimum(torch.maximum(xa, x0 - eps), x0 + eps)
            xa = torch.minimum(torch.maximum(xa, lo), hi)
            taken += 1
            per_sample = md(xa)
    return DSCResult(xa.detach(), taken, before, float(per_sample.mean()), per_sample)


@SANITIZERS.register("dsc", "the paper's discrepancy-aware correction of each batch before its SGD step "
                     "(Zhu et al., ICML 2023)")
class DSCSanitizer(Sanitizer):
    name = "dsc"
    online = True

    def __init__(self, eps: float = 0.2, step: float = 0.02, steps: int = 10, tau0: float = 0.5,
                 slope: float = 0.02, history_lag: int = 1, drop_above: float | None = None,
                 start_round: int = 1, skip_uncorrected: bool = False, history_round: int | None = None):
        super().__init__()
        self.eps, self.step, self.steps = float(eps), float(step), int(steps)
        self.tau0, self.slope = float(tau0), float(slope)
        self.history_lag = int(history_lag)
        self.drop_above = None if drop_above is None else float(drop_above)
        self.start_round = int(start_round)
        self.skip_uncorrected = bool(skip_uncorrected)
        self.history_round = None if history_round is None else int(history_round)
        self._global: Tensor | None = None
        self._hist: Tensor | None = None
        self._t = 0
        self._mds: list[float] = []

    @classmethod
    def from_config(cls, san) -> DSCSanitizer:
        d = san.dsc
        return cls(d.eps, d.step, d.steps, d.tau0, d.slope, d.history_lag, d.drop_above, d.start_round,
                   d.skip_uncorrected, d.history_round)

    # ------------------------------------------------------------------ Context.state
    @staticmethod
    def load_history(context: Context) -> tuple[int, list[tuple[int, Tensor]]]:
        """(t, [(round, flat snapshot)] oldest first) from the node's state."""
        rec = context.state.config_records.get(STATE_KEY)
        if rec is None:
            return 0, []
        t, rounds = int(rec["t"]), [int(r) for r in rec.get("rounds", [])]
        arrays = context.state.array_records.get(HISTORY_KEY)
        if arrays is None or len(arrays) != len(rounds):  # e.g. after a resume: JSON state only
            return t, []
        snaps = [torch.from_numpy(arrays[str(i)].numpy().copy()) for i in range(len(rounds))]
        return t, list(zip(rounds, snaps))

    def save_history(self, context: Context, t: int, snaps: list[tuple[int, Tensor]]) -> None:
        context.state.config_records[STATE_KEY] = ConfigRecord({"t": int(t), "rounds": [int(r) for r, _ in snaps]})
        if snaps:
            context.state.array_records[HISTORY_KEY] = ArrayRecord(
                {str(i): Array(s.numpy()) for i, (_, s) in enumerate(snaps)})
        elif HISTORY_KEY in context.state.array_records:
            del context.state.array_records[HISTORY_KEY]

    # ------------------------------------------------------------------ the protocol
    def begin_round(self, model: nn.Module, context: Context, server_round: int) -> None:
        super().begin_round(model, context, server_round)
        self._global = flat_params(model)
        self._t, snaps = self.load_history(context)
        if self.history_round is not None:
            self._hist = snaps[0][1] if snaps else None  # the anchor, once received
        elif self.history_lag == 0:
            self._hist = self._global
        elif snaps:
            self._hist = snaps[max(0, len(snaps) - self.history_lag)][1]
        else:
            self._hist = None  # first participation: no historical model yet
        self._mds = []

    def threshold(self, t: int) -> float:
        return schedule_threshold(t, self.tau0, self.slope)

    def sanitize(self, model: nn.Module, batches: list[Batch], context: Context, server_round: int
                 ) -> tuple[list[Batch], list[Tensor]]:
        if server_round < self.start_round:  # pretraining: train on the batches as they are
            return batches, [torch.zeros(len(y), dtype=torch.bool, device=y.device) for _, y in batches]
        out, flags = [], []
        for x, y in batches:
            mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
            if self._hist is None:
                out.append((x, y))
            else:
                threshold = self.threshold(self._t)
                res = dsc_correct(model, self._hist, x, y, threshold, self.eps, self.step, self.steps)
                self._mds.append(res.md_before)
                if res.steps:
                    self.stats[CORRECTED] += 1
                    self.stats[STEPS] += res.steps
                    mask[:] = True
                x_new, y_new = res.x, y
                if self.skip_uncorrected and res.md_after > threshold:
                    mask[:] = True
                    self.stats[DROPPED] += len(y)
                    x_new, y_new = x[:0], y[:0]
                elif self.drop_above is not None:
                    drop = res.md_samples > self.drop_above
                    mask |= drop
                    self.stats[DROPPED] += int(drop.sum())
                    x_new, y_new = x_new[~drop], y[~drop]
                out.append((x_new, y_new))
            flags.append(mask)
            self._t += 1
        return out, flags

    def end_round(self, model: nn.Module, context: Context, server_round: int) -> dict[str, float]:
        _, snaps = self.load_history(context)
        if self.history_round is not None:
            if not snaps and server_round >= self.history_round:
                snaps = [(int(server_round), self._global)]
        elif self.history_lag > 0:
            snaps = (snaps + [(int(server_round), self._global)])[-self.history_lag:]
        else:
            snaps = []
        self.save_history(context, self._t, snaps)
        self.stats[MD] = float(np.mean(self._mds)) if self._mds else 0.0
        return dict(self.stats)
