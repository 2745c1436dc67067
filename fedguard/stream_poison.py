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
  pattern of the run seed) and relabels to `target_label`; `label_flip` relabels y -> 9 - y
  (y -> (y + 1) % C when the dataset does not have C = 10 classes).
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
from fedguard.config import STREAM_POISONS
BACKDOOR_POISONS = ("badnets", "blend")  # those with a trigger (and an attack success rate)
_SUBSET_SALT = 0x73747265616D  # "stream"


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


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """label_flip: 9 - y for 10 classes, (y + 1) % C otherwise."""
    return 9 - y if num_classes == 10 else (y + 1) % num_classes


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
    if sp.name not in STREAM_POISONS:
        raise ValueError(f"unknown stream poison {sp.name!r}; allowed: {', '.join(STREAM_POISONS)}")
    from fedguard.attacks.client import malicious_set  # local: keeps this module light

    if int(partition_id) in malicious_set(cfg):
        return x, y, mask
    if partition is None or num_classes is None:
        from fedguard.data.partition import partition_from_config
        from fedguard.data.sources import splits_from_config

        data = splits_from_config(cfg)
        partition = partition_from_config(cfg, data.pool.y, partition_id) if partition is None else partition
        num_classes = data.num_classes if num_classes is None else num_classes
    subset = poisoned_subset(partition, cfg.seed, partition_id, float(sp.rate))
    hit = np.isin(np.asarray(indices, dtype=np.int64), subset)
    if not hit.any():
        return x, y, mask
    mask = torch.from_numpy(hit).to(y.device)
    x_out, y_out = x.clone(), y.clone()
    if sp.name in BACKDOOR_POISONS:
        x_out[mask] = stream_trigger(cfg)(x[mask])
        y_out[mask] = int(sp.target_label)
    else:  # label_flip
        y_out[mask] = flip_labels(y[mask], int(num_classes))
    return x_out, y_out, mask
