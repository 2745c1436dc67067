"""Sample-level sanitisers that honest clients run on their own stream batches (`sanitizer`).

In a federation the sample-level defenses belong where the data is: an honest client whose
stream carries an outsider's poisons (`fedguard/attacks/stream_poison.py`) cleans its own batches
before it trains on them. Every sanitiser follows one protocol (`base.Sanitizer`):

    begin_round(model, context, server_round)    model = the global model just received
    sanitize(model, batches, context, server_round) -> (batches', flagged_mask_per_batch)
    end_round(model, context, server_round) -> stats   (counts of this round, see METRICS)

`flagged_mask_per_batch[i]` is a bool mask over the samples of the *input* batch i (what the
sanitiser treats as poisoned: corrected, dropped or removed); `batches'[i]` is what is trained
on (may be shorter: dropped samples). An `online` sanitiser (DSC) is called on one batch at a
time, right before that batch's SGD step, with the model as it is then (the single-learner
online protocol of the paper); an offline one (EPIC, ISPL, Confusion) once on the round's
batches before training. Persistent state (online step counter, historical models,
dropped ids) lives in the node's `Context.state`: small JSON-able values in ConfigRecords
(echoed to the server, so they survive checkpoint/resume), tensors in ArrayRecords (not
echoed: after a resume the sanitiser rebuilds them).

Records. Every ClientApp reply (honest, malicious, any sanitiser or none) carries the same
`METRICS` keys (Flower needs identical MetricRecord keys across replies; 0 when not
applicable). `stream-poisoned` (poisoned samples drawn this round) and
`sanitizer-flagged-poisoned` (flagged ones among them) are simulation ground truth: they are
read only by the recorder (sample-level precision/recall of the sanitiser in summary.json
`sanitizer`), never by a sanitiser or a server-side defense.

Where things are: `base` (the protocol, the METRICS keys and `SANITIZERS`, `sanitizer.name` ->
class), `dsc` (the paper's online DSC), `adv_training` (the paper's AT baseline, online), `window` (the buffered stream window) with the offline
`epic`, `ispl` and `confusion`. A new sanitiser is one module here with a `Sanitizer` subclass
registered by `@SANITIZERS.register(name, summary)`, imported below, and its knobs as a
sub-config of `fedguard/config/sanitizer.py`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from torch import Tensor, nn

from fedguard.sanitizers.base import (  # noqa: I001 (first: the sanitiser modules register into SANITIZERS)
    CORRECTED, DROPPED, FLAGGED, FLAGGED_POISONED, GROUND_TRUTH_METRICS, MD, METRICS, POISONED, SANITIZERS, SECONDS,
    STEPS, Batch, Sanitizer, zero_metrics)

# Every sanitiser module, imported to fill SANITIZERS; this order is the order of the names.
from fedguard.sanitizers import dsc  # noqa: F401
from fedguard.sanitizers import epic  # noqa: F401
from fedguard.sanitizers import ispl  # noqa: F401
from fedguard.sanitizers import confusion  # noqa: F401
from fedguard.sanitizers import adv_training  # noqa: F401

__all__ = ["CORRECTED", "DROPPED", "FLAGGED", "FLAGGED_POISONED", "GROUND_TRUTH_METRICS", "MD", "METRICS", "POISONED",
           "SANITIZERS", "SECONDS", "STEPS", "Batch", "Sanitizer", "build_sanitizer", "record_fields",
           "train_sanitized", "zero_metrics"]


def build_sanitizer(cfg) -> Sanitizer:
    """The sanitiser `cfg.sanitizer.name` names (`none` when the config has no sanitizer)."""
    san = getattr(cfg, "sanitizer", None)
    return Sanitizer() if san is None else SANITIZERS.get(san.name).from_full_config(cfg)


def train_sanitized(sanitizer: Sanitizer, model: nn.Module, batches: list[Batch], poisoned: list[Tensor],
                    context: Context, server_round: int, lr: float, momentum: float,
                    device: torch.device, ids: list[np.ndarray] | None = None,
                    fetch=None, buffers: list | None = None) -> tuple[float, int, dict[str, Any]]:
    """Local SGD on `batches` through `sanitizer`: (train_loss, examples trained on, METRICS).

    `poisoned[i]` is the ground-truth mask of batch i: only counted here, for the records.
    `ids[i]` are the pool ids of batch i's samples and `fetch(ids) -> (x, y)` re-reads stream
    samples by id (what a window sanitiser, `sanitizers/window.py`, buffers). `buffers`: the
    optimizer's momentum carried between rounds (`training.sgd_steps`).
    """
    if hasattr(sanitizer, "batch_ids"):  # a window sanitiser (sanitizers/window.py)
        sanitizer.batch_ids, sanitizer.fetch = ids, fetch
    from fedguard.training import sgd_steps

    start = time.perf_counter()
    sanitizer.begin_round(model, context, server_round)
    flagged: list[Tensor | None] = [None] * len(batches)
    kept = [0] * len(batches)
    spent = time.perf_counter() - start

    if sanitizer.online:
        def prepare(m: nn.Module, i: int, x: Tensor, y: Tensor) -> Batch:
            nonlocal spent
            t0 = time.perf_counter()
            (out,), (mask,) = sanitizer.sanitize(m, [(x, y)], context, server_round)
            m.train()
            flagged[i], kept[i] = mask, len(out[1])
            spent += time.perf_counter() - t0
            return out

        loss = sgd_steps(model, batches, lr, momentum, device, prepare=prepare, buffers=buffers)
    else:
        t0 = time.perf_counter()
        cleaned, flagged = sanitizer.sanitize(model, batches, context, server_round)
        spent += time.perf_counter() - t0
        kept = [len(y) for _, y in cleaned]
        loss = sgd_steps(model, [b for b in cleaned if len(b[1])], lr, momentum, device, buffers=buffers)
    t0 = time.perf_counter()
    stats = sanitizer.end_round(model, context, server_round)
    spent += time.perf_counter() - t0

    metrics = zero_metrics()
    metrics.update({k: v for k, v in stats.items() if k in metrics})
    for mask, truth in zip(flagged, poisoned):
        truth = truth.cpu()
        metrics[POISONED] += int(truth.sum())
        if mask is not None:
            mask = mask.cpu()
            metrics[FLAGGED] += int(mask.sum())
            metrics[FLAGGED_POISONED] += int((mask & truth).sum())
    metrics[SECONDS] = spent
    if not math.isfinite(loss):  # every sample dropped: no step taken
        loss = 0.0
    return loss, max(1, sum(kept)), metrics


def record_fields(metrics) -> dict[str, Any]:
    """The METRICS of a reply as clients.jsonl fields ("sanitizer-flagged" -> "sanitizer_flagged")."""
    return {k.replace("-", "_"): metrics[k] for k in METRICS if k in metrics}
