"""DBA, the distributed backdoor attack (Xie et al., "DBA: Distributed Backdoor Attacks against
Federated Learning", ICLR 2020).

The global trigger is decomposed into K local triggers; each malicious client poisons its
batches with its own local trigger only, and the attack is measured with the global trigger,
the union of the K parts (`fedguard.evaluation.round_asr` stamps the whole patch).

Here the global trigger is the BadNets patch of `attack.patch_size` (`attacks.backdoor`) and its
K = `attack.dba_parts` parts are the cells of a rows x cols grid over the patch (`dba_grid`:
rows the largest divisor of K not above sqrt(K); K = 4 gives the quadrants, K = 2 the left and
right halves), the patch's rows and columns split as evenly as `numpy.array_split` does. On
feature vectors the patch's `patch_size` last features are split into K consecutive runs. The
malicious client of rank i among the malicious ids stamps part i mod K; everything else
(poison_fraction, target_label, boost) is the backdoor attack's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedguard.attacks.backdoor import backdoor_round
from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.plan import malicious_ids
from fedguard.attacks.registries import ATTACKS


def dba_grid(parts: int) -> tuple[int, int]:
    """(rows, cols) of the grid of `parts` cells over the patch: rows the largest divisor of
    `parts` not above its square root."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    rows = max(d for d in range(1, math.isqrt(parts) + 1) if parts % d == 0)
    return rows, parts // rows


def dba_part_mask(sample_shape: tuple[int, ...], size: int, parts: int, index: int) -> Tensor:
    """Boolean mask, shaped like one sample, of part `index` of the `size` patch: images
    (C, H, W): a cell of the `dba_grid(parts)` grid over the bottom-right `size` x `size` square,
    every channel; vectors (F,): one of `parts` consecutive runs of the last `size` features."""
    if not 0 <= index < parts:
        raise ValueError(f"part index {index} not in 0..{parts - 1}")
    mask = torch.zeros(sample_shape, dtype=torch.bool)
    if len(sample_shape) == 3:
        rows, cols = dba_grid(parts)
        h, w = sample_shape[1:]
        if not 1 <= size <= min(h, w) or size < cols:
            raise ValueError(f"a {rows} x {cols} grid needs a patch of {cols}..{min(h, w)} pixels, got {size}")
        row_bands = np.array_split(np.arange(h - size, h), rows)
        col_bands = np.array_split(np.arange(w - size, w), cols)
        r, c = row_bands[index // cols], col_bands[index % cols]
        mask[:, int(r[0]):int(r[-1]) + 1, int(c[0]):int(c[-1]) + 1] = True
    elif len(sample_shape) == 1:
        runs = np.array_split(np.arange(sample_shape[0] - size, sample_shape[0]), parts)
        if size < parts or size > sample_shape[0]:
            raise ValueError(f"{parts} parts need a patch of {parts}..{sample_shape[0]} features, got {size}")
        mask[int(runs[index][0]):int(runs[index][-1]) + 1] = True
    else:
        raise ValueError(f"expected (C, H, W) images or (F,) vectors, got sample shape {tuple(sample_shape)}")
    return mask


@dataclass(frozen=True)
class PartTrigger:
    """Local trigger `index` of `parts`: stamps only that part of the `patch_size` patch."""
    patch_size: int
    parts: int
    index: int
    value: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        mask = dba_part_mask(tuple(x.shape[1:]), self.patch_size, self.parts, self.index).to(x.device)
        return torch.where(mask, torch.full_like(x, self.value), x)


def dba_part_of(cfg, partition_id: int) -> int:
    """The part a malicious client stamps: its rank among the malicious ids, mod dba_parts."""
    ids = malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed)
    rank = ids.index(partition_id) if partition_id in ids else partition_id
    return rank % int(cfg.attack.dba_parts)


@ATTACKS.register("dba", "Xie et al. 2020: each malicious client trains on its own part of the patch trigger; "
                         "ASR with the whole patch",
                  knobs=("dba_parts", "target_label", "poison_fraction", "trigger_type", "patch_size", "boost"))
def dba(r: AttackRound) -> Crafted:
    a = r.cfg.attack
    return backdoor_round(r, PartTrigger(int(a.patch_size), int(a.dba_parts), dba_part_of(r.cfg, r.partition_id)))
