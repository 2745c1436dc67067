"""The `sanitizer` group: what honest clients run on their stream batches
(`fedguard.sanitizers.SANITIZERS`). The keys every window sanitiser reads sit at
`sanitizer.*`; each sanitiser's own knobs in its sub-config (`sanitizer.dsc.*`,
`sanitizer.epic.*`, `sanitizer.ispl.*`, `sanitizer.confusion.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedguard.config.errors import check_name, fail
from fedguard.sanitizers import SANITIZERS


@dataclass
class DSCConfig:
    """dsc: the paper's sample-level discrepancy-aware correction (Zhu et al., ICML 2023),
    `fedguard/sanitizers/dsc.py`."""
    eps: float = 0.2  # L-inf radius around the original batch
    step: float = 0.02  # signed-gradient step size
    steps: int = 10  # at most this many steps per batch
    tau0: float = 0.5  # threshold tau0 + slope * t (t = the client's online step count)
    slope: float = 0.02  # the threshold's growth per online step
    # historical model = the global model the client saw this many participations ago (0 = this round's)
    history_lag: int = 1
    # instead, the global model received in this round (or at its first participation after
    # it), kept for the rest of the run (the paper's fixed checkpoint)
    history_round: int | None = None
    drop_above: float | None = None  # after correction, drop samples whose own MD is above this
    # skip the SGD step of a batch whose MD is still above the threshold after correction (steps=0: an MD gate)
    skip_uncorrected: bool = False
    # the online phase starts in this round; earlier rounds are the learner's pretraining
    # (nothing corrected, t not counted)
    start_round: int = 1


@dataclass
class AdvTrainingConfig:
    """adv_training: the DSC paper's AT baseline, PGD adversarial training of each batch
    (Madry et al., ICLR 2018), `fedguard/sanitizers/adv_training.py`; the reference's settings."""
    eps: float = 0.2  # L-inf radius of the adversarial examples
    step: float = 0.02  # signed-gradient ascent step size
    steps: int = 10  # PGD steps per batch (from the clean batch, no random start)
    start_round: int = 1  # the online phase starts in this round; earlier rounds train on the batches as they are


@dataclass
class EPICConfig:
    """epic: EPIC over the window (Yang et al., ICML 2022), `fedguard/sanitizers/epic.py`."""
    fraction: float = 0.1  # medoids per class = max(1, round(fraction * class count)) (the paper's subset size)
    max_cluster: int = 1  # drop the samples of clusters of at most this many members (1 = isolated points)
    min_class: int = 3  # classes with fewer samples in the window are left alone
    start_round: int = 5  # select nothing before this server round (warm-up: early models' gradients are noise)


@dataclass
class ISPLConfig:
    """ispl: incompatibility clustering over the window (Jin et al., ICLR 2023), `fedguard/sanitizers/ispl.py`."""
    bags: int = 3  # independent ISPL runs over the window (the paper's 3)
    clusters: int = 8  # at most this many clusters (weak learners) per run (the paper's alpha)
    cluster_frac: float = 0.12  # target cluster size as a fraction of the window (paper 0.96/alpha)
    expansion: float = 0.25  # share of the current subset each refit trains on (paper 1/beta)
    min_active: float = 0.04  # a run stops when at most this fraction of the window is left (paper 2000/50k)
    min_per_class: int = 2  # floor of the cluster size and stop size: this many samples per present class
    min_votes: int = 2  # kept if the plurality vote is the label with at least this many votes
    min_share: float = 0.1  # also kept if this share of the learners not trained on it name its label (0 = paper's rule)
    steps: int = 40  # full-batch Adam steps of a fresh weak-learner fit (refits: half; core fit: double)
    lr: float = 0.1  # Adam learning rate of the weak learners (softmax regression on global-model features)
    spl_iters: int = 4  # self-paced refinement iterations after the vote (paper 20; 0 = vote only)


