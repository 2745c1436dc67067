"""The `backend` group: Ray (Flower's simulation backend) and the simulation's SuperNodes."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedguard.config.errors import fail


@dataclass
class ClientResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class RayInitArgs:
    address: str | None = None  # attach to an existing Ray cluster ("auto" or host:port)
    num_cpus: int | None = None  # cap a local Ray instance (null: all cores of this machine)
    num_gpus: int | None = None
    include_dashboard: bool = False
    # the client actors' output on this console (their "Manually terminating ClientAppActor" at
    # every exit, ClientApp prints); client errors reach clients.jsonl either way. true to debug
    log_to_driver: bool = False


@dataclass
class BackendConfig:
    """Flower's backend_config: resources per client actor and ray.init arguments."""
    client_resources: ClientResources = field(default_factory=ClientResources)
    init_args: RayInitArgs = field(default_factory=RayInitArgs)
    round_timeout: float = 600.0
    # SuperNodes of the simulation. null: automatic (fedguard/supernodes.py): one per client
    # (each client's state in its node's Context.state) up to a few hundred clients, virtual
    # clients beyond. A number >= the clients sampled per round: that many SuperNodes serve
    # the num_clients logical clients, the sampled ones assigned afresh each round, their
    # small state carried by the server (fedguard/federation.py, "virtual clients"), since
    # Flower's simulation engine handshakes and polls every SuperNode.
    num_supernodes: int | None = None


def validate_backend(b) -> None:
    """The backend's own values; the SuperNodes against the clients are a cross-group check."""
    res = b.client_resources
    if res.num_cpus <= 0:
        fail("backend.client_resources.num_cpus", res.num_cpus, "a positive number of CPUs")
    if res.num_gpus < 0:
        fail("backend.client_resources.num_gpus", res.num_gpus, "a non-negative (fractional) GPU count")
    init = b.init_args
    if init.address and (init.num_cpus is not None or init.num_gpus is not None):
        fail("backend.init_args.num_cpus", init.num_cpus,
             "null when backend.init_args.address attaches to an existing cluster")
    if b.round_timeout <= 0:
        fail("backend.round_timeout", b.round_timeout, "a positive number of seconds")
