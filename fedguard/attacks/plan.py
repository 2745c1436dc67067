"""The attack schedule by round and the ground truth: who is malicious, which phase a round
is in, and the seeds colluders share.

Rounds are Flower's server rounds, numbered from 1. For trigger round T and
`accumulate_rounds` = A the phases of a malicious client are::

    1 .. T-A-1   burn_in     (behave honestly: the model trains clean)
    T-A .. T-1   accumulate  (A stealthy poisoned updates; A = 0 means the trigger alone)
    T            trigger     (the one damaging update)
    T+1 ..       after       (honest again if `honest_after`, else the caller keeps attacking)

Honest clients are "clean" in every round; that label is the caller's, not the plan's.

`attack_plan`, `malicious_set` and `round_phase` read these from the run config; the server,
the recorder, the stream poisons and every malicious client use them, so all agree on who
attacks when. Nothing here touches Flower.

The salts of `shared_seed` are kept here, one per independent draw of the attacks, so no two
draws share a seed by accident: a new draw takes a new salt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedguard.attacks.registries import ATTACKS

PHASES = ("burn_in", "accumulate", "trigger", "after")
# shared_seed salts: the held-out batch, the trigger batch, gaussian noise, backdoor poisoning,
# fang's draws (server-side), adaptive_md's bootstrap of honest updates
VAL_SALT, TRIGGER_SALT, NOISE_SALT, POISON_SALT, FANG_SALT, ADAPTIVE_SALT = 1, 2, 3, 4, 5, 6
# the attacks with the accumulative plan's phases (accumulate rounds, then one trigger round):
# their rounds are recorded by phase, and the trigger drop is measured at their trigger round
ACCUMULATIVE = ("accumulative", "adaptive_md", "bn_shrink")

ATTACKS.add("none", None, "no attacker: every client is honest (`attack_plan` is None, `malicious_set` empty)")


@dataclass
class AttackPlan:
    """Phase schedule of the accumulative attack.

    `trigger_round` fixes the schedule; `burn_in` is the minimum number of clean rounds
    before accumulation may start (checked, never silently clipped). With `trigger_round`
    None the trigger comes right after burn-in and accumulation: `burn_in + accumulate_rounds + 1`.
    """

    burn_in: int = 0
    accumulate_rounds: int = 0
    trigger_round: int | None = None
    honest_after: bool = True

    def __post_init__(self) -> None:
        if self.burn_in < 0 or self.accumulate_rounds < 0:
            raise ValueError(f"burn_in ({self.burn_in}) and accumulate_rounds "
                             f"({self.accumulate_rounds}) must be >= 0")
        if self.trigger_round is None:
            self.trigger_round = self.burn_in + self.accumulate_rounds + 1
        if self.trigger_round < 1:
            raise ValueError(f"trigger_round must be >= 1 (rounds count from 1), got {self.trigger_round}")
        if self.accumulation_start - 1 < self.burn_in:
            raise ValueError(
                f"trigger_round={self.trigger_round} with accumulate_rounds={self.accumulate_rounds} "
                f"starts accumulating at round {self.accumulation_start}, leaving fewer than "
                f"burn_in={self.burn_in} clean rounds")

    @property
    def accumulation_start(self) -> int:
        """First accumulate round (equals `trigger_round` when `accumulate_rounds` is 0)."""
        return int(self.trigger_round) - self.accumulate_rounds

    def phase(self, server_round: int) -> str:
        """One of `PHASES` for a malicious client at `server_round`."""
        trigger = int(self.trigger_round)
        if server_round > trigger:
            return "after"
        if server_round == trigger:
            return "trigger"
        if server_round >= self.accumulation_start:
            return "accumulate"
        return "burn_in"

    def attacking(self, server_round: int) -> bool:
        """Whether a malicious client sends a crafted reply this round (else it trains honestly)."""
        phase = self.phase(server_round)
        return phase in ("accumulate", "trigger") or (phase == "after" and not self.honest_after)


def malicious_ids(num_clients: int, num_malicious: int, seed: int) -> list[int]:
    """Sorted partition ids of the malicious clients: a seeded draw without replacement.

    Every caller with the same arguments (server, recorder, each colluding client) gets the same list.
    """
    if not 0 <= num_malicious <= num_clients:
        raise ValueError(f"num_malicious must be in [0, num_clients={num_clients}], got {num_malicious}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6D616C]))  # "mal"
    return sorted(int(i) for i in rng.choice(num_clients, size=num_malicious, replace=False))


def shared_seed(seed: int, server_round: int, salt: int = 0) -> int:
    """A 31-bit seed that every colluder derives identically from the run seed and a round.

    Use `server_round=plan.trigger_round` for things fixed over the whole attack (the trigger
    batch, the attacker's validation batch) and the current round for per-round randomness;
    `salt` separates independent draws. Valid for `torch.Generator.manual_seed` and numpy.
    """
    state = np.random.SeedSequence([int(seed), int(server_round), int(salt), 0x616363]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------- from the run config

def attack_plan(cfg) -> AttackPlan | None:
    """The schedule of `cfg.attack`, or None without an attack."""
    a = cfg.attack
    if a.name == "none":
        return None
    return AttackPlan(burn_in=a.burn_in, accumulate_rounds=a.accumulate_rounds,
                      trigger_round=a.trigger_round, honest_after=a.honest_after)


def malicious_set(cfg) -> set[int]:
    """Partition ids of the malicious clients (empty without an attack: nobody misbehaves)."""
    if cfg.attack.name == "none":
        return set()
    return set(malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed))


def round_phase(cfg, server_round: int) -> str:
    """The phase of `server_round` for the records: "clean" without an attack; the plan's
    burn_in/accumulate/trigger/after for the accumulative attacks (`ACCUMULATIVE`); for the
    other attacks, which have no trigger, "attack" in the rounds they attack (so no trigger
    drop is reported)."""
    plan = attack_plan(cfg)
    if plan is None:
        return "clean"
    phase = plan.phase(server_round)
    if cfg.attack.name in ACCUMULATIVE or phase == "burn_in":
        return phase
    return "attack" if plan.attacking(server_round) else "after"
