"""The experiment config: typed schema, validation, and the flat form Flower carries.

Hydra composes `configs/` on top of the `FedGuardConfig` schema registered here, so a value of
the wrong type fails at composition with the key named. `validate` adds the semantic checks
(allowed names, ranges, files on disk) and runs before Ray starts.

Flower's `context.run_config` holds scalars only, so both launchers pass `flatten(cfg)`
(dotted keys; None written as "" because run_config has no null, and `flwr run
--run-config` can only override keys that exist) and the apps rebuild the typed config
with `from_flat` ("" back to None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from fedguard.sampling import sampled_count

DATASETS = ("digits", "mnist", "cifar10", "synthetic", "hub")
MODELS = ("mlp", "cnn", "resnet18")
DEFENSES = ("fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "clipping", "mddsc",
            "epic_updates")
PARTITIONERS = ("iid", "dirichlet", "shards")
WRAPPER_DEFENSES = ("clipping", "mddsc", "epic_updates")
MD_REFERENCES = ("lag", "oldest", "all")
MD_THRESHOLDS = ("robust", "schedule")
MD_CORRECTIONS = ("scale", "pgd", "drop")


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None  # directory (or file) for on-disk sources
    val_size: int = 200  # server validation stream (taken from the training split)
    test_size: int = 360  # only for sources without an official test split
    # synthetic source
    num_samples: int = 20000
    num_features: int = 64
    num_classes: int = 10
    # hub source (flwr-datasets FederatedDataset), for machines online
    hub_name: str | None = None
    hub_image_key: str = "image"
    hub_label_key: str = "label"


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: int = 128


@dataclass
class PartitionerConfig:
    name: str = "iid"
    alpha: float = 0.5  # dirichlet concentration
    min_partition_size: int = 10  # dirichlet
    shards_per_client: int = 2  # pathological split


@dataclass
class HistoryConfig:
    """mddsc: the ring buffer of past global models."""
    size: int = 10  # snapshots kept
    stride: int = 1  # snapshot every `stride` rounds
    dtype: str = "float32"  # float32 | float16 | bfloat16
    reference: str = "lag"  # lag (k snapshots back) | oldest | all (mean over snapshots)
    lag: int = 0  # snapshots back from the newest (0: the global the clients start from); measured best on MNIST (TPR 0.83 vs 0.75 at lag 1, 0.36 at lag 5)
    # keep each snapshot in a file under <run_dir>/history (a temporary directory when run_dir is
    # null), only (round, path) in memory; evicted files are deleted. For large models / long histories
    spill: bool = False


@dataclass
class ThresholdConfig:
    """mddsc: which MD score flags an update."""
    rule: str = "robust"  # robust (median + k*MAD) | schedule (tau0 + slope*round, the paper)
    k: float = 2.5  # robust: flag above median + k * spread of log-MD
    min_log_spread: float = 0.1  # robust: spread floor (log units): flag >= e^(k*0.1) x median
    window: int = 5  # rounds of accepted scores pooled by the robust rule
    tau0: float = 0.5
    slope: float = 0.02


@dataclass
class CorrectionConfig:
    """mddsc: what happens to a flagged update."""
    method: str = "drop"  # drop | scale | pgd (MNIST: scaled accumulation updates still accumulate; drop closes the gap to clean)
    scale_iters: int = 8  # scale: bisection steps (alpha within 2**-scale_iters of the threshold's edge)
    pgd_eps: float = 0.5  # L2 radius, as a fraction of the update norm
    pgd_steps: int = 10
    pgd_lr: float = 0.05


@dataclass
class DefenseConfig:
    name: str = "fedavg"
    inner: str | None = None  # inner strategy of a wrapper defense
    trim_beta: float = 0.2  # trimmed_mean: fraction cut at each end
    assumed_malicious: int | None = None  # f for krum/bulyan; None -> num_malicious
    multikrum_select: int | None = None  # m for multikrum; None -> n - f
    clip_norm: float | None = None  # clipping: fixed bound; None -> median of update norms
    clip_multiplier: float = 1.0  # clipping: bound = multiplier * median norm
    epic_fraction: float = 0.1  # epic_updates (server-side adaptation): medoids = max(2, round(fraction * replies))
    epic_max_cluster: int = 1  # epic_updates: drop updates in clusters of at most this many
    val_batch: int = 64  # mddsc: server validation samples scored per round (MNIST: a quarter of 256's cost, TPR 0.90 vs 0.94)
    score_chunk: int | None = None  # mddsc: candidate models per vmap call when scoring (null = all at once; bounds peak activation memory)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)


@dataclass
class ClientResources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class RayInitArgs:
    address: str | None = None  # attach to an existing Ray cluster ("auto" or host:port)
    num_cpus: int | None = None  # cap a local Ray instance
    num_gpus: int | None = None
    include_dashboard: bool = False


@dataclass
class BackendConfig:
    client_resources: ClientResources = field(default_factory=ClientResources)
    init_args: RayInitArgs = field(default_factory=RayInitArgs)
    round_timeout: float = 600.0
    # SuperNodes of the simulation. null: one per client (each client's state in its node's
    # Context.state). A number >= the clients sampled per round: that many SuperNodes serve
    # the num_clients logical clients, the sampled ones assigned afresh each round, their
    # small state carried by the server (server_app.py, "virtual clients"); needed for
    # thousands of clients, since Flower's simulation engine polls every SuperNode.
    num_supernodes: int | None = None


ATTACKS = ("none", "accumulative", "label_flip", "backdoor", "sign_flip", "scaling", "gaussian", "alie", "ipm")
BACKDOOR_TRIGGERS = ("patch", "blend")
KNOWN_NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}
ATTACK_FORMS = ("update", "data")
ACCUMULATE_AGAINST = ("clean", "crafted")
TRIGGER_MODES = ("sgd", "reverse", "val_ascent")


@dataclass
class AttackConfig:
    """Client-side attacks, run by the `num_malicious` clients `attacks.malicious_ids` picks.

    Every attack follows one schedule (`attacks.AttackPlan`): honest until the accumulate
    phase, attacking in the accumulate rounds and the trigger round, then honest again if
    `honest_after` (the baselines set it false: they attack from round burn_in+1 on).
    """
    name: str = "none"  # none | accumulative | label_flip | backdoor | sign_flip | scaling | gaussian | alie | ipm
    form: str = "update"  # accumulative: update (crafted update) | data (poisoned batches, trained on)
    burn_in: int = 0  # minimum clean rounds before accumulating
    accumulate_rounds: int = 0  # 0 = the trigger alone
    trigger_round: int | None = None  # None -> burn_in + accumulate_rounds + 1
    honest_after: bool = True
    sign: int = -1  # accumulation direction sign*grad cos(g_trigger, g_val); -1 pairs with sgd
    trigger_mode: str = "sgd"  # sgd | reverse | val_ascent
    norm_bound: float = 1.0  # trigger update norm, as a multiple of the honest update norm
    trigger_steps: int | None = None  # SGD steps on the trigger batch (both forms); null -> local_steps (1 = trained on once)
    accumulate_norm: float = 1.0  # accumulate update norm, as a multiple of the honest update norm
    eps: float = 0.1  # data form: L-inf radius of the poisoned inputs
    steps: int = 2  # data form: signed-gradient steps per poisoned batch
    # data form: the trigger batch the accumulation aligns against: clean (the batch as drawn) |
    # crafted (the optimised trigger for the current model, the batch the trigger round trains on)
    accumulate_against: str = "clean"
    val_batch: int = 32  # attacker's held-out batch, carved from its own partition
    # accumulative, both forms: stop accumulating (reply honestly for the rest of the accumulate
    # phase; the trigger still fires) once the attacker's held-out accuracy of the global model it
    # receives falls more than this below its accuracy at the start of accumulation. null = never stop
    stealth_drop: float | None = None
    scale: float = 10.0  # scaling: reply global + scale * honest update
    noise_std: float = 1.0  # gaussian: reply global + N(0, noise_std^2) on every parameter
    # backdoor (fedguard/attacks/backdoor.py)
    target_label: int = 0  # triggered samples are relabelled to this class
    poison_fraction: float = 0.5  # share of each malicious batch stamped and relabelled
    trigger_type: str = "patch"  # patch (BadNets white square, bottom-right) | blend (seeded random pattern)
    patch_size: int = 3  # patch side in pixels (vectors: the last patch_size features)
    blend_alpha: float = 0.2  # blend: x <- (1 - alpha) x + alpha pattern
    boost: float = 1.0  # model replacement: reply global + boost * (trained - global); 1 = none
    # omniscient, server-side (strategies/omniscient.py)
    alie_z: float | None = None  # alie: mean - z * std; null -> Baruch et al.'s z from n and f
    ipm_eps: float = 0.5  # ipm: reply global - ipm_eps * mean honest update


STREAM_POISONS = ("none", "badnets", "blend", "label_flip")
SANITIZERS = ("none", "dsc", "epic", "ispl", "confusion")  # fedguard/sanitizers/


@dataclass
class StreamPoisonConfig:
    """An outsider's poisons in the HONEST clients' streams (`fedguard/stream_poison.py`): a
    seeded `rate` of each honest partition's samples is poisoned, the same samples whenever
    they are drawn. badnets/blend stamp the trigger and relabel to `target_label`;
    label_flip relabels y -> 9 - y (y -> (y + 1) % C for C != 10 classes)."""
    name: str = "none"  # none | badnets | blend | label_flip
    rate: float = 0.05  # fraction of each honest client's stream samples that are poisoned
    target_label: int = 0  # badnets / blend
    patch_size: int = 3  # badnets: patch side in pixels (vectors: the last patch_size features)
    blend_alpha: float = 0.2  # blend: x <- (1 - alpha) x + alpha pattern (pattern seeded by `seed`)


@dataclass
class SanitizerConfig:
    """What honest clients run on their stream batches (`fedguard/sanitizers/`).
    dsc: the paper's sample-level discrepancy-aware correction (Zhu et al., ICML 2023);
    epic, ispl, confusion: offline sanitisers over a buffered window of the client's stream
    (`fedguard/sanitizers/window.py`)."""
    name: str = "none"  # none | dsc | epic | ispl | confusion
    eps: float = 0.2  # dsc: L-inf radius around the original batch
    step: float = 0.02  # dsc: signed-gradient step size
    steps: int = 10  # dsc: at most this many steps per batch
    tau0: float = 0.5  # dsc: threshold tau0 + slope * t (t = the client's online step count)
    slope: float = 0.02
    history_lag: int = 1  # dsc: historical model = global model the client saw this many participations ago (0 = this round's)
    history_round: int | None = None  # dsc: instead, the global model received in this round (or its first participation after it), kept for the rest of the run (the paper's fixed checkpoint)
    drop_above: float | None = None  # dsc: after correction, drop samples whose own MD is above this
    skip_uncorrected: bool = False  # dsc: skip the SGD step of a batch whose MD is still above the threshold after correction (steps=0: an MD gate)
    dsc_start_round: int = 1  # dsc: the online phase starts here; earlier rounds are the learner's pretraining (nothing corrected, t not counted)
    window: int = 1024  # epic/ispl/confusion: the last this many distinct stream samples are re-examined
    every: int = 1  # epic/ispl/confusion: re-examine the window every this many participations
    # --- epic fields
    epic_fraction: float = 0.1  # epic: medoids per class = max(1, round(fraction * class count)) (the paper's subset size)
    epic_max_cluster: int = 1  # epic: drop the samples of clusters of at most this many members (1 = isolated points)
    epic_min_class: int = 3  # epic: classes with fewer samples in the window are left alone
    epic_start_round: int = 5  # epic: select nothing before this server round (warm-up: early models' gradients are noise)
    # --- ispl fields
    ispl_bags: int = 3  # ispl: independent ISPL runs over the window (the paper's 3)
    ispl_clusters: int = 8  # ispl: at most this many clusters (weak learners) per run (the paper's alpha)
    ispl_cluster_frac: float = 0.12  # ispl: target cluster size as a fraction of the window (paper 0.96/alpha)
    ispl_expansion: float = 0.25  # ispl: share of the current subset each refit trains on (paper 1/beta)
    ispl_min_active: float = 0.04  # ispl: a run stops when at most this fraction of the window is left (paper 2000/50k)
    ispl_min_per_class: int = 2  # ispl: floor of the cluster size and stop size: this many samples per present class
    ispl_min_votes: int = 2  # ispl: kept if the plurality vote is the label with at least this many votes
    ispl_min_share: float = 0.1  # ispl: also kept if this share of the learners not trained on it name its label (0 = paper's rule)
    ispl_steps: int = 40  # ispl: full-batch Adam steps of a fresh weak-learner fit (refits: half; core fit: double)
    ispl_lr: float = 0.1  # ispl: Adam learning rate of the weak learners (softmax regression on global-model features)
    ispl_spl_iters: int = 4  # ispl: self-paced refinement iterations after the vote (paper 20; 0 = vote only)
    # --- confusion fields
    confusion_clean_size: int = 200  # confusion: clean samples handed to the client (first of the server's validation split)
    confusion_rounds: int = 2  # confusion: confusion rounds (pretrain, confuse, distill), the last one without distillation (paper 6)
    confusion_pretrain_steps: int = 48  # confusion: SGD steps of (batch_size) pretraining per round (paper 40-100 epochs)
    confusion_pretrain_lr: float = 0.05  # confusion: learning rate of round 0's pretraining on the window (later rounds use confusion_lr)
    confusion_iters: int = 24  # confusion: confusion steps per round (paper 2000-6000)
    confusion_lr: float = 0.01  # confusion: learning rate of the confusion steps and of the later rounds' pretraining
    confusion_lambda: float = 10.0  # confusion: loss ((lambda - 1) * confusion + window) / lambda (paper 15-30)
    confusion_batch_factor: int = 2  # confusion: every this many confusion steps also trains on a window batch (paper 2)
    confusion_batch_size: int = 32  # confusion: batch size of every training step (paper 32)
    confusion_distill_first: float = 0.2  # confusion: fraction of the window kept (lowest loss) after round 0
    confusion_distill_last: float = 0.05  # confusion: ... after the second-to-last round (geometric in between; rounds >= 3)
    confusion_prior_correction: bool = True  # confusion: remove each class's mean log-probability before fit/loss (false = the paper's argmax)
    confusion_fit_prob: float = 0.5  # confusion: a suspect must also get probability > this for its label (0 = the paper's argmax only)
    confusion_pca_dims: int = 2  # confusion: low-rank feature dimensions of the per-class Gaussian test (paper 2)
    confusion_cov_ridge: float = 0.001  # confusion: covariance ridge, relative to the class's mean feature variance
    confusion_ratio_threshold: float = 2.0  # confusion: a class's suspects are flagged when its likelihood ratio exceeds this (paper 2)
    confusion_max_ratio_threshold: float = 1.5  # confusion: ... or when it is the largest ratio and exceeds this (paper 1.5)
    confusion_warm_start: bool = True  # confusion: pretrain from the previous participation's pretrained base (Context.state), not from the global model


FAULT_KINDS = ("none", "crash", "hang", "nan", "wrong_shape", "oversize", "inflate_examples", "garbage")
WEIGHTINGS = ("num_examples", "uniform")


@dataclass
class FaultsConfig:
    """Injected client faults (`fedguard/faults.py`): each round, `rate` of the sampled clients
    (at least one when rate > 0; chosen seeded by seed and round) fail in the way `kind` says:
    crash (raise), hang (sleep past backend.round_timeout), or send a hostile reply (nan,
    wrong_shape, oversize, inflate_examples, garbage)."""
    kind: str = "none"
    rate: float = 0.2


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
    fraction_train: float = 1.0
    rounds: int = 20
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
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


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what is allowed."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"config error: {key}={value!r} is invalid; allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Semantic checks that types alone cannot express. Raises `ConfigError`."""
    ds, defense = cfg.dataset, cfg.defense
    if ds.name not in DATASETS:
        _fail("dataset", ds.name, ", ".join(DATASETS))
    if cfg.model.name not in MODELS:
        _fail("model", cfg.model.name, ", ".join(MODELS))
    if cfg.partitioner.name not in PARTITIONERS:
        _fail("partitioner", cfg.partitioner.name, ", ".join(PARTITIONERS))
    if defense.name not in DEFENSES:
        _fail("defense", defense.name, ", ".join(DEFENSES))
    if defense.name in WRAPPER_DEFENSES:
        inner_allowed = [d for d in DEFENSES if d not in WRAPPER_DEFENSES]
        if defense.name in ("mddsc", "epic_updates"):
            inner_allowed.append("clipping")  # over norm clipping (over fedavg)
        if defense.inner not in inner_allowed:
            _fail("defense.inner", defense.inner, ", ".join(inner_allowed))
    if cfg.num_clients < 1:
        _fail("num_clients", cfg.num_clients, "an integer >= 1")
    if not 0 <= cfg.num_malicious <= cfg.num_clients:
        _fail("num_malicious", cfg.num_malicious, f"0..num_clients ({cfg.num_clients})")
    if not 0.0 < cfg.fraction_train <= 1.0:
        _fail("fraction_train", cfg.fraction_train, "a fraction in (0, 1]")
    for key in ("rounds", "local_steps", "batch_size"):
        if cfg[key] < 1:
            _fail(key, cfg[key], "an integer >= 1")
    if cfg.lr <= 0:
        _fail("lr", cfg.lr, "a positive learning rate")
    if not 0 <= cfg.momentum < 1:
        _fail("momentum", cfg.momentum, "a value in [0, 1)")
    if ds.val_size < 1:
        _fail("dataset.val_size", ds.val_size, "an integer >= 1")
    if ds.name == "synthetic" and ds.num_samples < cfg.num_clients + ds.val_size + ds.test_size:
        _fail("dataset.num_samples", ds.num_samples,
              "at least num_clients + dataset.val_size + dataset.test_size")
    if not 0.0 < cfg.partitioner.alpha:
        _fail("partitioner.alpha", cfg.partitioner.alpha, "a positive concentration")
    if cfg.partitioner.shards_per_client < 1:
        _fail("partitioner.shards_per_client", cfg.partitioner.shards_per_client, "an integer >= 1")
    if not 0.0 <= defense.trim_beta < 0.5:
        _fail("defense.trim_beta", defense.trim_beta, "a fraction in [0, 0.5)")
    if defense.clip_norm is not None and defense.clip_norm <= 0:
        _fail("defense.clip_norm", defense.clip_norm, "a positive norm, or null for adaptive")
    if defense.history.reference not in MD_REFERENCES:
        _fail("defense.history.reference", defense.history.reference, ", ".join(MD_REFERENCES))
    if defense.history.dtype not in ("float32", "float16", "bfloat16"):
        _fail("defense.history.dtype", defense.history.dtype, "float32, float16, bfloat16")
    if defense.history.size < 1 or defense.history.stride < 1 or defense.history.lag < 0:
        _fail("defense.history", dict(defense.history), "size >= 1, stride >= 1, lag >= 0")
    if defense.threshold.rule not in MD_THRESHOLDS:
        _fail("defense.threshold.rule", defense.threshold.rule, ", ".join(MD_THRESHOLDS))
    if defense.correction.method not in MD_CORRECTIONS:
        _fail("defense.correction.method", defense.correction.method, ", ".join(MD_CORRECTIONS))
    if defense.val_batch < 1:
        _fail("defense.val_batch", defense.val_batch, "an integer >= 1")
    if defense.score_chunk is not None and defense.score_chunk < 1:
        _fail("defense.score_chunk", defense.score_chunk, "an integer >= 1, or null to score all candidates at once")
    if defense.clip_multiplier <= 0:
        _fail("defense.clip_multiplier", defense.clip_multiplier, "a positive multiplier")
    if not 0.0 < defense.epic_fraction <= 1.0:
        _fail("defense.epic_fraction", defense.epic_fraction, "a fraction of the round's replies in (0, 1]")
    if defense.epic_max_cluster < 0:
        _fail("defense.epic_max_cluster", defense.epic_max_cluster, "an integer >= 0 (0 drops nothing)")
    sampled = sampled_count(cfg.num_clients, cfg.fraction_train)
    f = defense.assumed_malicious if defense.assumed_malicious is not None else cfg.num_malicious
    robust = {defense.name, defense.inner}
    if "bulyan" in robust and sampled < 4 * f + 3:
        _fail("defense", "bulyan", f"bulyan needs sampled clients >= 4f+3 = {4 * f + 3} "
              f"(sampled={sampled}, f={f}); lower defense.assumed_malicious or sample more")
    if robust & {"krum", "multikrum"} and sampled < 2 * f + 3:
        _fail("defense", defense.name, f"krum needs sampled clients >= 2f+3 = {2 * f + 3} "
              f"(sampled={sampled}, f={f})")
    res = cfg.backend.client_resources
    if res.num_cpus <= 0:
        _fail("backend.client_resources.num_cpus", res.num_cpus, "a positive number of CPUs")
    if res.num_gpus < 0:
        _fail("backend.client_resources.num_gpus", res.num_gpus, "a non-negative (fractional) GPU count")
    init = cfg.backend.init_args
    if init.address and (init.num_cpus is not None or init.num_gpus is not None):
        _fail("backend.init_args.num_cpus", init.num_cpus,
              "null when backend.init_args.address attaches to an existing cluster")
    if cfg.resume and not (Path(cfg.resume) / "config.yaml").is_file():
        _fail("resume", cfg.resume, "a run directory holding config.yaml")
    if cfg.backend.round_timeout <= 0:
        _fail("backend.round_timeout", cfg.backend.round_timeout, "a positive number of seconds")
    supernodes = cfg.backend.num_supernodes
    if supernodes is not None:
        need = sampled_count(cfg.num_clients, cfg.fraction_train)
        if not need <= supernodes <= cfg.num_clients:
            _fail("backend.num_supernodes", supernodes,
                  f"null (one per client) or an integer in [{need}, {cfg.num_clients}] "
                  f"(at least the {need} clients sampled per round)")
    if cfg.faults.kind not in FAULT_KINDS:
        _fail("faults.kind", cfg.faults.kind, ", ".join(FAULT_KINDS))
    if not 0.0 <= cfg.faults.rate <= 1.0:
        _fail("faults.rate", cfg.faults.rate, "a fraction of the sampled clients in [0, 1]")
    if cfg.faults.kind == "hang" and cfg.faults.rate > 0 and not cfg.backend.init_args.address:
        # a hung client holds its Ray actor for 1.5 x round_timeout: leave actors for the others
        import os

        cpus = cfg.backend.init_args.num_cpus or os.cpu_count() or 1
        actors = int(cpus // cfg.backend.client_resources.num_cpus)
        hung = min(sampled, max(1, int(round(cfg.faults.rate * sampled))))
        if hung >= actors:
            _fail("faults.rate", cfg.faults.rate,
                  f"with faults.kind=hang, fewer hung clients per round ({hung}) than client actors "
                  f"({actors} = backend.init_args.num_cpus / backend.client_resources.num_cpus); "
                  "lower the rate or backend.client_resources.num_cpus")
    if cfg.weighting not in WEIGHTINGS:
        _fail("weighting", cfg.weighting, ", ".join(WEIGHTINGS))
    if not 1 <= cfg.min_replies <= sampled:
        _fail("min_replies", cfg.min_replies, f"1..sampled clients per round ({sampled})")
    if cfg.checkpoint_every < 0:
        _fail("checkpoint_every", cfg.checkpoint_every, "an integer >= 0 (0 = no checkpoints)")
    if cfg.evaluate_every < 1:
        _fail("evaluate_every", cfg.evaluate_every, "an integer >= 1")
    _validate_attack(cfg)
    _validate_stream_poison_and_sanitizer(cfg)
    _validate_data_files(cfg)


def _validate_attack(cfg: DictConfig) -> None:
    a = cfg.attack
    if a.name not in ATTACKS:
        _fail("attack", a.name, ", ".join(ATTACKS))
    if a.form not in ATTACK_FORMS:
        _fail("attack.form", a.form, ", ".join(ATTACK_FORMS))
    if a.trigger_mode not in TRIGGER_MODES:
        _fail("attack.trigger_mode", a.trigger_mode, ", ".join(TRIGGER_MODES))
    if a.accumulate_against not in ACCUMULATE_AGAINST:
        _fail("attack.accumulate_against", a.accumulate_against, ", ".join(ACCUMULATE_AGAINST))
    if a.form == "data" and a.trigger_mode != "sgd":
        _fail("attack.trigger_mode", a.trigger_mode, "sgd with attack.form=data (the victim trains on the data)")
    if a.sign not in (-1, 1):
        _fail("attack.sign", a.sign, "-1 or 1")
    for key in ("burn_in", "accumulate_rounds"):
        if a[key] < 0:
            _fail(f"attack.{key}", a[key], "an integer >= 0")
    for key in ("steps", "val_batch"):
        if a[key] < 1:
            _fail(f"attack.{key}", a[key], "an integer >= 1")
    if a.trigger_steps is not None and a.trigger_steps < 1:
        _fail("attack.trigger_steps", a.trigger_steps, "an integer >= 1, or null for local_steps")
    for key in ("norm_bound", "accumulate_norm"):
        if a[key] <= 0:
            _fail(f"attack.{key}", a[key], "a positive multiple of the honest update norm")
    for key in ("eps", "noise_std"):
        if a[key] < 0:
            _fail(f"attack.{key}", a[key], "a value >= 0")
    if a.stealth_drop is not None and not a.stealth_drop > 0:
        _fail("attack.stealth_drop", a.stealth_drop, "an accuracy drop > 0 (a fraction), or null to never stop")
    _validate_backdoor_and_omniscient(cfg)
    if a.name == "none":
        return
    if cfg.num_malicious < 1:
        _fail("num_malicious", cfg.num_malicious, f"an integer >= 1 with attack={a.name}")
    trigger = a.trigger_round if a.trigger_round is not None else a.burn_in + a.accumulate_rounds + 1
    if not 1 <= trigger <= cfg.rounds:
        _fail("attack.trigger_round", a.trigger_round, f"1..rounds ({cfg.rounds})" + (
            f"; null means burn_in + accumulate_rounds + 1 = {trigger}" if a.trigger_round is None else ""))
    if trigger - a.accumulate_rounds - 1 < a.burn_in:
        _fail("attack.trigger_round", a.trigger_round,
              f">= burn_in + accumulate_rounds + 1 = {a.burn_in + a.accumulate_rounds + 1}")


def _validate_backdoor_and_omniscient(cfg: DictConfig) -> None:
    a = cfg.attack
    if a.trigger_type not in BACKDOOR_TRIGGERS:
        _fail("attack.trigger_type", a.trigger_type, ", ".join(BACKDOOR_TRIGGERS))
    classes = cfg.dataset.num_classes if cfg.dataset.name == "synthetic" else KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if a.target_label < 0 or (classes is not None and a.target_label >= classes):
        _fail("attack.target_label", a.target_label,
              f"a class in 0..{classes - 1}" if classes is not None else "a class index >= 0")
    if not 0.0 < a.poison_fraction <= 1.0:
        _fail("attack.poison_fraction", a.poison_fraction, "a fraction in (0, 1]")
    if a.patch_size < 1:
        _fail("attack.patch_size", a.patch_size, "an integer >= 1")
    if not 0.0 < a.blend_alpha <= 1.0:
        _fail("attack.blend_alpha", a.blend_alpha, "a weight in (0, 1]")
    if a.boost <= 0:
        _fail("attack.boost", a.boost, "a positive factor (1 = no model replacement)")
    if a.alie_z is not None and a.alie_z < 0:
        _fail("attack.alie_z", a.alie_z, "a value >= 0, or null for Baruch et al.'s z from n and f")
    if a.ipm_eps <= 0:
        _fail("attack.ipm_eps", a.ipm_eps, "a positive factor")


def _validate_stream_poison_and_sanitizer(cfg: DictConfig) -> None:
    sp, san = cfg.stream_poison, cfg.sanitizer
    if sp.name not in STREAM_POISONS:
        _fail("stream_poison", sp.name, ", ".join(STREAM_POISONS))
    if not 0.0 <= sp.rate <= 1.0:
        _fail("stream_poison.rate", sp.rate, "a fraction of the honest clients' stream samples in [0, 1]")
    classes = cfg.dataset.num_classes if cfg.dataset.name == "synthetic" else KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if sp.target_label < 0 or (classes is not None and sp.target_label >= classes):
        _fail("stream_poison.target_label", sp.target_label,
              f"a class in 0..{classes - 1}" if classes is not None else "a class index >= 0")
    if sp.patch_size < 1:
        _fail("stream_poison.patch_size", sp.patch_size, "an integer >= 1")
    if not 0.0 < sp.blend_alpha <= 1.0:
        _fail("stream_poison.blend_alpha", sp.blend_alpha, "a weight in (0, 1]")
    if san.name not in SANITIZERS:
        _fail("sanitizer", san.name, ", ".join(SANITIZERS))
    if san.eps < 0:
        _fail("sanitizer.eps", san.eps, "an L-inf radius >= 0")
    if san.step <= 0:
        _fail("sanitizer.step", san.step, "a positive step size")
    if san.steps < 0:
        _fail("sanitizer.steps", san.steps, "an integer >= 0")
    if san.slope < 0:
        _fail("sanitizer.slope", san.slope, "a value >= 0 (the threshold grows with the online step)")
    if san.history_lag < 0:
        _fail("sanitizer.history_lag", san.history_lag, "an integer >= 0 (participations back)")
    if san.name == "dsc" and cfg.backend.num_supernodes is not None:
        snapshots = "with virtual clients (backend.num_supernodes): the server carries a client's JSON state " \
                    "only, not DSC's model snapshots"
        if san.history_round is not None:
            _fail("sanitizer.history_round", san.history_round, "null " + snapshots)
        if san.history_lag > 0:
            _fail("sanitizer.history_lag", san.history_lag, "0 " + snapshots)
    if san.history_round is not None and san.history_round < 1:
        _fail("sanitizer.history_round", san.history_round, "a server round >= 1, or null for history_lag")
    if san.drop_above is not None and san.drop_above <= 0:
        _fail("sanitizer.drop_above", san.drop_above, "a positive MD, or null to drop nothing")
    if san.window < 1:
        _fail("sanitizer.window", san.window, "an integer >= 1 (stream samples buffered)")
    if san.every < 1:
        _fail("sanitizer.every", san.every, "an integer >= 1 (participations between re-examinations)")
    # --- epic checks
    if not 0.0 < san.epic_fraction <= 1.0:
        _fail("sanitizer.epic_fraction", san.epic_fraction, "a fraction of each class's samples in (0, 1]")
    if san.epic_max_cluster < 0:
        _fail("sanitizer.epic_max_cluster", san.epic_max_cluster, "an integer >= 0 (0 = drop nothing)")
    if san.epic_min_class < 1:
        _fail("sanitizer.epic_min_class", san.epic_min_class, "an integer >= 1 (samples a class needs to be examined)")
    if san.dsc_start_round < 1:
        _fail("sanitizer.dsc_start_round", san.dsc_start_round, "a server round >= 1 (1 = from the start)")
    if san.epic_start_round < 1:
        _fail("sanitizer.epic_start_round", san.epic_start_round, "a server round >= 1 (1 = from the start)")
    # --- ispl checks
    for key in ("ispl_bags", "ispl_clusters", "ispl_steps"):
        if getattr(san, key) < 1:
            _fail(f"sanitizer.{key}", getattr(san, key), "an integer >= 1")
    for key in ("ispl_cluster_frac", "ispl_expansion"):
        if not 0.0 < getattr(san, key) <= 1.0:
            _fail(f"sanitizer.{key}", getattr(san, key), "a fraction in (0, 1]")
    if not 0.0 <= san.ispl_min_active < 1.0:
        _fail("sanitizer.ispl_min_active", san.ispl_min_active, "a fraction of the window in [0, 1)")
    if san.ispl_min_per_class < 1:
        _fail("sanitizer.ispl_min_per_class", san.ispl_min_per_class, "an integer >= 1 (samples per present class)")
    if san.ispl_min_votes < 1:
        _fail("sanitizer.ispl_min_votes", san.ispl_min_votes, "an integer >= 1 (votes the label needs)")
    if not 0.0 <= san.ispl_min_share <= 1.0:
        _fail("sanitizer.ispl_min_share", san.ispl_min_share, "a share of the held-out learners in [0, 1] (0 = the paper's rule)")
    if san.ispl_lr <= 0:
        _fail("sanitizer.ispl_lr", san.ispl_lr, "a positive learning rate")
    if san.ispl_spl_iters < 0:
        _fail("sanitizer.ispl_spl_iters", san.ispl_spl_iters, "an integer >= 0 (0 = vote only)")
    # --- confusion checks
    for key in ("confusion_clean_size", "confusion_rounds", "confusion_batch_factor", "confusion_batch_size",
                "confusion_pca_dims"):
        if getattr(san, key) < 1:
            _fail(f"sanitizer.{key}", getattr(san, key), "an integer >= 1")
    for key in ("confusion_pretrain_steps", "confusion_iters"):
        if getattr(san, key) < 0:
            _fail(f"sanitizer.{key}", getattr(san, key), "an integer >= 0")
    for key in ("confusion_pretrain_lr", "confusion_lr"):
        if getattr(san, key) < 0:
            _fail(f"sanitizer.{key}", getattr(san, key), "a learning rate >= 0")
    if san.confusion_lambda <= 1:
        _fail("sanitizer.confusion_lambda", san.confusion_lambda, "a weight > 1")
    for key in ("confusion_distill_first", "confusion_distill_last"):
        if not 0.0 < getattr(san, key) <= 1.0:
            _fail(f"sanitizer.{key}", getattr(san, key), "a fraction of the window in (0, 1]")
    if not 0.0 <= san.confusion_fit_prob < 1.0:
        _fail("sanitizer.confusion_fit_prob", san.confusion_fit_prob, "a probability in [0, 1) (0 = argmax only)")
    if san.confusion_cov_ridge <= 0:
        _fail("sanitizer.confusion_cov_ridge", san.confusion_cov_ridge, "a positive relative ridge")
    if san.confusion_ratio_threshold < 1 or san.confusion_max_ratio_threshold < 1:
        _fail("sanitizer.confusion_ratio_threshold", (san.confusion_ratio_threshold, san.confusion_max_ratio_threshold),
              "likelihood ratios >= 1 (both thresholds)")
    if san.name == "confusion" and san.confusion_warm_start and cfg.backend.num_supernodes is not None:
        _fail("sanitizer.confusion_warm_start", san.confusion_warm_start,
              "false with virtual clients (backend.num_supernodes): the server carries a client's JSON "
              "state only, not the warm-start model")


def _validate_data_files(cfg: DictConfig) -> None:
    from fedguard.data.sources import expected_files  # local: keeps this module light

    ds = cfg.dataset
    if ds.name == "hub" and not ds.hub_name:
        _fail("dataset.hub_name", ds.hub_name, "a Hugging Face dataset id, e.g. 'ylecun/mnist'")
    if ds.name not in ("mnist", "cifar10"):
        return
    if not ds.root:
        _fail("dataset.root", ds.root, f"a directory holding the {ds.name} files")
    problem = expected_files(ds.name, Path(ds.root))
    if problem:
        _fail("dataset.root", ds.root, problem)


def resume_config(run_dir: str | Path) -> DictConfig:
    """The config to continue the run in `run_dir`: its saved `config.yaml` (every other
    override of the resuming command is ignored), with `resume` and `run_dir` set to it."""
    saved = OmegaConf.load(Path(run_dir) / "config.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(FedGuardConfig), saved)
    cfg.resume = str(run_dir)
    cfg.run_dir = str(run_dir)
    return cfg


# keys that may differ between a run and its resumption
RESUME_FREE_KEYS = ("resume", "run_dir", "progress")


def flatten(cfg: DictConfig | dict) -> dict[str, bool | int | float | str]:
    """Nested config -> {dotted.key: scalar}; None becomes "" (run_config has no null)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, bool | int | float | str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            else:
                flat[dotted] = "" if value is None else value

    walk(container, "")
    return flat


def from_flat(flat: dict[str, Any]) -> DictConfig:
    """Rebuild the typed config from `flatten`'s output (e.g. `context.run_config`)."""
    cfg = OmegaConf.structured(FedGuardConfig)
    for key, value in flat.items():
        OmegaConf.update(cfg, key, None if value == "" else value, merge=False)
    return cfg


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed config for `overrides`, as `fedguard run` would see it (no validation)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def flwr_app_config_toml(cfg: DictConfig) -> str:
    """The `[tool.flwr.app.config]` table holding `flatten(cfg)` (for pyproject.toml)."""
    import json

    def value(v):
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    flat = flatten(cfg)
    return "[tool.flwr.app.config]\n" + "".join(f"{json.dumps(k)} = {value(v)}\n" for k, v in sorted(flat.items()))
