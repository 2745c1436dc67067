"""Omniscient attacks (`attack=alie|ipm`): updates crafted from every honest update of the round.

A client cannot see the other clients' updates, so (as Blades and Flower's FLANDERS baseline
do) the simulation runs these attacks in two parts: the malicious ClientApps train honestly
(the registered client-side part below), and the server-side adapter
`strategies.omniscient.OmniscientAttack`, placed before the defense, overwrites their replies
with `global + crafted_update(...)` in the rounds where the attack plan is attacking. This
module is the math, on flat update vectors:

- ALIE (Baruch et al., NeurIPS 2019): `mean - z * std` of the honest updates per coordinate
  (population std); z given, or `alie_z(n, f)`: s = floor(n/2 + 1) - f,
  z = Phi^-1((n - s) / n), with n the replies of the round and f the malicious among them.
- IPM (Xie et al., UAI 2020): `-eps * mean` of the honest updates.

Every malicious reply gets the same crafted update. If no honest reply came this round, the
statistics use the malicious clients' own honest updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import Tensor

from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.registries import ATTACKS

OMNISCIENT = ("alie", "ipm")


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max for n workers of which f are malicious: s = floor(n/2 + 1) - f
    supporters needed, z = Phi^-1((n - s) / n); s is kept >= 1 and z >= 0 (the formula's
    degenerate cases: f = 0, or a malicious majority)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = max(1, n // 2 + 1 - f)
    return NormalDist().inv_cdf(max(0.5, (n - s) / n))


def alie_update(honest: Tensor, z: float) -> Tensor:
    """mean - z * std over the rows (updates) of `honest` (k, d), population std."""
    return honest.mean(0) - z * honest.std(0, unbiased=False)


def ipm_update(honest: Tensor, eps: float) -> Tensor:
    """-eps * mean over the rows (updates) of `honest` (k, d)."""
    return -eps * honest.mean(0)


def crafted_update(kind: str, updates: Sequence[Tensor], malicious: Sequence[bool], *,
                   z: float | None = None, eps: float = 0.5) -> tuple[Tensor, float | None]:
    """(the update every malicious reply gets, the ALIE z used or None) from the round's flat
    `updates` (one per well-formed reply; `malicious[i]` marks the attacker's own). The
    statistics use the honest updates, or the malicious ones when no honest update came;
    ALIE's z defaults to `alie_z(len(updates), number malicious)`."""
    if kind not in OMNISCIENT:
        raise ValueError(f"omniscient attack {kind!r}; allowed: {', '.join(OMNISCIENT)}")
    honest = ([u for u, bad in zip(updates, malicious, strict=True) if not bad]
              or [u for u, bad in zip(updates, malicious, strict=True) if bad])
    stacked = torch.stack(honest)
    if kind == "alie":
        z = z if z is not None else alie_z(len(updates), sum(bool(b) for b in malicious))
        return alie_update(stacked, z), float(z)
    return ipm_update(stacked, eps), None


def train_honestly(r: AttackRound) -> Crafted:
    """The client-side part of an omniscient attack: the honest reply (the server-side
    adapter overwrites it)."""
    return r.done(r.honest_update, trained=r.honest)


ATTACKS.add("alie", train_honestly, "Baruch et al. 2019: mean - z * std of the honest updates "
                                    "(crafted server-side, omniscient)")
ATTACKS.add("ipm", train_honestly, "Xie et al. 2020: -eps * mean of the honest updates (crafted server-side, omniscient)")
