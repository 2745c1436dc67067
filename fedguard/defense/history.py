"""Ring buffer of past global models, held as flat tensors with their round numbers.

`push(round, flat)` keeps a snapshot every `stride` rounds (and always the first one), at most
`size` of them, evicting the oldest first. Snapshots may be stored in reduced precision
(float16 / bfloat16) to halve memory; `reference()` always hands them back as float32.
float16 overflows beyond +-65504 and keeps ~3 significant digits, bfloat16 keeps the float32
range with ~2 digits: fine for a reference distribution, not for resuming training.

With `spill=True` each snapshot goes to its own file in `spill_dir` (`torch.save` of the flat
tensor in the history dtype) and only (round, path) stays in memory: evicting a snapshot deletes
its file, `reference()` reads the needed ones back (memory-mapped) and copies them to float32.
A spill directory belongs to one history: leftover snapshot files in it (of a killed run that is
being resumed) are deleted when the history is created, and the history deletes its files when it
is closed or garbage-collected (with no `spill_dir`, it makes a temporary directory and removes it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

ReferenceMode = Literal["lag", "oldest", "all"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SPILL_GLOB = "snapshot_r*.pt*"  # snapshot files and unfinished writes


class Snapshot(NamedTuple):
    round: int
    params: Tensor  # flat float32


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown history dtype {dtype!r}; allowed: {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"history dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def _remove_files(items: deque, own_dir: Path | None) -> None:
    """Delete the spill files held in `items` (and `own_dir`, a directory the history made)."""
    for _, item in items:
        if isinstance(item, Path):
            item.unlink(missing_ok=True)
    items.clear()
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)


class ModelHistory:
    def __init__(self, size: int, stride: int = 1, dtype: torch.dtype | str = torch.float32, *,
                 spill: bool = False, spill_dir: str | Path | None = None):
        if size < 1 or stride < 1:
            raise ValueError(f"size and stride must be >= 1, got size={size}, stride={stride}")
        self.size = size
        self.stride = stride
        self.dtype = _as_dtype(dtype)
        # (round, tensor) in memory, or (round, file path) when spilled
        self._items: deque[tuple[int, Tensor | Path]] = deque()
        self.spill_dir: Path | None = None
        own_dir = None
        if spill:
            if spill_dir is None:
                own_dir = self.spill_dir = Path(tempfile.mkdtemp(prefix="fedguard-history-"))
            else:
                self.spill_dir = Path(spill_dir)
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                for stale in self.spill_dir.glob(_SPILL_GLOB):  # a killed run's snapshots
                    stale.unlink(missing_ok=True)
        self._finalizer = weakref.finalize(self, _remove_files, self._items, own_dir)

    @property
    def spill(self) -> bool:
        return self.spill_dir is not None

    def close(self) -> None:
        """Delete the spilled snapshot files (and a temporary spill directory); empties the history."""
        self._finalizer()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def rounds(self) -> list[int]:
        """Round numbers of the stored snapshots, oldest first."""
        return [r for r, _ in self._items]

    @property
    def nbytes(self) -> int:
        """Bytes of snapshot tensors held in memory (0 when spilled to disk)."""
        return sum(t.numel() * t.element_size() for _, t in self._items if isinstance(t, Tensor))

    @property
    def disk_bytes(self) -> int:
        """Bytes of the spilled snapshot files on disk (0 when held in memory)."""
        return sum(p.stat().st_size for _, p in self._items if isinstance(p, Path))

    def _store(self, round: int, flat: Tensor) -> None:
        t = flat.detach().reshape(-1).to(dtype=self.dtype, copy=True)
        if self.spill_dir is None:
            item: Tensor | Path = t
        else:  # write under a temporary name, then rename: a reader never sees a partial file
            item = self.spill_dir / f"snapshot_r{int(round):09d}.pt"
            tmp = item.with_name(item.name + ".tmp")
            torch.save(t.cpu(), tmp)
            os.replace(tmp, item)
        self._items.append((int(round), item))
        while len(self._items) > self.size:
            _, old = self._items.popleft()
            if isinstance(old, Path):
                old.unlink(missing_ok=True)

    @staticmethod
    def _load(item: Tensor | Path, dtype: torch.dtype | None = None) -> Tensor:
        """The stored tensor in `dtype` (None: the history dtype); a spilled one is read
        memory-mapped and copied, so the result never refers to the file."""
        if isinstance(item, Tensor):
            return item if dtype is None else item.to(dtype)
        mapped = torch.load(item, mmap=True, weights_only=True)
        return mapped.to(dtype or mapped.dtype, copy=True)

    def push(self, round: int, flat: Tensor) -> bool:
        """Store a copy of `flat` if `round % stride == 0` or the buffer is empty.

        Returns whether it was stored. Rounds must increase (ValueError otherwise).
        """
        if self._items and round <= self._items[-1][0]:
            raise ValueError(f"round {round} is not after the newest snapshot ({self._items[-1][0]})")
        if self._items and round % self.stride != 0:
            return False
        self._store(round, flat)
        return True

    def reference(self, mode: ReferenceMode = "lag", k: int = 0) -> list[Snapshot]:
        """The snapshot(s) a score compares against, as float32, oldest first.

        - "lag": the snapshot `k` positions back from the newest (k=0: newest), clamped to the
          oldest; with stride s that is about k*s rounds back.
        - "oldest": the oldest stored snapshot.
        - "all": every stored snapshot.
        Raises LookupError when the history is empty.
        """
        if not self._items:
            raise LookupError("model history is empty")
        if mode == "lag":
            if k < 0:
                raise ValueError(f"lag k must be >= 0, got {k}")
            chosen = [self._items[max(0, len(self._items) - 1 - k)]]
        elif mode == "oldest":
            chosen = [self._items[0]]
        elif mode == "all":
            chosen = list(self._items)
        else:
            raise ValueError(f"unknown reference mode {mode!r}; allowed: lag, oldest, all")
        return [Snapshot(r, self._load(t, torch.float32)) for r, t in chosen]

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and lists, for `torch.save` checkpoints (spilled snapshots are read back)."""
        return {"size": self.size, "stride": self.stride, "dtype": str(self.dtype).removeprefix("torch."),
                "rounds": self.rounds, "snapshots": [self._load(t).clone() for _, t in self._items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore snapshots and rounds; this instance keeps its own size/stride/dtype/spilling
        (snapshots are cast to its dtype and spilled if it spills; only the newest `size` are kept)."""
        rounds, snaps = list(state["rounds"]), list(state["snapshots"])
        if len(rounds) != len(snaps):
            raise ValueError("history state has different numbers of rounds and snapshots")
        for _, old in self._items:
            if isinstance(old, Path):
                old.unlink(missing_ok=True)
        self._items.clear()
        for r, t in zip(rounds, snaps):
            self._store(int(r), t)
