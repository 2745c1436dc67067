"""Incompatibility clustering: Inverse Self-Paced Learning + boosting (Jin, Sun, Rinard, ICLR 2023),
run by a client on its stream window (`WindowSanitizer`).

The paper's idea: poisoned and clean data are *incompatible* (training on one does not help on
the other), so a subset that a model trained on part of it fits well generalises "only to
itself". ISPL finds such self-compatible subsets by shrinking a training subset towards the
samples with the LOWEST loss under a model trained on it; boosting then lets weak learners
trained on those subsets vote on every sample's label. As in the reference implementation
(github.com/charlesjin/compatibility_clustering, `defense/boost.py`, `defense/weak.py`):

    for each of `bags` independent runs:                       (reference: 3)
        active <- the whole window
        for e in 0 .. clusters-1:                               (reference: alpha = 8)
            stop if |active| <= stop size
            dp <- target cluster size / |active|   (target = cluster_frac * n; ref 0.96/alpha)
            core set, learner <- ISPL(active, dp)
            active <- active minus the core set
    ISPL(active, dp):
        R <- refit_iterations(dp) = 2 + clamp(floor(1 / dp), 1, 3)    (0 when dp ~ 1: take all)
        train <- random half of active on the bag's first cluster, else all of active
        for it in 0 .. R-1:
            fit the learner on `train` (fresh at it = 0, continued afterwards)
            m <- 0.9 m + 0.1 loss(active)                           (per-sample loss EMA, m0 = 0)
            core <- {loss <= quantile(m, q)} OR, per class, {loss <= quantile(m_class, q / 8)}
                    with q = keep_fraction(it) = clamp(min(3, max(1, R - 2 - it)) * dp, 0, 1)
            train <- each core sample with probability `expansion`  (reference 1/beta = 1/4)
        return core, a fresh learner fitted on the whole core set
    vote: every learner predicts every window sample; plurality (random tie-break) with count c;
          kept <- vote == label and c >= min_votes  (reference: c > 1)
    SPL refinement: score <- 1/2; `spl_iters` times (reference 20): fit one learner (continued)
          on the kept samples, score <- 0.8 score + 0.2 [prediction == label], kept <- score > 1/2
    flagged = not kept

Weak learners (the departure that makes it client-sized): the reference trains a fresh
ResNet for 8 + 4 (R-1) + 40 epochs per cluster, ~24 clusters; on 2 shared CPU cores that is
hundreds of CNN epochs per round. Here a weak learner is a softmax regression (or a one-hidden
-layer MLP, `hidden` > 0) fitted by full-batch Adam on fixed per-sample features, so a whole
select() costs one forward pass of the global model plus a few thousand tiny steps. Features
(`features`):
- `penultimate` (default): the input of the received global model's last Linear layer, in eval
  mode, i.e. the representation the federation has learned so far. A global model that has
  not (yet) learnt a backdoor maps a triggered "7" near the 7s, so learners trained on clean
  clusters vote "7" against its poisoned label; label flips likewise. Limitation: once the
  global model itself has learnt the trigger, triggered samples look like the target class in
  this space and may escape.
- `input`: the raw flattened sample. Slower to fit well, but independent of the global model:
  the fallback when it may already be backdoored.
Features are divided by one scalar (their root-mean-square over the window), never per
dimension, and the softmax regression starts at zero weights: a feature that is 0 on every
sample a learner is trained on (e.g. a trigger-only unit, or the patch pixels) gets no
gradient and keeps weight 0, so the clean clusters' learners ignore the trigger entirely.

Rescaled constants (the reference assumes ~50k samples): the cluster target size is
`cluster_frac * n` but at least `min_per_class` samples per class present in the window; a
bag stops when at most max(`min_active` * n, that floor) samples are left (reference 2000 of
50k = 4%). Classes absent from the window are simply never trained on; a class with one or
two samples still keeps its lowest-loss sample in every core set (per-class quantile). With
fewer learners than `min_votes`, the vote needs all of them. Optimisation: "epochs" of the
reference become full-batch steps: a fresh fit `steps`, a continued refit `steps // 2`, the
final fit on a core set `2 * steps`, each SPL iteration `steps // 2`.

Determinism: one seed is drawn from torch's global generator per select(); everything random
(half split, expansion subsamples, vote tie-breaks, MLP initialisation) comes from it.
self.stats[STEPS] counts the weak learners trained this round (clusters found, all bags).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedguard.defense.md import _eval_mode
from fedguard.sanitizers import STEPS
from fedguard.sanitizers.window import WindowSanitizer

LOSS_DECAY = 0.9  # reference: per-sample loss EMA m <- 0.9 m + 0.1 loss
CLASS_FLOOR = 1.0 / 8.0  # reference: per-class keep quantile = keep_fraction / 8
SPL_MOMENTUM = 0.8  # reference: correctness score <- 0.8 score + 0.2 correct
WEIGHT_DECAY = 1e-4  # L2 on the weak learners (coupled, Adam)
FEATURES = ("penultimate", "input")


# --------------------------------------------------------------------------- the schedule
def cluster_fraction(n_total: int, n_active: int, cluster_frac: float, min_size: int) -> float:
    """dp: the target cluster size max(cluster_frac * n_total, min_size) as a fraction of the
    active samples, at most 1 (reference: data_perc * N / |active|)."""
    if n_active <= 0:
        return 1.0
    return float(min(1.0, max(cluster_frac * n_total, float(min_size)) / n_active))


def refit_iterations(dp: float) -> int:
    """ISPL iterations for cluster fraction dp: 2 + clamp(floor(1 / dp), 1, 3); 0 when dp
    is (about) 1, i.e. the core set is the whole active set."""
    if dp >= 0.999:
        return 0
    return 2 + max(1, min(3, int(1.0 // dp)))


def keep_fraction(it: int, refit_it: int, dp: float) -> float:
    """The annealed fraction of the active set kept after iteration `it` of `refit_it`:
    min(3, max(1, refit_it - 2 - it)) * dp, clipped to [0, 1] (so 3dp, 2dp, dp, dp, ...)."""
    return float(min(1.0, max(0.0, min(3, max(1, refit_it - 2 - it)) * dp)))


def trim_lowest_loss(losses: Tensor, labels: Tensor, keep_frac: float, class_frac: float) -> Tensor:
    """Bool mask: loss <= the `keep_frac` quantile of all losses, OR loss <= the `class_frac`
    quantile of the sample's own class (linear-interpolation quantiles, as numpy's default).
    Every class present keeps at least its lowest-loss sample."""
    losses = losses.double()
    if torch.isnan(losses).any():
        fill = losses[~torch.isnan(losses)].mean() if (~torch.isnan(losses)).any() else losses.new_zeros(())
        losses = torch.nan_to_num(losses, nan=float(fill))
    keep = losses <= torch.quantile(losses, float(keep_frac))
    for c in torch.unique(labels).tolist():
        m = labels == c
        keep[m] |= losses[m] <= torch.quantile(losses[m], float(class_frac))
    return keep


def loss_ema(prev: Tensor | None, losses: Tensor, decay: float = LOSS_DECAY) -> Tensor:
    """decay * prev + (1 - decay) * losses, prev = 0 at the first call (the reference's m0)."""
    return (1.0 - decay) * losses if prev is None else decay * prev + (1.0 - decay) * losses


def vote_counts(preds: Tensor, num_classes: int) -> Tensor:
    """(N, C) how many of the learners' predictions `preds` (L, N) name each class."""
    counts = torch.zeros(preds.shape[1], num_classes, dtype=torch.long, device=preds.device)
    return counts.scatter_add_(1, preds.t().long(), torch.ones_like(preds.t(), dtype=torch.long))


def plurality_vote(counts: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(vote, count) per sample of vote counts (N, C): the most voted class (ties broken
    uniformly at random with `generator`) and its number of votes."""
    best = counts.max(1).values
    noise = torch.rand(counts.shape, generator=generator).to(counts.device)
    noise[counts != best[:, None]] = -1.0
    return noise.argmax(1), best


def vote_keep(counts: Tensor, labels: Tensor, min_votes: int, min_share: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """Kept by the boosting vote: the plurality agrees with the label with >= min_votes votes
    (the reference rule), or (`min_share` > 0) at least min_share of all votes name the label."""
    vote, count = plurality_vote(counts, generator)
    keep = (vote == labels) & (count >= min_votes)
    if min_share > 0:
        label_votes = counts.gather(1, labels[:, None]).squeeze(1)
        keep |= label_votes >= min_share * counts.sum(1)
    return keep


def spl_update(score: Tensor, correct: Tensor, momentum: float = SPL_MOMENTUM) -> Tensor:
    """momentum * score + (1 - momentum) * correct (the SPL step; kept = score > 1/2)."""
    return momentum * score + (1.0 - momentum) * correct.to(score.dtype)


# --------------------------------------------------------------------------- features, learners
def window_features(model: nn.Module, x: Tensor, kind: str = "penultimate", chunk: int = 256
                    ) -> tuple[Tensor, int]:
    """(features (N, D) scaled to unit RMS, number of classes of the model's output).

    penultimate: the input of the model's last nn.Linear (eval mode, no grad); input: x
    flattened. The model's weights, grads and train/eval flags are left as they were."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    captured: list[Tensor] = []
    handle = None
    if kind == "penultimate" and last is not None:
        handle = last.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach().flatten(1)))
    try:
        with torch.no_grad(), _eval_mode(model):
            logits = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    finally:
        if handle is not None:
            handle.remove()
    feats = torch.cat(captured) if captured else x.detach().flatten(1)
    feats = feats.float()
    rms = feats.pow(2).mean().sqrt()
    if float(rms) > 0:
        feats = feats / rms
    return feats, int(logits.shape[1])


class WeakLearner:
    """Softmax regression on fixed features, zero-initialised, fitted by full-batch Adam with
    L2 weight decay (hand-written gradient: about a dozen tensor ops a step); fits continue
    from the current weights and optimiser state. The bias is a constant-1 feature row.
    Classes-first layout (logits (C, N)): torch's CPU softmax over a short last dimension is
    ~10x slower than over the first."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, dim: int, num_classes: int, lr: float, device: torch.device | str = "cpu"):
        self.w = torch.zeros(num_classes, dim + 1, device=device)
        self.m, self.v = torch.zeros_like(self.w), torch.zeros_like(self.w)
        self.t, self.lr, self.num_classes = 0, float(lr), int(num_classes)

    def logits(self, f: Tensor) -> Tensor:
        """(N, C) logits of features f (N, D)."""
        return f @ self.w[:, :-1].t() + self.w[:, -1]

    def fit(self, f: Tensor, y: Tensor, steps: int) -> WeakLearner:
        if len(y) == 0 or steps <= 0:
            return self
        fb = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], 1)  # (N, D+1)
        fbt = fb.t().contiguous()
        target = F.one_hot(y, self.num_classes).t().to(fb.dtype)  # (C, N)
        b1, b2 = self.BETAS
        for _ in range(steps):
            grad = torch.softmax(self.w @ fbt, 0).sub_(target).div_(len(y)) @ fb
            grad.add_(self.w, alpha=WEIGHT_DECAY)
            self.t += 1
            self.m.mul_(b1).add_(grad, alpha=1 - b1)
            self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.EPS)
            self.w.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))
        return self

    def losses(self, f: Tensor, y: Tensor) -> Tensor:
        """Per-sample cross-entropy, in float64: confidently fitted samples would all tie at
        exactly 0 in float32, which would make the quantile trimming keep all of them."""
        return F.cross_entropy(self.logits(f).double(), y, reduction="none")

    def predict(self, f: Tensor) -> Tensor:
        return self.logits(f).argmax(1)


# --------------------------------------------------------------------------- the sanitiser
class ISPLSanitizer(WindowSanitizer):
    name = "ispl"
    state_key = "ispl"

    def __init__(self, window: int = 1024, every: int = 1, features: str = "penultimate",
                 bags: int = 3, clusters: int = 8, cluster_frac: float = 0.12, expansion: float = 0.25,
                 min_active: float = 0.04, min_per_class: int = 2, min_votes: int = 2, min_share: float = 0.0, steps: int = 60,
                 lr: float = 0.1, spl_iters: int = 4):
        super().__init__(window, every)
        if features not in FEATURES:
            raise ValueError(f"ispl features {features!r}; allowed: {', '.join(FEATURES)}")
        self.features = features
        self.bags, self.clusters = int(bags), int(clusters)
        self.cluster_frac, self.expansion = float(cluster_frac), float(expansion)
        self.min_active, self.min_per_class = float(min_active), int(min_per_class)
        self.min_votes, self.min_share = int(min_votes), float(min_share)
        self.steps, self.lr = int(steps), float(lr)
        self.spl_iters = int(spl_iters)

    @classmethod
    def from_config(cls, san) -> ISPLSanitizer:
        return cls(san.window, san.every, san.ispl_features, san.ispl_bags,
                   san.ispl_clusters, san.ispl_cluster_frac, san.ispl_expansion, san.ispl_min_active,
                   san.ispl_min_per_class, san.ispl_min_votes, san.ispl_min_share, san.ispl_steps, san.ispl_lr,
                   san.ispl_spl_iters)

    def _learner(self, f: Tensor, num_classes: int) -> WeakLearner:
        return WeakLearner(f.shape[1], num_classes, self.lr, f.device)

    def core_set(self, f: Tensor, y: Tensor, num_classes: int, dp: float, first: bool,
                 gen: torch.Generator) -> tuple[Tensor, WeakLearner]:
        """ISPL on the active samples (f, y): (core mask over them, learner fitted on the core)."""
        refits = refit_iterations(dp)
        core = torch.ones(len(y), dtype=torch.bool, device=y.device)
        if refits:
            train = (torch.rand(len(y), generator=gen) < 0.5).to(y.device) if first else core.clone()
            learner, m = self._learner(f, num_classes), None
            for it in range(refits):
                learner.fit(f[train], y[train], self.steps if it == 0 else self.steps // 2)
                m = loss_ema(m, learner.losses(f, y))
                q = keep_fraction(it, refits, dp)
                core = trim_lowest_loss(m, y, q, q * CLASS_FLOOR)
                train = core & (torch.rand(len(y), generator=gen) < self.expansion).to(y.device)
                if not train.any():
                    train = core
        return core, self._learner(f, num_classes).fit(f[core], y[core], 2 * self.steps)

    def select(self, model: nn.Module, x: Tensor, y: Tensor, ids: np.ndarray) -> Tensor:
        out_device = y.device
        n = len(y)
        if n == 0:
            return torch.zeros(0, dtype=torch.bool, device=out_device)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x, y = x.to(device), y.to(device).long()
        f, num_classes = window_features(model, x, self.features)
        num_classes = max(num_classes, int(y.max()) + 1)
        present = int(torch.unique(y).numel())
        floor = self.min_per_class * present
        stop = max(self.min_active * n, floor)

        learners: list[WeakLearner] = []
        for _ in range(self.bags):
            active = torch.arange(n, device=device)
            for e in range(self.clusters):
                if len(active) <= stop:
                    break
                dp = cluster_fraction(n, len(active), self.cluster_frac, floor)
                core, learner = self.core_set(f[active], y[active], num_classes, dp, e == 0, gen)
                learners.append(learner)
                if self.clusters > 1:
                    active = active[~core]
        self.stats[STEPS] = self.stats.get(STEPS, 0) + len(learners)
        if not learners:
            return torch.zeros(n, dtype=torch.bool, device=out_device)

        counts = vote_counts(torch.stack([lr.predict(f) for lr in learners]), num_classes)
        keep = vote_keep(counts, y, min(self.min_votes, len(learners)), self.min_share, gen)

        score, spl = torch.full((n,), 0.5, dtype=torch.float64, device=device), None
        for _ in range(self.spl_iters):
            if not keep.any():
                break
            fresh = spl is None
            spl = self._learner(f, num_classes) if fresh else spl
            spl.fit(f[keep], y[keep], self.steps if fresh else self.steps // 2)
            score = spl_update(score, spl.predict(f) == y)
            keep = score > 0.5
        return (~keep).to(out_device)
