"""The `defense` group: the server strategy (`strategies.DEFENSES`), the wrapper's `inner`, and
the knobs of each defense; mddsc's in three sections (history, threshold, correction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

from fedguard.config.errors import check_name, fail
from fedguard.defense.history import ReferenceMode
from strategies import DEFENSES, inner_names
from strategies.cclip import CCLIP_INITS

MD_REFERENCES = get_args(ReferenceMode)  # lag | oldest | all
HISTORY_DTYPES = ("float32", "float16", "bfloat16")
MD_THRESHOLDS = ("robust", "schedule")
MD_CORRECTIONS = ("scale", "pgd", "drop")


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
    tau0: float = 0.5  # schedule: the threshold at round 0
    slope: float = 0.02  # schedule: the threshold's growth per round


@dataclass
class CorrectionConfig:
    """mddsc: what happens to a flagged update."""
    method: str = "drop"  # drop | scale | pgd (MNIST: scaled accumulation updates still accumulate; drop closes the gap to clean)
    scale_iters: int = 8  # scale: bisection steps (alpha within 2**-scale_iters of the threshold's edge)
    pgd_eps: float = 0.5  # pgd: L2 radius, as a fraction of the update norm
    pgd_steps: int = 10  # pgd: projected gradient steps
    pgd_lr: float = 0.05  # pgd: step size


@dataclass
class DefenseConfig:
    name: str = "fedavg"
    inner: str | None = None  # inner strategy of a wrapper defense
    # trimmed_mean: the fraction beta cut at each end, int(beta * n) of the n replies per coordinate; to
    # cut exactly the f malicious the defense assumes, beta = f/n: null -> f / sampled clients, f =
    # assumed_malicious (null: num_malicious). 0.2 = the f/n of 2 in 10 clients, whatever num_malicious
    trim_beta: float | None = 0.2
    assumed_malicious: int | None = None  # f for krum/bulyan/dnc (and trim_beta null); None -> num_malicious
    multikrum_select: int | None = None  # m for multikrum; None -> n - f
    clip_norm: float | None = None  # clipping: fixed bound; None -> median of update norms
    clip_multiplier: float = 1.0  # clipping: bound = multiplier * median norm
    epic_fraction: float = 0.1  # epic_updates (server-side adaptation): medoids = max(2, round(fraction * replies))
    epic_max_cluster: int = 1  # epic_updates: drop updates in clusters of at most this many
    cclip_tau: float | None = None  # cclip: clipping radius; null -> the median distance to the center, each iteration
    cclip_iters: int = 1  # cclip: clipping iterations L per round
    cclip_init: str = "previous"  # cclip: start from the previous round's aggregate update | zero
    geomed_nu: float = 1e-6  # geomed: Weiszfeld smoothing (distances floored at nu)
    geomed_iters: int = 100  # geomed: maximum Weiszfeld iterations
    geomed_tol: float = 1e-6  # geomed: stop when the objective changes by less than this fraction
    dnc_iters: int = 5  # dnc: filtering rounds
    dnc_subsample: int = 10000  # dnc: coordinates sampled per filtering round
    dnc_filter_frac: float = 1.0  # dnc: c, removes floor(c * f) updates per filtering round
    flame_noise: float = 0.001  # flame: noise std = flame_noise * median update norm (parameters only)
    fldetector_window: int = 10  # fldetector: curvature pairs and score window N
    fldetector_start: int = 3  # fldetector: first round whose flags are applied
    val_batch: int = 64  # mddsc: server validation samples scored per round (MNIST: a quarter of 256's cost, TPR 0.90 vs 0.94)
    score_chunk: int | None = None  # mddsc: candidate models per vmap call when scoring (null = all at once; bounds peak activation memory)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)


def validate_defense(d) -> None:
    check_name("defense", d.name, DEFENSES)
    if DEFENSES.get(d.name).wraps and d.inner not in inner_names(d.name):
        fail("defense.inner", d.inner, ", ".join(inner_names(d.name)))
    if d.assumed_malicious is not None and d.assumed_malicious < 0:
        fail("defense.assumed_malicious", d.assumed_malicious, "an integer >= 0, or null for num_malicious")
    if d.multikrum_select is not None and d.multikrum_select < 1:
        fail("defense.multikrum_select", d.multikrum_select, "an integer >= 1, or null for n - f")
    if d.trim_beta is not None and not 0.0 <= d.trim_beta < 0.5:
        fail("defense.trim_beta", d.trim_beta, "a fraction in [0, 0.5), or null for f / sampled clients")
    if d.clip_norm is not None and d.clip_norm <= 0:
        fail("defense.clip_norm", d.clip_norm, "a positive norm, or null for adaptive")
    if d.clip_multiplier <= 0:
        fail("defense.clip_multiplier", d.clip_multiplier, "a positive multiplier")
    if not 0.0 < d.epic_fraction <= 1.0:
        fail("defense.epic_fraction", d.epic_fraction, "a fraction of the round's replies in (0, 1]")
    if d.epic_max_cluster < 0:
        fail("defense.epic_max_cluster", d.epic_max_cluster, "an integer >= 0 (0 drops nothing)")
    _validate_robust_aggregators(d)
    if d.val_batch < 1:
        fail("defense.val_batch", d.val_batch, "an integer >= 1")
    if d.score_chunk is not None and d.score_chunk < 1:
        fail("defense.score_chunk", d.score_chunk, "an integer >= 1, or null to score all candidates at once")
    _validate_history(d.history)
    if d.threshold.rule not in MD_THRESHOLDS:
        fail("defense.threshold.rule", d.threshold.rule, ", ".join(MD_THRESHOLDS))
    if d.correction.method not in MD_CORRECTIONS:
        fail("defense.correction.method", d.correction.method, ", ".join(MD_CORRECTIONS))


def _validate_robust_aggregators(d) -> None:
    """cclip, geomed, dnc, flame, fldetector."""
    if d.cclip_tau is not None and d.cclip_tau <= 0:
        fail("defense.cclip_tau", d.cclip_tau, "a positive radius, or null for the median distance")
    if d.cclip_init not in CCLIP_INITS:
        fail("defense.cclip_init", d.cclip_init, ", ".join(CCLIP_INITS))
    for key in ("cclip_iters", "geomed_iters", "dnc_iters", "dnc_subsample", "fldetector_window", "fldetector_start"):
        if getattr(d, key) < 1:
            fail(f"defense.{key}", getattr(d, key), "an integer >= 1")
    for key in ("geomed_nu", "geomed_tol", "dnc_filter_frac"):
        if not getattr(d, key) > 0:
            fail(f"defense.{key}", getattr(d, key), "a positive number")
    if d.flame_noise < 0:
        fail("defense.flame_noise", d.flame_noise, "a noise scale >= 0")


def _validate_history(h) -> None:
    if h.reference not in MD_REFERENCES:
        fail("defense.history.reference", h.reference, ", ".join(MD_REFERENCES))
    if h.dtype not in HISTORY_DTYPES:
        fail("defense.history.dtype", h.dtype, ", ".join(HISTORY_DTYPES))
    if h.size < 1 or h.stride < 1 or h.lag < 0:
        fail("defense.history", dict(h), "size >= 1, stride >= 1, lag >= 0")
