"""The sanitiser protocol (`Sanitizer`, the `none` sanitiser), the reply metrics every client
sends (`METRICS`, named in `fedguard/protocol.py`), and `SANITIZERS`, the registry the sanitiser modules register into (a leaf module:
`fedguard.sanitizers` imports every sanitiser module and re-exports these names).

- `SANITIZERS`: `sanitizer.name` -> the `Sanitizer` subclass; `from_full_config(cfg)` builds it.
"""

from __future__ import annotations

import torch
from flwr.app import Context
from torch import Tensor, nn

from fedguard.protocol import (  # noqa: F401 (re-exported: the sanitiser metric names)
    CORRECTED,
    DROPPED,
    FLAGGED,
    FLAGGED_POISONED,
    GROUND_TRUTH_METRICS,
    MD,
    POISONED,
    SECONDS,
    STEPS,
)
from fedguard.protocol import SANITIZER_METRICS as METRICS
from fedguard.registry import Registry

SANITIZERS = Registry("sanitizer")

Batch = tuple[Tensor, Tensor]



def zero_metrics() -> dict[str, float | int]:
    """The METRICS of a client that ran no sanitiser on a clean stream (e.g. a malicious one)."""
    return {k: (0.0 if k in (MD, SECONDS) else 0) for k in METRICS}


@SANITIZERS.register("none", "train on the stream batches as they come")
class Sanitizer:
    """Base class and the `none` sanitiser: trains on the batches as they come."""

    name = "none"
    online = False  # True: sanitize() gets one batch right before its SGD step

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def begin_round(self, model: nn.Module, context: Context, server_round: int) -> None:
        self.stats = {CORRECTED: 0, STEPS: 0, DROPPED: 0, MD: 0.0}

    def sanitize(self, model: nn.Module, batches: list[Batch], context: Context, server_round: int
                 ) -> tuple[list[Batch], list[Tensor]]:
        return list(batches), [torch.zeros(len(y), dtype=torch.bool, device=y.device) for _, y in batches]

    def end_round(self, model: nn.Module, context: Context, server_round: int) -> dict[str, float]:
        return dict(self.stats)

    @classmethod
    def from_config(cls, san) -> Sanitizer:
        """From the `sanitizer` config node."""
        return cls()

    @classmethod
    def from_full_config(cls, cfg) -> Sanitizer:
        """From the whole run config (a sanitiser that needs more than its own node overrides it)."""
        return cls.from_config(cfg.sanitizer)
