"""Checkpoint of a run after a round: `RUN_DIR/checkpoint.pt`, written atomically.

Holds everything needed to continue: the round, the global arrays, the strategy's own state
(`StrategyWrapper.state_dict`), each client's last reported `Context.state` (stream cursors,
attack state; JSON per partition), the RNG states of the server process (torch, numpy,
Python) and the recorder's state (rows so far, counters). Only tensors, lists, dicts,
strings and numbers, so it loads with `torch.load(weights_only=True)`.

Written to `checkpoint.pt.tmp`, flushed and fsynced, then `os.replace`d over the previous
checkpoint: a kill at any moment leaves either the previous or the new checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "final_model.pt"
VERSION = 1


def arrays_state(arrays: ArrayRecord) -> dict[str, Any]:
    """ArrayRecord -> {"names": [...], "tensors": [...]} (exact dtypes and values)."""
    names = list(arrays.keys())
    return {"names": names, "tensors": [torch.from_numpy(arrays[k].numpy().copy()) for k in names]}


def arrays_from_state(state: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({k: Array(t.numpy()) for k, t in zip(state["names"], state["tensors"])})


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": _to_lists(random.getstate())}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(obj):
    return [_to_lists(x) for x in obj] if isinstance(obj, (list, tuple)) else obj


def _to_tuples(obj):
    return tuple(_to_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


def save(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` as RUN_DIR/checkpoint.pt."""
    path = Path(run_dir) / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"version": VERSION, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint of RUN_DIR, or None when it has none (killed before round 1 ended)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != VERSION:
        raise RuntimeError(f"{path}: checkpoint version {state.get('version')}, expected {VERSION}")
    return state
