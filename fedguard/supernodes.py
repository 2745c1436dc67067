"""How many SuperNodes a run has, and whether its clients are virtual.

`backend.num_supernodes` null (the default) is automatic:

- one SuperNode per client up to `PER_CLIENT_MAX` clients. Flower's simulation engine
  registers a node and a `Context` per SuperNode, handshakes each, and its message loop scans
  every node every 0.1 s, so its start-up and polling grow with the SuperNodes; up to this
  size they cost a few seconds (measured, see the README's *Thousands of clients*);
- virtual clients beyond it: as many SuperNodes as clients sampled per round, serving all
  `num_clients` clients (`fedguard/federation.py`), which gives bit-identical records;
- except for configurations whose clients keep model-sized state on their node (DSC with a
  history, Confusion's warm start, `keep_momentum`, the accumulative attacker's fixed
  trigger: what `config/validate.py` refuses with virtual clients). They keep one SuperNode
  per client up to `NODE_STATE_MAX` clients and are refused beyond it, naming the setting.

A number is virtual clients with that many SuperNodes, as the user asked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from fedguard.config import ConfigError
from fedguard.sampling import sampled_count

PER_CLIENT_MAX = 100  # automatic: one SuperNode per client up to this many clients (measured: README)
NODE_STATE_MAX = 5000  # per-node state: one SuperNode per client up to this many, refused beyond


@dataclass(frozen=True)
class SuperNodes:
    count: int  # SuperNodes of the simulation
    virtual: bool  # clients assigned to SuperNodes afresh each round (their state carried by the server)
    mode: str  # "per_client", "virtual" (automatic) or "virtual_fixed" (backend.num_supernodes=N)

    def record(self) -> dict:
        """What summary.json `supernodes` records."""
        return {"mode": self.mode, "count": self.count, "virtual": self.virtual}


def node_state_setting(cfg) -> ConfigError | None:
    """The error virtual clients would get for this config (a setting that keeps model-sized
    state on the client's node), None when virtual clients are exact for it. Asks
    `config/validate.py`'s own checks, so the two never disagree."""
    from fedguard.config.validate import (
        _virtual_clients_carry_the_attack_state,
        _virtual_clients_carry_the_momentum,
        _virtual_clients_carry_the_sanitizer_state,
    )

    probe = copy.deepcopy(cfg)
    probe.backend.num_supernodes = max(1, sampled_count(cfg.num_clients, cfg.fraction_train))
    for check in (_virtual_clients_carry_the_sanitizer_state, _virtual_clients_carry_the_attack_state,
                  _virtual_clients_carry_the_momentum):
        try:
            check(probe)
        except ConfigError as err:
            return err
    return None


def resolve_supernodes(cfg) -> SuperNodes:
    """The SuperNodes `cfg` runs with (see the module's docstring); raises `ConfigError` for a
    configuration with per-node state at more than `NODE_STATE_MAX` clients."""
    fixed = cfg.backend.num_supernodes
    if fixed is not None:
        return SuperNodes(int(fixed), True, "virtual_fixed")
    n = int(cfg.num_clients)
    if n <= PER_CLIENT_MAX:
        return SuperNodes(n, False, "per_client")
    state = node_state_setting(cfg)
    if state is None:
        return SuperNodes(sampled_count(n, cfg.fraction_train), True, "virtual")
    if n > NODE_STATE_MAX:
        reason = " ".join(str(state).split())
        raise ConfigError(
            f"config error: num_clients={n} with backend.num_supernodes=null needs one SuperNode per client, "
            f"since virtual clients cannot carry this run's per-client state ({reason}); Flower's simulation "
            f"engine is impractical beyond {NODE_STATE_MAX} SuperNodes: lower num_clients to at most "
            f"{NODE_STATE_MAX} or change that setting")
    return SuperNodes(n, False, "per_client")
