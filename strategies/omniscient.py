"""Omniscient attacks (`attack=alie|ipm|minmax|minsum|fang`): the server-side placement of the
attacker's part that sees every honest update (the math is `fedguard.attacks.omniscient`).

These attacks craft the malicious updates from the honest clients' updates of the round, which
a client cannot see, so (as Blades and Flower's FLANDERS baseline do) the simulation runs them
as a server-side wrapper placed *before* the defense: inside the reply validator (so the
statistics use well-formed replies only), outside every defense and aggregator. It is part of
the attacker, not of the server: it may use the ground-truth malicious set, and a reply counts
as malicious when its MetricRecord "partition-id" is in that set (the colluding ClientApps
report theirs truthfully; no defense reads "partition-id"). The malicious ClientApps train
honestly; this wrapper overwrites their arrays with `global + crafted update`
(`attacks.omniscient.crafted_updates`) in the rounds where the attack plan is attacking.

Every malicious reply gets the same crafted update (Fang's trimmed-mean attack: one draw each).
The updates are crafted on the parameters only (`param_mask`: the distances of MinMax, MinSum
and Fang's Krum attack are over parameters); on BatchNorm statistics (buffers) the reply keeps
its own (honestly trained) values. The round's notes get `crafted_replies` and, by attack,
`alie_z`, `attack_gamma` (minmax, minsum) or `fang_lambda` (fang_target=krum).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedguard.models import param_mask
from fedguard.attacks.omniscient import OMNISCIENT, OmniscientSettings, alie_update, alie_z, crafted_updates, ipm_update
from fedguard.attacks.plan import AttackPlan, attack_plan, malicious_set
from fedguard.models import arrays_from_flat
from fedguard.protocol import PARTITION
from strategies.base import RoundNotes, StrategyWrapper, arrays_key

__all__ = ["OMNISCIENT", "OmniscientAttack", "OmniscientSettings", "alie_update", "alie_z", "ipm_update",
           "omniscient_from_config"]


class OmniscientAttack(StrategyWrapper):
    def __init__(self, inner: Strategy, kind: str, malicious: Iterable[int], plan: AttackPlan | None = None, *,
                 z: float | None = None, eps: float = 0.5, settings: OmniscientSettings | None = None,
                 param_mask: Tensor | None = None, notes: RoundNotes | None = None):
        """`settings` (the knobs of every omniscient attack) wins over the shorthands `z`, `eps`."""
        super().__init__(inner, notes)
        if kind not in OMNISCIENT:
            raise ValueError(f"omniscient attack {kind!r}; allowed: {', '.join(OMNISCIENT)}")
        self.kind = kind
        self.malicious = {int(p) for p in malicious}
        self.plan = plan
        self.settings = settings if settings is not None else OmniscientSettings(z=z, eps=eps)
        self.param_mask = param_mask

    def is_malicious(self, msg: Message) -> bool:
        metrics = next(iter(msg.content.metric_records.values()), None)
        pid = metrics.get(PARTITION) if metrics is not None else None
        return pid is not None and int(pid) in self.malicious

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self.global_arrays is not None and (self.plan is None or self.plan.attacking(server_round)):
            self.craft(replies, server_round)
        return self.inner.aggregate_train(server_round, replies)

    def craft(self, replies: list[Message], server_round: int = 0) -> Tensor | None:
        """Overwrite the malicious replies in place; returns the crafted updates, one row per
        malicious reply in reply order (None if no malicious reply came)."""
        valid = [m for m in replies if not m.has_error() and m.has_content()]
        flags = [self.is_malicious(m) for m in valid]
        if not any(flags):
            return None
        base, flat = self.flat_updates(valid)
        stacked = torch.stack(flat)
        cols = self.param_mask if self.param_mask is not None else torch.ones(stacked.shape[1], dtype=torch.bool)
        crafted, notes = crafted_updates(self.kind, list(stacked[:, cols]), flags, self.settings, server_round)
        rows = []
        for row, own in zip(crafted, (u for u, bad in zip(flat, flags) if bad)):
            update = own.clone()
            update[cols] = row.to(update.dtype)
            rows.append(update)
        for msg, update in zip((m for m, bad in zip(valid, flags) if bad), rows):
            msg.content[arrays_key(msg)] = arrays_from_flat(base + update, self.global_arrays)
        self.notes.round.update(notes)
        self.notes.round["crafted_replies"] = len(rows)
        return torch.stack(rows)


def omniscient_from_config(cfg, inner: Strategy, notes: RoundNotes | None = None, model=None) -> OmniscientAttack:
    """`attack=alie|ipm|minmax|minsum|fang` around `inner` (the defense), with the run's
    malicious set and plan."""
    a = cfg.attack
    settings = OmniscientSettings(z=a.alie_z, eps=a.ipm_eps, perturbation=a.perturbation,
                                  fang_target=a.fang_target, fang_b=a.fang_b, seed=cfg.seed)
    return OmniscientAttack(inner, a.name, malicious_set(cfg), attack_plan(cfg), settings=settings,
                            param_mask=param_mask(model) if model is not None else None, notes=notes)
