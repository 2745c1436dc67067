"""The `faults` keys: client faults injected for reliability tests (`fedguard/faults.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedguard.config.errors import fail

FAULT_KINDS = ("none", "crash", "hang", "nan", "wrong_shape", "oversize", "inflate_examples", "garbage")


@dataclass
class FaultsConfig:
    """Injected client faults (`fedguard/faults.py`): each round, `rate` of the sampled clients
    (at least one when rate > 0; chosen seeded by seed and round) fail in the way `kind` says:
    crash (raise), hang (sleep past backend.round_timeout), or send a hostile reply (nan,
    wrong_shape, oversize, inflate_examples, garbage)."""
    kind: str = "none"
    rate: float = 0.2


def validate_faults(f) -> None:
    """The faults' own values; hung clients against the Ray actors are a cross-group check."""
    if f.kind not in FAULT_KINDS:
        fail("faults.kind", f.kind, ", ".join(FAULT_KINDS))
    if not 0.0 <= f.rate <= 1.0:
        fail("faults.rate", f.rate, "a fraction of the sampled clients in [0, 1]")
