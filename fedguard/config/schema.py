"""The root of the schema: one field per config group and the run-level keys, registered with
Hydra as `fedguard_schema` (the first entry of `configs/config.yaml`'s defaults).

The dataclass defaults ARE the defaults: `configs/` only selects a group's option and sets
what that option changes (a dataset's natural model, an attack's schedule)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from fedguard.config.attack import AttackConfig
from fedguard.config.backend import BackendConfig
from fedguard.config.dataset import DatasetConfig
from fedguard.config.defense import DefenseConfig
from fedguard.config.errors import fail
from fedguard.config.faults import FaultsConfig
from fedguard.config.model import ModelConfig
from fedguard.config.partitioner import PartitionerConfig
from fedguard.config.sanitizer import SanitizerConfig
from fedguard.config.stream_poison import StreamPoisonConfig
from fedguard.sampling import sampled_count

WEIGHTINGS = ("num_examples", "uniform")


@dataclass
class FedGuardConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    partitioner: PartitionerConfig = field(default_factory=PartitionerConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    stream_poison: StreamPoisonConfig = field(default_factory=StreamPoisonConfig)
    sanitizer: SanitizerConfig = field(default_factory=SanitizerConfig)
    num_clients: int = 10
    num_malicious: int = 0
    fraction_train: float = 1.0  # share of the clients sampled per round
    rounds: int = 30
    local_steps: int = 10  # SGD steps (batches of the client's stream) per round
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    # every client keeps its SGD momentum across rounds (Context.state): one optimizer over the
    # run, the online learner of the accumulative attack's reference; false: a fresh optimizer a round
    keep_momentum: bool = False
    seed: int = 0
    # epochs of central SGD on the training pool before round 1 (the run's lr, momentum and
    # batch_size): a burned-in initial model, as the reference's online phase starts from one
    pretrain_epochs: int = 0
    weighting: str = "num_examples"  # num_examples (client-claimed, capped at local_steps*batch_size) | uniform
    min_replies: int = 1  # fewer valid replies than this: the round keeps the previous global model
    checkpoint_every: int = 1  # rounds between checkpoints (RUN_DIR/checkpoint.pt); 0 = off
    # test-set evaluation every this many rounds (and always the first and last rounds, and the
    # rounds before and at an accumulative trigger); other rounds record accuracy null
    evaluate_every: int = 1
    resume: str | None = None  # a run directory: continue it from its checkpoint
    run_dir: str | None = None  # set by the launcher; `flwr run` falls back to outputs/flwr/
    progress: bool = True


def register_schema() -> None:
    ConfigStore.instance().store(name="fedguard_schema", node=FedGuardConfig)


def validate_run(cfg) -> None:
    """The run-level keys (the groups have their own checks)."""
    if cfg.num_clients < 1:
        fail("num_clients", cfg.num_clients, "an integer >= 1")
    if not 0 <= cfg.num_malicious <= cfg.num_clients:
        fail("num_malicious", cfg.num_malicious, f"0..num_clients ({cfg.num_clients})")
    if not 0.0 < cfg.fraction_train <= 1.0:
        fail("fraction_train", cfg.fraction_train, "a fraction in (0, 1]")
    for key in ("rounds", "local_steps", "batch_size"):
        if cfg[key] < 1:
            fail(key, cfg[key], "an integer >= 1")
    if cfg.lr <= 0:
        fail("lr", cfg.lr, "a positive learning rate")
    if not 0 <= cfg.momentum < 1:
        fail("momentum", cfg.momentum, "a value in [0, 1)")
    if cfg.weighting not in WEIGHTINGS:
        fail("weighting", cfg.weighting, ", ".join(WEIGHTINGS))
    sampled = sampled_count(cfg.num_clients, cfg.fraction_train)
    if not 1 <= cfg.min_replies <= sampled:
        fail("min_replies", cfg.min_replies, f"1..sampled clients per round ({sampled})")
    if cfg.checkpoint_every < 0:
        fail("checkpoint_every", cfg.checkpoint_every, "an integer >= 0 (0 = no checkpoints)")
    if cfg.evaluate_every < 1:
        fail("evaluate_every", cfg.evaluate_every, "an integer >= 1")
    if cfg.pretrain_epochs < 0:
        fail("pretrain_epochs", cfg.pretrain_epochs, "an integer >= 0 (0 = start from the initialised model)")
