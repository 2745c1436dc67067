"""Model poisoning from the client's own honest update: sign flip, scaling, gaussian noise.

The client trains honestly on its stream batches, then replies

- sign_flip: global - honest update;
- scaling: global + `attack.scale` * honest update;
- gaussian: global + N(0, `attack.noise_std`^2) on every parameter (seeded by the run seed,
  the round and the partition id).

All three act on parameters only: BatchNorm statistics keep the honest values, which a
negated or scaled running variance would make invalid.
"""

from __future__ import annotations

import torch

from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.plan import NOISE_SALT, shared_seed
from fedguard.attacks.registries import ATTACKS


@ATTACKS.register("sign_flip", "replies global - honest update (parameters only)")
def sign_flip(r: AttackRound) -> Crafted:
    return r.done(torch.where(r.mask, -r.honest_update, r.honest_update))


@ATTACKS.register("scaling", "replies global + scale * honest update (parameters only)", knobs=("scale",))
def scaling(r: AttackRound) -> Crafted:
    return r.done(torch.where(r.mask, r.cfg.attack.scale * r.honest_update, r.honest_update))


@ATTACKS.register("gaussian", "replies global + N(0, noise_std^2) on every parameter", knobs=("noise_std",))
def gaussian(r: AttackRound) -> Crafted:
    gen = torch.Generator().manual_seed(shared_seed(r.cfg.seed, r.server_round, NOISE_SALT * 100003 + r.partition_id))
    noise = torch.randn(r.global_flat.numel(), generator=gen) * r.cfg.attack.noise_std
    return r.done(torch.where(r.mask, noise, torch.zeros_like(noise)))
