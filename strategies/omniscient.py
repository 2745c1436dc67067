"""Omniscient attacks (`attack=alie|ipm`): the server-side placement of the attacker's part that
sees every honest update (the math is `fedguard.attacks.omniscient`).

ALIE and IPM craft the malicious update from the honest clients' updates of the round, which
a client cannot see, so (as Blades and Flower's FLANDERS baseline do) the simulation runs them
as a server-side wrapper placed *before* the defense: inside the reply validator (so the
statistics use well-formed replies only), outside every defense and aggregator. It is part of
the attacker, not of the server: it may use the ground-truth malicious set, and a reply counts
as malicious when its MetricRecord "partition-id" is in that set (the colluding ClientApps
report theirs truthfully; no defense reads "partition-id"). The malicious ClientApps train
honestly; this wrapper overwrites their arrays with `global + crafted update`
(`attacks.omniscient.crafted_update`) in the rounds where the attack plan is attacking.

Every malicious reply gets the same crafted update. On BatchNorm statistics (buffers,
`param_mask` False) the reply keeps its own (honestly trained) values.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from fedguard.attacks.craft import param_mask
from fedguard.attacks.omniscient import OMNISCIENT, alie_update, alie_z, crafted_update, ipm_update
from fedguard.attacks.plan import AttackPlan, attack_plan, malicious_set
from fedguard.models import arrays_from_flat
from fedguard.protocol import PARTITION
from strategies.base import RoundNotes, StrategyWrapper, arrays_key

__all__ = ["OMNISCIENT", "OmniscientAttack", "alie_update", "alie_z", "ipm_update", "omniscient_from_config"]


class OmniscientAttack(StrategyWrapper):
    def __init__(self, inner: Strategy, kind: str, malicious: Iterable[int], plan: AttackPlan | None = None, *,
                 z: float | None = None, eps: float = 0.5, param_mask: Tensor | None = None,
                 notes: RoundNotes | None = None):
        super().__init__(inner, notes)
        if kind not in OMNISCIENT:
            raise ValueError(f"omniscient attack {kind!r}; allowed: {', '.join(OMNISCIENT)}")
        self.kind = kind
        self.malicious = {int(p) for p in malicious}
        self.plan = plan
        self.z, self.eps = z, eps
        self.param_mask = param_mask

    def is_malicious(self, msg: Message) -> bool:
        metrics = next(iter(msg.content.metric_records.values()), None)
        pid = metrics.get(PARTITION) if metrics is not None else None
        return pid is not None and int(pid) in self.malicious

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self.global_arrays is not None and (self.plan is None or self.plan.attacking(server_round)):
            self.craft(replies)
        return self.inner.aggregate_train(server_round, replies)

    def craft(self, replies: list[Message]) -> Tensor | None:
        """Overwrite the malicious replies in place; returns the crafted update (None if no
        malicious reply came)."""
        valid = [m for m in replies if not m.has_error() and m.has_content()]
        bad = [m for m in valid if self.is_malicious(m)]
        if not bad:
            return None
        base, flat = self.flat_updates(valid)
        updates = {id(m): u for m, u in zip(valid, flat)}
        crafted, z = crafted_update(self.kind, [updates[id(m)] for m in valid],
                                    [self.is_malicious(m) for m in valid], z=self.z, eps=self.eps)
        if z is not None:
            self.notes.round["alie_z"] = z
        for msg in bad:
            own = updates[id(msg)]
            update = crafted if self.param_mask is None else torch.where(self.param_mask, crafted, own)
            msg.content[arrays_key(msg)] = arrays_from_flat(base + update, self.global_arrays)
        self.notes.round["crafted_replies"] = len(bad)
        return crafted


def omniscient_from_config(cfg, inner: Strategy, notes: RoundNotes | None = None, model=None) -> OmniscientAttack:
    """`attack=alie|ipm` around `inner` (the defense), with the run's malicious set and plan."""
    a = cfg.attack
    return OmniscientAttack(inner, a.name, malicious_set(cfg), attack_plan(cfg), z=a.alie_z, eps=a.ipm_eps,
                            param_mask=param_mask(model) if model is not None else None, notes=notes)
