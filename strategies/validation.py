"""Reply validation: the outermost strategy wrapper, run before any defense or aggregator.

A malicious client controls what it sends, so nothing in a reply is trusted. A reply is
rejected (left out of what the inner strategy sees) when:

- it is a Flower error reply (the ClientApp raised)                 -> "client error: ..."
- its records are not exactly ArrayRecord "arrays", MetricRecord "metrics" and an optional
  ConfigRecord "info" (small)                                       -> "records: ..."
- its arrays take more bytes than the model                         -> "oversize: ..."
- its array names differ from the model's (names and order)         -> "array names: ..."
- an array's declared or decoded dtype/shape differs                -> "array dtype|shape: ..."
- an array cannot be decoded (not a numpy .npy buffer)              -> "array data: ..."
- an array holds NaN or Inf                                         -> "non-finite: ..."
- a metric is missing, not a number, non-finite or out of range     -> "metrics: ..."
  (`num-examples` a positive int, `train_loss` finite >= 0; optional `partition-id`,
  `train_s` and the sanitiser/stream-poison counts `fedguard.sanitizers.METRICS` finite
  numbers; nothing else)

Reasons are "<category>: <detail>"; they go to `notes.clients[node]["rejected"]` and the
recorder counts them by category in summary.json `rejected`.

`num-examples` is client-claimed, so it only ever lowers a client's weight: it is capped at
what the server assigned (`local_steps * batch_size`, `max_examples`), or replaced by that
for every client with `weighting="uniform"`. The claim is kept in the notes
(`claimed_examples`) when it was changed.

If fewer than `min_replies` valid replies remain, `aggregate_train` returns (None, None):
the ServerApp keeps the previous global model (`kept_previous_model` in rounds.jsonl).
The replies keep the order the ServerApp gives them (sorted by partition id), so the inner
aggregate does not depend on arrival order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedguard.protocol import ARRAYS as ARRAYS_KEY
from fedguard.protocol import INFO as INFO_KEY
from fedguard.protocol import METRICS as METRICS_KEY
from fedguard.protocol import NUM_EXAMPLES, PARTITION, TRAIN_LOSS, TRAIN_S
from fedguard.sanitizers import METRICS as SANITIZER_METRICS
from strategies.base import RoundNotes, StrategyWrapper

REQUIRED_METRICS = (NUM_EXAMPLES, TRAIN_LOSS)
OPTIONAL_METRICS = (PARTITION, TRAIN_S, *SANITIZER_METRICS)  # the latter: recorder only
MAX_INFO_BYTES = 1 << 16  # a ConfigRecord "info" larger than this is rejected
HEADER_SLACK = 256  # bytes per array for the .npy header


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _info_bytes(record) -> int:
    total = 0
    for k, v in record.items():
        total += len(str(k))
        if isinstance(v, (bytes, str)):
            total += len(v)
        elif isinstance(v, list):
            total += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in v)
        else:
            total += 8
    return total


class ReplyValidator(StrategyWrapper):
    def __init__(self, inner: Strategy, notes: RoundNotes | None = None, *, max_examples: int | None = None,
                 weighting: str = "num_examples", min_replies: int = 1):
        super().__init__(inner, notes)
        if weighting not in ("num_examples", "uniform"):
            raise ValueError(f"weighting={weighting!r}; allowed: num_examples, uniform")
        if weighting == "uniform" and not max_examples:
            raise ValueError("weighting='uniform' needs max_examples")
        self.max_examples = max_examples
        self.weighting = weighting
        self.min_replies = max(1, int(min_replies))

    # ------------------------------------------------------------------ checks
    def check(self, msg: Message) -> str | None:
        """The reason to reject `msg`, or None when it is well-formed."""
        if msg.has_error():
            return f"client error: {msg.error.reason}"
        if not msg.has_content():
            return "records: empty reply"
        content = msg.content
        arrays_keys = list(content.array_records.keys())
        metric_keys = list(content.metric_records.keys())
        config_keys = list(content.config_records.keys())
        if arrays_keys != [ARRAYS_KEY] or metric_keys != [METRICS_KEY] or not set(config_keys) <= {INFO_KEY}:
            return (f"records: expected ArrayRecord '{ARRAYS_KEY}', MetricRecord '{METRICS_KEY}' and an "
                    f"optional ConfigRecord '{INFO_KEY}'; got arrays={arrays_keys}, metrics={metric_keys}, "
                    f"configs={config_keys}")
        if INFO_KEY in config_keys and _info_bytes(content[INFO_KEY]) > MAX_INFO_BYTES:
            return f"records: ConfigRecord '{INFO_KEY}' larger than {MAX_INFO_BYTES} bytes"
        reason = self._check_arrays(content[ARRAYS_KEY])
        return reason or self._check_metrics(content[METRICS_KEY])

    def _check_arrays(self, arrays: ArrayRecord) -> str | None:
        model = self.global_arrays
        if model is None:
            raise RuntimeError("ReplyValidator needs the global arrays (configure_train first)")
        model_bytes = sum(len(a.data) for a in model.values())
        got_bytes = sum(len(a.data) for a in arrays.values())
        if got_bytes > model_bytes + HEADER_SLACK * len(model):
            return f"oversize: {got_bytes} bytes of arrays, the model has {model_bytes}"
        names, expected = list(arrays.keys()), list(model.keys())
        if names != expected:
            missing = [k for k in expected if k not in names]
            extra = [k for k in names if k not in expected]
            detail = f"missing {missing[:3]}, unexpected {extra[:3]}" if missing or extra else "wrong order"
            return f"array names: {detail} (the model has {len(expected)} arrays)"
        for name in expected:
            got, want = arrays[name], model[name]
            if got.dtype != want.dtype:
                return f"array dtype: '{name}' is {got.dtype}, the model's is {want.dtype}"
            if tuple(got.shape) != tuple(want.shape):
                return f"array shape: '{name}' is {tuple(got.shape)}, the model's is {tuple(want.shape)}"
            try:
                value = got.numpy()
            except Exception as err:  # noqa: BLE001 - any decoding failure rejects
                return f"array data: '{name}' cannot be decoded ({type(err).__name__})"
            if str(value.dtype) != want.dtype or tuple(value.shape) != tuple(want.shape):
                return (f"array data: '{name}' decodes to {value.dtype}{tuple(value.shape)}, "
                        f"declared {got.dtype}{tuple(got.shape)}")
            if not np.isfinite(value).all():
                return f"non-finite: array '{name}' holds NaN or Inf"
        return None

    @staticmethod
    def _check_metrics(metrics: MetricRecord) -> str | None:
        for key in REQUIRED_METRICS:
            if key not in metrics:
                return f"metrics: '{key}' missing"
        extra = [k for k in metrics if k not in REQUIRED_METRICS + OPTIONAL_METRICS]
        if extra:
            return f"metrics: unexpected {extra[:3]}"
        for key in metrics:
            v = metrics[key]
            if not _is_number(v) or not math.isfinite(float(v)):
                return f"metrics: '{key}'={v!r} is not a finite number"
        n = metrics["num-examples"]
        if not isinstance(n, (int, np.integer)) or n < 1:
            return f"metrics: 'num-examples'={n!r} is not a positive integer"
        if metrics["train_loss"] < 0:
            return f"metrics: 'train_loss'={metrics['train_loss']!r} is negative"
        return None

    # ------------------------------------------------------------------ weights
    def _weigh(self, msg: Message) -> None:
        """Cap (or equalise) the client-claimed `num-examples`."""
        metrics = msg.content[METRICS_KEY]
        claimed = int(metrics["num-examples"])
        if self.weighting == "uniform":
            weight = int(self.max_examples)
        elif self.max_examples:
            weight = min(claimed, int(self.max_examples))
        else:
            weight = claimed
        if weight != claimed:
            metrics["num-examples"] = weight
            self.notes.clients[msg.metadata.src_node_id]["claimed_examples"] = claimed

    @staticmethod
    def _same_metric_keys(valid: list[Message]) -> None:
        """Keep only the optional metrics every valid reply has (Flower's aggregators need
        identical MetricRecord keys across replies)."""
        common = set.intersection(*(set(m.content[METRICS_KEY].keys()) for m in valid))
        for msg in valid:
            metrics = msg.content[METRICS_KEY]
            for key in [k for k in metrics if k not in common]:
                del metrics[key]

    # ------------------------------------------------------------------ the round
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid: list[Message] = []
        for msg in replies:
            reason = self.check(msg)
            if reason is not None:
                self.notes.clients[msg.metadata.src_node_id]["rejected"] = reason
                continue
            self._weigh(msg)
            valid.append(msg)
        self.notes.round["valid_replies"] = len(valid)
        self.notes.round["rejected"] = len(replies) - len(valid)
        if len(valid) < self.min_replies:
            self.notes.round["below_min_replies"] = True
            return None, None
        self._same_metric_keys(valid)
        return self.inner.aggregate_train(server_round, valid)
