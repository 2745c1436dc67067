"""Omniscient attacks (`attack=alie|ipm|minmax|minsum|fang`): updates crafted from every honest
update of the round.

A client cannot see the other clients' updates, so (as Blades and Flower's FLANDERS baseline
do) the simulation runs these attacks in two parts: the malicious ClientApps train honestly
(the registered client-side part below), and the server-side adapter
`strategies.omniscient.OmniscientAttack`, placed before the defense, overwrites their replies
with `global + crafted_updates(...)[j]` in the rounds where the attack plan is attacking. This
module dispatches to the math, on flat update vectors:

- ALIE (Baruch et al., NeurIPS 2019): `mean - z * std` of the honest updates per coordinate
  (population std); z given, or `alie_z(n, f)`: s = floor(n/2 + 1) - f,
  z = Phi^-1((n - s) / n), with n the replies of the round and f the malicious among them.
  This is the paper's z_max (its Algorithm 1, n workers of which f corrupted). Blades and
  FLPoison use Phi^-1((n - f - s) / (n - f)), which is 0 at n = 10, f = 2 (s = 4): no attack at
  all; ByzFL's ALIE uses tau * std with ddof = 1 (the sample std), tau a parameter. An explicit
  `attack.alie_z` reproduces either (ddof = 1 only rescales z by sqrt(k / (k - 1)) for k honest
  updates).
- IPM (Xie et al., UAI 2020): `-eps * mean` of the honest updates.
- MinMax, MinSum (Shejwalkar & Houmansadr, NDSS 2021): `mean + gamma * p`
  (`attacks.agr_agnostic`).
- Fang (Fang et al., USENIX Security 2020): the trimmed-mean/median attack (a different draw
  for each malicious reply) or the Krum attack (`attacks.fang`).

Every malicious reply gets the same crafted update, but for Fang's trimmed-mean/median attack.
If no honest reply came this round, the statistics use the malicious clients' own honest
updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from fedguard.attacks.agr_agnostic import AGR_AGNOSTIC, agr_agnostic_update
from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.fang import fang_krum_update, fang_trim_updates
from fedguard.attacks.plan import FANG_SALT, shared_seed
from fedguard.attacks.registries import ATTACKS

OMNISCIENT = ("alie", "ipm", *AGR_AGNOSTIC, "fang")


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


@dataclass(frozen=True)
class OmniscientSettings:
    """The knobs of the omniscient attacks (`attack.*`), and the run seed for Fang's draws."""
    z: float | None = None  # alie: null -> alie_z(n, f)
    eps: float = 0.5  # ipm
    perturbation: str = "unit_vec"  # minmax, minsum: unit_vec | std | sign
    fang_target: str = "trimmed_mean"  # fang: trimmed_mean (also median) | krum
    fang_b: float = 2.0  # fang, trimmed_mean: b
    seed: int = 0


def crafted_updates(kind: str, updates: Sequence[Tensor], malicious: Sequence[bool],
                    settings: OmniscientSettings = OmniscientSettings(), server_round: int = 0
                    ) -> tuple[Tensor, dict]:
    """(the crafted updates, one row per malicious update in the order of `updates`; the
    round's notes: `alie_z`, `attack_gamma` or `fang_lambda`) from the round's flat `updates`
    (one per well-formed reply; `malicious[i]` marks the attacker's own). The statistics use
    the honest updates, or the malicious ones when no honest update came."""
    if kind not in OMNISCIENT:
        raise ValueError(f"omniscient attack {kind!r}; allowed: {', '.join(OMNISCIENT)}")
    flags = [bool(b) for b in malicious]
    if len(flags) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(flags)} malicious flags")
    count = sum(flags)
    honest = torch.stack([u for u, bad in zip(updates, flags) if not bad]
                         or [u for u, bad in zip(updates, flags) if bad])
    if kind == "fang" and settings.fang_target == "trimmed_mean":
        gen = torch.Generator().manual_seed(shared_seed(settings.seed, server_round, FANG_SALT))
        return fang_trim_updates(honest, count, settings.fang_b, gen), {}
    notes: dict = {}
    if kind == "alie":
        z = settings.z if settings.z is not None else alie_z(len(updates), count)
        crafted, notes = alie_update(honest, z), {"alie_z": float(z)}
    elif kind == "ipm":
        crafted = ipm_update(honest, settings.eps)
    elif kind in AGR_AGNOSTIC:
        crafted, gamma = agr_agnostic_update(honest, kind, settings.perturbation)
        notes = {"attack_gamma": gamma}
    else:
        crafted, lam = fang_krum_update(honest, count)
        notes = {"fang_lambda": lam}
    return crafted.expand(count, -1).clone(), notes


def train_honestly(r: AttackRound) -> Crafted:
    """The client-side part of an omniscient attack: the honest reply (the server-side
    adapter overwrites it)."""
    return r.done(r.honest_update, trained=r.honest)


ATTACKS.add("alie", train_honestly, "Baruch et al. 2019: mean - z * std of the honest updates "
                                    "(crafted server-side, omniscient)", knobs=("alie_z",))
ATTACKS.add("ipm", train_honestly, "Xie et al. 2020: -eps * mean of the honest updates (crafted server-side, omniscient)",
            knobs=("ipm_eps",))
ATTACKS.add("minmax", train_honestly, "Shejwalkar & Houmansadr 2021: mean + gamma * perturbation, its largest "
                                      "distance to an honest update within theirs (crafted server-side, omniscient)",
            knobs=("perturbation",))
ATTACKS.add("minsum", train_honestly, "Shejwalkar & Houmansadr 2021: mean + gamma * perturbation, its summed "
                                      "squared distance to the honest updates within theirs (crafted server-side, "
                                      "omniscient)", knobs=("perturbation",))
ATTACKS.add("fang", train_honestly, "Fang et al. 2020: values beyond the honest extremes against trimmed mean/median, "
                                    "or -lambda * sign against krum (crafted server-side, omniscient)",
            knobs=("fang_target", "fang_b"))
