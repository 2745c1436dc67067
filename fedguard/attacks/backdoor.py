"""Backdoor triggers (BadNets patch, blend), batch poisoning, the attack success rate, and
the backdoor attack of a malicious client.

The triggers are pure functions on tensors, reused by the client-side backdoor
(`attack=backdoor`), by the stream poisons (`attacks.stream_poison`) and by the server's
evaluation (`fedguard.evaluation.round_asr`). Inputs are either images (N, C, H, W) with
pixels in [0, 1] or feature vectors (N, F):

- patch (BadNets, Gu et al. 2017): a `size` x `size` square of value `value` (white = 1) in
  the bottom-right corner of every channel; on vectors, the last `size` features set to
  `value`.
- blend (Chen et al. 2017): `(1 - alpha) * x + alpha * pattern` with a fixed random pattern
  (uniform in [0, 1], shaped like one sample) drawn from a seed, identical for every caller
  with the same seed.

`poison_batch` stamps and relabels a seeded `fraction` of a batch; `attack_success_rate` is
the fraction of triggered non-target test samples the model classifies as the target.

`attack=backdoor`: the client trains on its stream batches with a seeded `poison_fraction` of
each batch stamped with the trigger (`trigger_from_config`: BadNets patch or blend) and
relabelled `target_label`; with `boost` != 1 (model replacement, Bagdasaryan et al. 2020) it
replies global + boost * (trained - global) on parameters (BatchNorm statistics: the trained ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedguard.attacks.craft import AttackRound, Crafted, flat_model
from fedguard.attacks.plan import POISON_SALT, shared_seed
from fedguard.attacks.registries import ATTACKS

TRIGGER_TYPES = ("patch", "blend")
# the attacks whose backdoor `fedguard.evaluation.round_asr` measures with `trigger_from_config`
# (dba: the whole patch, the union of the parts its clients stamp)
BACKDOORS = ("backdoor", "dba", "neurotoxin")
_PATTERN_SALT = 0x626C656E64  # "blend"


def patch_trigger(x: Tensor, size: int = 3, value: float = 1.0) -> Tensor:
    """A copy of `x` with the BadNets patch: bottom-right `size`x`size` square (images, every
    channel) or the last `size` features (vectors) set to `value`."""
    if size < 1:
        raise ValueError(f"patch size must be >= 1, got {size}")
    out = x.clone()
    if out.dim() == 4:
        out[..., -size:, -size:] = value
    elif out.dim() == 2:
        out[:, -size:] = value
    else:
        raise ValueError(f"expected (N, C, H, W) images or (N, F) vectors, got shape {tuple(x.shape)}")
    return out


def blend_pattern(sample_shape: tuple[int, ...], seed: int) -> Tensor:
    """The fixed blend pattern for `seed`: uniform [0, 1], shaped like one sample."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _PATTERN_SALT]))
    return torch.from_numpy(rng.random(tuple(sample_shape), dtype=np.float32))


def blend_trigger(x: Tensor, pattern: Tensor, alpha: float = 0.2) -> Tensor:
    """`(1 - alpha) * x + alpha * pattern` (pattern broadcast over the batch)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"blend alpha must be in (0, 1], got {alpha}")
    if tuple(pattern.shape) != tuple(x.shape[1:]):
        raise ValueError(f"pattern shape {tuple(pattern.shape)} != sample shape {tuple(x.shape[1:])}")
    return (1.0 - alpha) * x + alpha * pattern.to(x.device, x.dtype)


@dataclass(frozen=True)
class Trigger:
    """A trigger with its parameters fixed; `trigger(x)` stamps a batch."""
    kind: str = "patch"  # patch | blend
    patch_size: int = 3
    value: float = 1.0  # patch value (white)
    alpha: float = 0.2  # blend weight of the pattern
    seed: int = 0  # blend pattern seed

    def __post_init__(self) -> None:
        if self.kind not in TRIGGER_TYPES:
            raise ValueError(f"trigger kind {self.kind!r}; allowed: {', '.join(TRIGGER_TYPES)}")

    def __call__(self, x: Tensor) -> Tensor:
        if self.kind == "patch":
            return patch_trigger(x, self.patch_size, self.value)
        return blend_trigger(x, blend_pattern(tuple(x.shape[1:]), self.seed), self.alpha)


def trigger_from_config(cfg) -> Trigger:
    """The trigger of `cfg.attack` (the blend pattern is seeded by the run seed)."""
    a = cfg.attack
    return Trigger(kind=a.trigger_type, patch_size=int(a.patch_size), alpha=float(a.blend_alpha), seed=int(cfg.seed))


def poison_count(n: int, fraction: float) -> int:
    """How many of `n` samples a poison `fraction` stamps: round(fraction * n), at least 1 if fraction > 0."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n, max(1, int(round(fraction * n))))


def poison_batch(x: Tensor, y: Tensor, trigger, target: int, fraction: float,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(x', y', mask): a random `poison_count(len(y), fraction)` of the samples (chosen with
    `generator`) stamped with `trigger` and relabelled `target`; `mask` marks them."""
    n = len(y)
    k = poison_count(n, fraction)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    mask = mask.to(y.device)
    x_out, y_out = x.clone(), y.clone()
    if k:
        x_out[mask] = trigger(x[mask])
        y_out[mask] = target
    return x_out, y_out, mask


@torch.no_grad()
def attack_success_rate(model: nn.Module, x, y, target: int, trigger, device: torch.device | None = None,
                        batch_size: int = 1024) -> float | None:
    """Fraction of the samples with label != `target`, stamped with `trigger`, that `model`
    (in eval mode) classifies as `target`; None when every sample has the target label."""
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    keep = y != target
    x = x[keep]
    if len(x) == 0:
        return None
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(x), batch_size):
        xb = trigger(x[start:start + batch_size]).to(device)
        hits += int((model(xb).argmax(1) == target).sum().item())
    model.train(was_training)
    return hits / len(x)


@ATTACKS.register("backdoor", "trains on batches partly stamped with a trigger and relabelled target_label "
                              "(boost: model replacement)",
                  knobs=("target_label", "poison_fraction", "trigger_type", "patch_size", "blend_alpha", "boost"))
def backdoor(r: AttackRound) -> Crafted:
    return backdoor_round(r, trigger_from_config(r.cfg))


def poisoned_batches(r: AttackRound, trigger) -> list[tuple[Tensor, Tensor]]:
    """The round's stream batches with a seeded `attack.poison_fraction` of each stamped with
    `trigger` and relabelled `attack.target_label` (seeded by the run seed, the round and the
    partition id)."""
    a = r.cfg.attack
    gen = torch.Generator().manual_seed(shared_seed(r.cfg.seed, r.server_round, POISON_SALT * 100003 + r.partition_id))
    return [poison_batch(x, y, trigger, int(a.target_label), float(a.poison_fraction), gen)[:2]
            for x, y in r.data.batches]


def backdoor_round(r: AttackRound, trigger) -> Crafted:
    """The backdoor attack's reply with `trigger`: local SGD on `poisoned_batches`, then
    global + boost * (trained - global) on parameters (boost 1: the trained model itself)."""
    a = r.cfg.attack
    trained, loss = r.train_copy(poisoned_batches(r, trigger))
    update = flat_model(trained) - r.global_flat
    if a.boost == 1.0:
        return r.done(update, loss, trained)
    return r.done(torch.where(r.mask, a.boost * update, update), loss)