@dataclass
class ConfusionConfig:
    """confusion: Confusion Training over the window (Qi et al., USENIX Security 2023),
    `fedguard/sanitizers/confusion.py`; constants rescaled from the paper's 50k-sample runs."""
    clean_size: int = 200  # clean samples handed to the client (first of the server's validation split)
    rounds: int = 2  # confusion rounds (pretrain, confuse, distill), the last one without distillation (paper 6)
    pretrain_steps: int = 48  # SGD steps of (batch_size) pretraining per round (paper 40-100 epochs)
    pretrain_lr: float = 0.05  # learning rate of round 0's pretraining on the window (later rounds use lr)
    iters: int = 24  # confusion steps per round (paper 2000-6000)
    lr: float = 0.01  # learning rate of the confusion steps and of the later rounds' pretraining
    lam: float = 10.0  # lambda: loss ((lambda - 1) * confusion + window) / lambda (paper 15-30)
    batch_factor: int = 2  # every this many confusion steps also trains on a window batch (paper 2)
    batch_size: int = 32  # batch size of every training step (paper 32)
    distill_first: float = 0.2  # fraction of the window kept (lowest loss) after round 0
    distill_last: float = 0.05  # ... after the second-to-last round (geometric in between; rounds >= 3)
    prior_correction: bool = True  # remove each class's mean log-probability before fit/loss (false = the paper's argmax)
    fit_prob: float = 0.5  # a suspect must also get probability > this for its label (0 = the paper's argmax only)
    pca_dims: int = 2  # low-rank feature dimensions of the per-class Gaussian test (paper 2)
    cov_ridge: float = 0.001  # covariance ridge, relative to the class's mean feature variance
    ratio_threshold: float = 2.0  # a class's suspects are flagged when its likelihood ratio exceeds this (paper 2)
    max_ratio_threshold: float = 1.5  # ... or when it is the largest ratio and exceeds this (paper 1.5)
    warm_start: bool = True  # pretrain from the previous participation's pretrained base (Context.state), not from the global model


@dataclass
class SanitizerConfig:
    """What honest clients run on their stream batches (`fedguard/sanitizers/`): dsc corrects
    each batch online, adv_training replaces it by its PGD examples; epic, ispl and confusion re-examine a buffered window of the client's
    stream (`fedguard/sanitizers/window.py`)."""
    name: str = "none"  # a sanitiser of fedguard.sanitizers.SANITIZERS
    window: int = 1024  # epic/ispl/confusion: the last this many distinct stream samples are re-examined
    every: int = 1  # epic/ispl/confusion: re-examine the window every this many participations
    dsc: DSCConfig = field(default_factory=DSCConfig)
    adv_training: AdvTrainingConfig = field(default_factory=AdvTrainingConfig)
    epic: EPICConfig = field(default_factory=EPICConfig)
    ispl: ISPLConfig = field(default_factory=ISPLConfig)
    confusion: ConfusionConfig = field(default_factory=ConfusionConfig)


def validate_sanitizer(san) -> None:
    """The sanitiser's own values (every sub-config, whichever is selected); what virtual
    clients cannot carry is a cross-group check (`fedguard.config.validate`)."""
    check_name("sanitizer", san.name, SANITIZERS)
    if san.window < 1:
        fail("sanitizer.window", san.window, "an integer >= 1 (stream samples buffered)")
    if san.every < 1:
        fail("sanitizer.every", san.every, "an integer >= 1 (participations between re-examinations)")
    _validate_dsc(san.dsc)
    _validate_adv_training(san.adv_training)
    _validate_epic(san.epic)
    _validate_ispl(san.ispl)
    _validate_confusion(san.confusion)


def _validate_signed_steps(prefix: str, node, min_steps: int) -> None:
    """eps, step, steps of a signed-gradient walk in an L-inf ball (dsc's correction, AT's PGD)."""
    if node.eps < 0:
        fail(f"{prefix}.eps", node.eps, "an L-inf radius >= 0")
    if node.step <= 0:
        fail(f"{prefix}.step", node.step, "a positive step size")
    if node.steps < min_steps:
        fail(f"{prefix}.steps", node.steps, f"an integer >= {min_steps}")


def _validate_adv_training(a) -> None:
    _validate_signed_steps("sanitizer.adv_training", a, min_steps=1)


