"""Ring buffer of past global models, held as flat tensors with their round numbers.

`push(round, flat)` keeps a snapshot every `stride` rounds (and always the first one), at most
`size` of them, evicting the oldest first. Snapshots may be stored in reduced precision
(float16 / bfloat16) to halve memory; `reference()` always hands them back as float32.
float16 overflows beyond +-65504 and keeps ~3 significant digits, bfloat16 keeps the float32
range with ~2 digits: fine for a reference distribution, not for resuming training.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

ReferenceMode = Literal["lag", "oldest", "all"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


class ModelHistory:
    def __init__(self, size: int, stride: int = 1, dtype: torch.dtype | str = torch.float32):
        if size < 1 or stride < 1:
            raise ValueError(f"size and stride must be >= 1, got size={size}, stride={stride}")
        self.size = size
        self.stride = stride
        self.dtype = _as_dtype(dtype)
        self._items: deque[tuple[int, Tensor]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def rounds(self) -> list[int]:
        """Round numbers of the stored snapshots, oldest first."""
        return [r for r, _ in self._items]

    @property
    def nbytes(self) -> int:
        """Bytes taken by the stored snapshot tensors."""
        return sum(t.numel() * t.element_size() for _, t in self._items)

    def push(self, round: int, flat: Tensor) -> bool:
        """Store a copy of `flat` if `round % stride == 0` or the buffer is empty.

        Returns whether it was stored. Rounds must increase (ValueError otherwise).
        """
        if self._items and round <= self._items[-1][0]:
            raise ValueError(f"round {round} is not after the newest snapshot ({self._items[-1][0]})")
        if self._items and round % self.stride != 0:
            return False
        self._items.append((int(round), flat.detach().reshape(-1).to(dtype=self.dtype, copy=True)))
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
        return [Snapshot(r, t.float()) for r, t in chosen]

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and lists, for `torch.save` checkpoints."""
        return {"size": self.size, "stride": self.stride, "dtype": str(self.dtype).removeprefix("torch."),
                "rounds": self.rounds, "snapshots": [t.clone() for _, t in self._items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore snapshots and rounds; this instance keeps its own size/stride/dtype
        (snapshots are cast to its dtype; only the newest `size` are kept)."""
        rounds, snaps = list(state["rounds"]), list(state["snapshots"])
        if len(rounds) != len(snaps):
            raise ValueError("history state has different numbers of rounds and snapshots")
        self._items.clear()
        for r, t in zip(rounds, snaps):
            self._items.append((int(r), t.detach().reshape(-1).to(dtype=self.dtype, copy=True)))
