"""Poisons an outsider injects into the HONEST clients' streams (`stream_poison` config).

Threat model (issue 6, item 1): the devices are honest, their incoming data is not. A fixed
share `rate` of each honest client's partition is poisoned:

- which samples: a deterministic seeded subset of the partition, of size
  `round(rate * len(partition))`, chosen by a permutation seeded by (seed, partition id).
  It depends only on (seed, partition, sample index), so a sample is poisoned every time the
  stream draws it (every epoch) and never otherwise, whichever Ray actor runs the client.
- how: computed on the fly when the sample is drawn (the pool is never modified):
  `badnets` stamps the BadNets patch (`attacks.backdoor.patch_trigger`) and relabels to
  `target_label`; `blend` blends the seeded pattern (`attacks.backdoor.blend_trigger`, the
  pattern of the run seed) and relabels to `target_label`; `label_flip` relabels
  y -> C - 1 - y (`attacks.label_flip.flip_label`, the rule of `attack=label_flip`). For
  C = 10 classes that is the former 9 - y; with other class counts it replaced the former
  y -> (y + 1) % C, so a label_flip stream poison on a dataset of C != 10 classes poisons
  differently from before the rules were merged.
- malicious clients' partitions (`attack` != none) are never stream-poisoned: they run their
  own attack.

The poisoned mask is simulation ground truth: the ClientApp only counts it (reply metric
`stream-poisoned`, and `sanitizer-flagged-poisoned` against what its sanitiser flagged) for
the recorder; a sanitiser never sees it, and no defense reads those counts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedguard.attacks.backdoor import Trigger
from fedguard.attacks.label_flip import flip_label
from fedguard.attacks.plan import malicious_set
from fedguard.attacks.registries import STREAM_POISONS
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config

_SUBSET_SALT = 0x73747265616D  # "stream"

STREAM_POISONS.add("none", None, "no poison in the honest clients' streams")


def poisoned_count(n: int, rate: float) -> int:
    """How many of a partition's `n` samples are poisoned: round(rate * n)."""
    return int(min(n, max(0, round(rate * n))))


def poisoned_subset(partition: np.ndarray, seed: int, partition_id: int, rate: float) -> np.ndarray:
    """The pool indices of `partition` that are poisoned (sorted): the first
    `poisoned_count(len(partition), rate)` of a permutation seeded by (seed, partition_id)."""
    partition = np.asarray(partition, dtype=np.int64)
    k = poisoned_count(len(partition), rate)
    rng = np.random.default_rng([int(seed), int(partition_id), _SUBSET_SALT])
    return np.sort(partition[rng.permutation(len(partition))[:k]])


def stream_trigger(cfg) -> Trigger | None:
    """The trigger of a badnets/blend stream poison (None for the others)."""
    sp = cfg.stream_poison
    if sp.name == "badnets":
        return Trigger(kind="patch", patch_size=int(sp.patch_size), seed=int(cfg.seed))
    if sp.name == "blend":
        return Trigger(kind="blend", alpha=float(sp.blend_alpha), seed=int(cfg.seed))
    return None


# A registered stream poison is `poison(cfg, x, y, num_classes) -> (x', y')`: the poisoned
# versions of the samples (x, y) of the poisoned subset (inputs not modified).

def trigger_poison(cfg, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """badnets/blend: the samples stamped with `stream_trigger(cfg)`, relabelled `target_label`."""
    return stream_trigger(cfg)(x), torch.full_like(y, int(cfg.stream_poison.target_label))


STREAM_POISONS.add("badnets", trigger_poison, "a share of each honest stream stamped with the BadNets patch, "
                                              "relabelled target_label", knobs=("target_label", "patch_size"))
STREAM_POISONS.add("blend", trigger_poison, "a share of each honest stream blended with a seeded pattern, "
                                            "relabelled target_label", knobs=("target_label", "blend_alpha"))


@STREAM_POISONS.register("label_flip", "a share of each honest stream relabelled y -> num_classes - 1 - y")
def label_flip_poison(cfg, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """label_flip: the samples as they are, relabelled `flip_label(y, num_classes)`."""
    return x, flip_label(y, num_classes)


def poison_stream_batch(cfg, partition_id: int, indices, x: Tensor, y: Tensor, *,
                        partition: np.ndarray | None = None, num_classes: int | None = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """(x', y', poisoned_mask) of a drawn batch: the samples whose pool `indices` are in the
    partition's poisoned subset are poisoned, the rest are returned as they are.

    `partition` (the client's pool indices) and `num_classes` are read from the config's data
    when not given. Without a stream poison, with rate 0 or on a malicious client's partition
    the batch is returned unchanged with an all-False mask. The inputs are never modified.
    """
    sp = cfg.stream_poison
    mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    if sp.name == "none" or sp.rate <= 0:
        return x, y, mask
    poison = STREAM_POISONS.get(sp.name)  # an unknown name raises ValueError
    if int(partition_id) in malicious_set(cfg):
        return x, y, mask
    if partition is None or num_classes is None:
        data = splits_from_config(cfg)
        partition = partition_from_config(cfg, data.pool.y, partition_id) if partition is None else partition
        num_classes = data.num_classes if num_classes is None else num_classes
    subset = poisoned_subset(partition, cfg.seed, partition_id, float(sp.rate))
    hit = np.isin(np.asarray(indices, dtype=np.int64), subset)
    if not hit.any():
        return x, y, mask
    mask = torch.from_numpy(hit).to(y.device)
    x_out, y_out = x.clone(), y.clone()
    x_out[mask], y_out[mask] = poison(cfg, x[mask], y[mask], int(num_classes))
    return x_out, y_out, mask
