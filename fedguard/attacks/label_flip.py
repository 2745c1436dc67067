"""Label flipping: the one label-flip rule of the project, and the attack that trains on it.

`flip_label(y, C) = C - 1 - y` maps the classes 0..C-1 onto themselves in reverse (a
permutation without fixed points for even C). It is used by `attack=label_flip` (a malicious
client trains on its stream batches with flipped labels) and by `stream_poison=label_flip`
(an outsider flips the labels of a share of the honest clients' streams).
"""

from __future__ import annotations

from torch import Tensor

from fedguard.attacks.craft import AttackRound, Crafted, flat_model
from fedguard.attacks.registries import ATTACKS


def flip_label(y: Tensor, num_classes: int) -> Tensor:
    """The flipped labels: `num_classes - 1 - y`."""
    return num_classes - 1 - y


@ATTACKS.register("label_flip", "trains on its stream batches with flipped labels, y -> num_classes - 1 - y")
def label_flip(r: AttackRound) -> Crafted:
    flipped = [(x, flip_label(y, r.num_classes)) for x, y in r.data.batches]
    trained, loss = r.train_copy(flipped)
    return r.done(flat_model(trained) - r.global_flat, loss, trained)
