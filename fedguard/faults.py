"""Injected client faults (`faults.kind`, `faults.rate`): the ClientApp's fault branch.

Each round, `round(rate * sampled)` of the round's sampled clients (at least one when
rate > 0) are faulty, chosen by a generator seeded with (seed, round), so the server's
recorder (ground truth) and every ClientApp derive the same set without talking.

- crash: the ClientApp raises before training (Flower turns it into an error reply; the
  node's Context.state is not updated, so its stream does not advance).
- hang: the ClientApp sleeps past `backend.round_timeout` and then raises: the server's
  `send_and_receive` returns without its reply (a *missing* reply); state untouched.
- nan / wrong_shape / oversize / garbage: the client trains honestly (its stream advances)
  and then sends a hostile reply: a NaN in its arrays, an array of the wrong shape, an
  extra array making the reply larger than the model, or random bytes for array data.
- inflate_examples: an honest update claiming `num-examples` = 10**9 (the server caps it).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedguard.sampling import sample_partitions

_FAULT_SALT = 0xFA017
INFLATED_EXAMPLES = 10**9


class InjectedFault(RuntimeError):
    """Raised by a ClientApp that was told to crash (or that woke up from a hang)."""


def faulty_partitions(cfg, server_round: int) -> set[int]:
    """Partition ids that misbehave in `server_round` (empty without faults)."""
    f = cfg.faults
    if f.kind == "none" or f.rate <= 0:
        return set()
    sampled = sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, server_round)
    k = min(len(sampled), max(1, int(round(f.rate * len(sampled)))))
    rng = np.random.default_rng([cfg.seed, server_round, _FAULT_SALT])
    return {int(p) for p in rng.choice(sampled, size=k, replace=False)}


def fault_for(cfg, server_round: int, partition_id: int | None) -> str | None:
    """The fault kind of `partition_id` in `server_round`, or None."""
    if partition_id is None or partition_id not in faulty_partitions(cfg, server_round):
        return None
    return str(cfg.faults.kind)


def hang_seconds(cfg) -> float:
    return 1.5 * float(cfg.backend.round_timeout) + 1.0


def fail_before_training(kind: str | None, cfg) -> None:
    """crash and hang happen before any work (and leave Context.state untouched)."""
    if kind == "crash":
        raise InjectedFault("injected fault: crash")
    if kind == "hang":
        time.sleep(hang_seconds(cfg))
        raise InjectedFault("injected fault: hang (woke up after the round timeout)")


def corrupt(kind: str | None, content: RecordDict, seed: int, server_round: int, partition_id: int) -> RecordDict:
    """The hostile reply of `kind` made from an honest reply `content` (returned as is for
    kinds that are not reply faults)."""
    if kind not in ("nan", "wrong_shape", "oversize", "inflate_examples", "garbage"):
        return content
    arrays: ArrayRecord = content["arrays"]
    metrics: MetricRecord = content["metrics"]
    names = list(arrays.keys())
    out = {k: arrays[k] for k in names}
    if kind == "nan":
        a = arrays[names[0]].numpy().copy()
        a.reshape(-1)[0] = np.nan
        out[names[0]] = Array(a)
    elif kind == "wrong_shape":
        a = arrays[names[0]].numpy()
        out[names[0]] = Array(np.ascontiguousarray(a.reshape(-1)[None, :-1]))
    elif kind == "oversize":
        total = sum(int(np.prod(arrays[k].shape)) for k in names)
        out["padding"] = Array(np.zeros(max(2 * total, 1 << 16), dtype=np.float32))
    elif kind == "garbage":
        rng = np.random.default_rng([seed, server_round, partition_id, _FAULT_SALT])
        for k in names:
            a = arrays[k]
            out[k] = Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype,
                           data=rng.integers(0, 256, size=len(a.data), dtype=np.uint8).tobytes())
    if kind == "inflate_examples":
        metrics = MetricRecord({**dict(metrics), "num-examples": INFLATED_EXAMPLES})
    records = {"arrays": ArrayRecord(out), "metrics": metrics}
    records.update({k: v for k, v in content.items() if k not in records})
    return RecordDict(records)