def _validate_dsc(d) -> None:
    _validate_signed_steps("sanitizer.dsc", d, min_steps=0)
    if d.slope < 0:
        fail("sanitizer.dsc.slope", d.slope, "a value >= 0 (the threshold grows with the online step)")
    if d.history_lag < 0:
        fail("sanitizer.dsc.history_lag", d.history_lag, "an integer >= 0 (participations back)")
    if d.history_round is not None and d.history_round < 1:
        fail("sanitizer.dsc.history_round", d.history_round, "a server round >= 1, or null for history_lag")
    if d.drop_above is not None and d.drop_above <= 0:
        fail("sanitizer.dsc.drop_above", d.drop_above, "a positive MD, or null to drop nothing")
    if d.start_round < 1:
        fail("sanitizer.dsc.start_round", d.start_round, "a server round >= 1 (1 = from the start)")


def _validate_epic(e) -> None:
    if not 0.0 < e.fraction <= 1.0:
        fail("sanitizer.epic.fraction", e.fraction, "a fraction of each class's samples in (0, 1]")
    if e.max_cluster < 0:
        fail("sanitizer.epic.max_cluster", e.max_cluster, "an integer >= 0 (0 = drop nothing)")
    if e.min_class < 1:
        fail("sanitizer.epic.min_class", e.min_class, "an integer >= 1 (samples a class needs to be examined)")
    if e.start_round < 1:
        fail("sanitizer.epic.start_round", e.start_round, "a server round >= 1 (1 = from the start)")


def _validate_ispl(i) -> None:
    for key in ("bags", "clusters", "steps"):
        if i[key] < 1:
            fail(f"sanitizer.ispl.{key}", i[key], "an integer >= 1")
    for key in ("cluster_frac", "expansion"):
        if not 0.0 < i[key] <= 1.0:
            fail(f"sanitizer.ispl.{key}", i[key], "a fraction in (0, 1]")
    if not 0.0 <= i.min_active < 1.0:
        fail("sanitizer.ispl.min_active", i.min_active, "a fraction of the window in [0, 1)")
    if i.min_per_class < 1:
        fail("sanitizer.ispl.min_per_class", i.min_per_class, "an integer >= 1 (samples per present class)")
    if i.min_votes < 1:
        fail("sanitizer.ispl.min_votes", i.min_votes, "an integer >= 1 (votes the label needs)")
    if not 0.0 <= i.min_share <= 1.0:
        fail("sanitizer.ispl.min_share", i.min_share,
             "a share of the held-out learners in [0, 1] (0 = the paper's rule)")
    if i.lr <= 0:
        fail("sanitizer.ispl.lr", i.lr, "a positive learning rate")
    if i.spl_iters < 0:
        fail("sanitizer.ispl.spl_iters", i.spl_iters, "an integer >= 0 (0 = vote only)")


def _validate_confusion(c) -> None:
    for key in ("clean_size", "rounds", "batch_factor", "batch_size", "pca_dims"):
        if c[key] < 1:
            fail(f"sanitizer.confusion.{key}", c[key], "an integer >= 1")
    for key in ("pretrain_steps", "iters"):
        if c[key] < 0:
            fail(f"sanitizer.confusion.{key}", c[key], "an integer >= 0")
    for key in ("pretrain_lr", "lr"):
        if c[key] < 0:
            fail(f"sanitizer.confusion.{key}", c[key], "a learning rate >= 0")
    if c.lam <= 1:
        fail("sanitizer.confusion.lam", c.lam, "a weight > 1")
    for key in ("distill_first", "distill_last"):
        if not 0.0 < c[key] <= 1.0:
            fail(f"sanitizer.confusion.{key}", c[key], "a fraction of the window in (0, 1]")
    if not 0.0 <= c.fit_prob < 1.0:
        fail("sanitizer.confusion.fit_prob", c.fit_prob, "a probability in [0, 1) (0 = argmax only)")
    if c.cov_ridge <= 0:
        fail("sanitizer.confusion.cov_ridge", c.cov_ridge, "a positive relative ridge")
    if c.ratio_threshold < 1 or c.max_ratio_threshold < 1:
        fail("sanitizer.confusion.ratio_threshold", (c.ratio_threshold, c.max_ratio_threshold),
             "likelihood ratios >= 1 (both thresholds)")
