"""The `stream_poison` group: an outsider's poisons in the honest clients' streams
(`fedguard.attacks.STREAM_POISONS`)."""

from __future__ import annotations

from dataclasses import dataclass

from fedguard.attacks import STREAM_POISONS
from fedguard.config.errors import check_name, fail


@dataclass
class StreamPoisonConfig:
    """An outsider's poisons in the HONEST clients' streams (`fedguard/attacks/stream_poison.py`):
    a seeded `rate` of each honest partition's samples is poisoned, the same samples whenever
    they are drawn. badnets/blend stamp the trigger and relabel to `target_label`;
    label_flip relabels y -> C - 1 - y (`attacks.label_flip.flip_label`)."""
    name: str = "none"  # a poison of fedguard.attacks.STREAM_POISONS
    rate: float = 0.05  # fraction of each honest client's stream samples that are poisoned
    target_label: int = 0  # badnets / blend: the class the poisoned samples are relabelled to
    patch_size: int = 3  # badnets: patch side in pixels (vectors: the last patch_size features)
    blend_alpha: float = 0.2  # blend: x <- (1 - alpha) x + alpha pattern (pattern seeded by `seed`)


def validate_stream_poison(sp) -> None:
    """The poison's own values; the target label against the dataset is a cross-group check."""
    check_name("stream_poison", sp.name, STREAM_POISONS)
    if not 0.0 <= sp.rate <= 1.0:
        fail("stream_poison.rate", sp.rate, "a fraction of the honest clients' stream samples in [0, 1]")
    if sp.patch_size < 1:
        fail("stream_poison.patch_size", sp.patch_size, "an integer >= 1")
    if not 0.0 < sp.blend_alpha <= 1.0:
        fail("stream_poison.blend_alpha", sp.blend_alpha, "a weight in (0, 1]")
