"""Incompatibility clustering: Inverse Self-Paced Learning + boosting (Jin, Sun, Rinard, ICLR 2023),
run by a client on its stream window (`WindowSanitizer`).

The paper's idea: poisoned and clean data are *incompatible* (training on one does not help on
the other), so a subset that a model trained on part of it fits well generalises "only to
itself". ISPL finds such self-compatible subsets by shrinking a training subset towards the
samples with the LOWEST loss under a model trained on it; boosting then lets weak learners
trained on those subsets vote on every sample's label. As in the reference implementation
(github.com/charlesjin/compatibility_clustering, `defense/boost.py`, `defense/weak.py`):

    for each of `bags` independent runs:                            (reference: 3)
        active <- the whole window
        for e in 0 .. clusters-1:                                    (reference: alpha = 8)
            stop if |active| <= stop size
            dp <- target cluster size / |active|     (target = cluster_frac * n; ref 0.96/alpha)
            core set, learner <- ISPL(active, dp, first = (e == 0))
            active <- active minus the core set
    ISPL(active, dp, first):
        R <- refit_iterations(dp) = 2 + clamp(floor(1 / dp), 1, 3)    (0 when dp ~ 1: take all)
        train <- a random half of active if first, else all of active
        for it in 0 .. R-1:
            fit the learner on `train` (fresh at it = 0, continued afterwards)
            m <- 0.9 m + 0.1 loss(active)                           (per-sample loss EMA, m0 = 0)
            q <- keep_fraction(it) = clamp(min(3, max(1, R - 2 - it)) * dp, 0, 1)   (3dp, 2dp, dp..)
            core <- {m <= quantile(m, q)} OR, per class, {m <= quantile(m of the class, q / 8)}
            train <- each core sample with probability `expansion`     (reference 1/beta = 1/4)
        return core, a fresh learner fitted on the whole core
    vote: every learner predicts every window sample; kept <- the plurality (random tie-break)
          is the label with >= min_votes votes (reference: > 1 vote), or [departure, `min_share`]
          at least min_share of the learners not trained on the sample predict its label
    SPL refinement: score <- 1/2; `spl_iters` times (reference 20): fit one learner (continued)
          on the kept samples, score <- 0.8 score + 0.2 [prediction == label], kept <- score > 1/2
    flagged = not kept

Weak learners (what makes it client-sized): the reference trains a fresh ResNet for 8 + 4(R-1)
+ 40 epochs per cluster, ~24 clusters: hundreds of CNN epochs per round on 2 shared CPU cores
(one epoch of the MNIST cnn over a 1024-sample window alone is ~1 s). Here a weak learner is a
softmax regression fitted by full-batch Adam on fixed features: the input of the received
global model's last Linear layer (eval mode), i.e. the representation the federation has
learnt so far. A whole select() is one forward pass of the global model plus a few thousand
tiny steps (~0.5-1 s on 1024 MNIST samples, 1 thread). Features are divided by one scalar
(their RMS over the window), never per dimension, and learners start at zero weights: a
feature that is 0 on every sample a learner is trained on gets no gradient and keeps weight 0.

What this buys and what it cannot do (measured on MNIST, see tests/test_ispl_sanitizer.py and
the report): with a global model that has not learnt a backdoor, a triggered or relabelled
sample sits among its true class in this space, so it is incompatible with the clean samples
of its label; ISPL gathers such samples in each bag's last clusters (clustering at random
instead loses recall) and the clean clusters' learners vote them out. Label flips are found
whatever the global model. But once the global model has learnt the trigger (even partially:
trained with 1% BadNets poisons), triggered samples look like the target class here and
escape; a from-scratch learner on raw inputs would avoid that, but a linear one finds patch
poisons perfectly compatible with clean data (tried: recall 0) and a CNN one costs ~100x more.
Poisons whose original class is already the target class (relabelled to the label they had)
are invisible to any label vote.

Departure (`min_share`, default 0.1; 0 = the reference rule): a sample is also kept when at
least that share of the learners whose core does not hold it (each sample is in at most one
core per bag) predict its label. Clean but hard samples split the plurality; a poison gets
almost no held-out votes for its label. On MNIST (global model 94% accurate) this halves the
clean samples lost (~40 -> ~20 of 973) for at most 1 of 51 poisons missed.

Rescaled constants (the reference assumes ~50k samples): the cluster target size is
`cluster_frac * n` but at least `min_per_class` samples per class present in the window; a bag
stops when at most max(`min_active` * n, that floor) samples are left (reference 2000 of 50k
= 4%). Classes absent from the window are never trained on; a class with one or two samples
still keeps its lowest-loss sample in every core (per-class quantile). A class with a single
sample is usually flagged: no learner that did not train on it knows its class, so the vote
cannot tell it from a relabelled sample (two samples of a class vouch for each other). A window too small for
one cluster flags nothing; with fewer learners than `min_votes`, the plurality needs all of
them. "Epochs" become full-batch steps: a fresh fit `steps`, a continued refit `steps // 2`
(reference 8 and 4 epochs), the final fit on a core `2 * steps`, each SPL iteration
`steps // 2` after a fresh `steps`.

Determinism: one seed is drawn from torch's global generator per select(); everything random
(half splits, expansion subsamples, vote tie-breaks) comes from it. The global model is only
read (no_grad, eval mode restored per submodule). self.stats[STEPS] counts the weak learners
trained this round (clusters found, all bags).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedguard.defense.md import _eval_mode
from fedguard.sanitizers.base import SANITIZERS, STEPS
from fedguard.sanitizers.window import WindowSanitizer

LOSS_DECAY = 0.9  # reference: per-sample loss EMA m <- 0.9 m + 0.1 loss
CLASS_FLOOR = 1.0 / 8.0  # reference: per-class keep quantile = keep_fraction / 8
SPL_MOMENTUM = 0.8  # reference: correctness score <- 0.8 score + 0.2 correct
WEIGHT_DECAY = 1e-4  # L2 on the weak learners (coupled, Adam)


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


def quantile_sorted(sorted_vals: Tensor, start: Tensor, count: Tensor, q: float) -> Tensor:
    """Linear-interpolation q-quantiles (numpy's default) of the segments
    sorted_vals[start[i] : start[i] + count[i]] (each sorted ascending, count >= 1)."""
    pos = q * (count - 1).to(sorted_vals.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, count - 1)
    v_lo, v_hi = sorted_vals[start + lo], sorted_vals[start + hi]
    return v_lo + (pos - lo.to(pos.dtype)) * (v_hi - v_lo)


def trim_lowest_loss(losses: Tensor, labels: Tensor, keep_frac: float, class_frac: float) -> Tensor:
    """Bool mask: loss <= the `keep_frac` quantile of all losses, OR loss <= the `class_frac`
    quantile of the sample's own class (linear-interpolation quantiles, numpy's default).
    Every class present keeps at least its lowest-loss sample. NaN losses count as the mean."""
    losses = losses.double()
    nan = torch.isnan(losses)
    if nan.any():
        losses = torch.where(nan, losses[~nan].mean() if (~nan).any() else losses.new_zeros(()), losses)
    n = len(losses)
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=losses.device)
    everything = torch.zeros(1, dtype=torch.long, device=losses.device)
    cut = quantile_sorted(losses.sort().values, everything, everything + n, keep_frac)
    # per class: sort by loss, then (stably) by label -> one ascending segment per class
    by_loss = losses.argsort()
    order = by_loss[labels[by_loss].argsort(stable=True)]
    classes, count = torch.unique_consecutive(labels[order], return_counts=True)
    start = torch.cumsum(count, 0) - count
    class_cut = quantile_sorted(losses[order], start, count, class_frac)
    per_sample = class_cut[torch.searchsorted(classes, labels)]
    return (losses <= cut) | (losses <= per_sample)


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


def vote_keep(preds: Tensor, labels: Tensor, num_classes: int, min_votes: int, min_share: float = 0.0,
              trained: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Kept by the boosting vote of the learners' predictions `preds` (L, N): the plurality
    (all learners, ties at random) is the label with >= min_votes votes (the reference rule),
    or (`min_share` > 0) at least min_share of the learners NOT trained on the sample
    (`trained` (L, N) bool: sample in the learner's core; None = none was) predict its label."""
    vote, count = plurality_vote(vote_counts(preds, num_classes), generator)
    keep = (vote == labels) & (count >= min_votes)
    if min_share > 0:
        held_out = torch.ones_like(preds, dtype=torch.bool) if trained is None else ~trained
        agree = ((preds == labels[None]) & held_out).sum(0)
        keep |= (agree >= min_share * held_out.sum(0)) & (agree > 0)
    return keep


def spl_update(score: Tensor, correct: Tensor, momentum: float = SPL_MOMENTUM) -> Tensor:
    """momentum * score + (1 - momentum) * correct (the SPL step; kept = score > 1/2)."""
    return momentum * score + (1.0 - momentum) * correct.to(score.dtype)


# --------------------------------------------------------------------------- features, learners
def penultimate_features(model: nn.Module, x: Tensor, chunk: int = 256) -> tuple[Tensor, int]:
    """(features (N, D) divided by their RMS, number of output classes): the input of the
    model's last nn.Linear (x flattened if it has none), computed in eval mode without grad.
    The model's weights, grads and train/eval flags are left as they were."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    captured: list[Tensor] = []
    handle = None if last is None else last.register_forward_hook(
        lambda mod, inp, out: captured.append(inp[0].detach().flatten(1)))
    try:
        with torch.no_grad(), _eval_mode(model):
            logits = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    finally:
        if handle is not None:
            handle.remove()
    feats = (torch.cat(captured) if captured else x.detach().flatten(1)).float()
    rms = feats.pow(2).mean().sqrt()
    return (feats / rms if float(rms) > 0 else feats), int(logits.shape[1])


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
@SANITIZERS.register("ispl", "incompatibility clustering: weak learners of self-compatible subsets vote out "
                     "mislabelled samples of the stream window (Jin et al., ICLR 2023)", knobs=("window", "every"))
class ISPLSanitizer(WindowSanitizer):
    name = "ispl"
    state_key = "ispl"

    def __init__(self, window: int = 1024, every: int = 1, bags: int = 3, clusters: int = 8,
                 cluster_frac: float = 0.12, expansion: float = 0.25, min_active: float = 0.04,
                 min_per_class: int = 2, min_votes: int = 2, min_share: float = 0.1, steps: int = 40,
                 lr: float = 0.1, spl_iters: int = 4):
        super().__init__(window, every)
        if bags < 1 or clusters < 1 or steps < 1 or not 0 < cluster_frac <= 1 or not 0 < expansion <= 1:
            raise ValueError("ispl: bags, clusters, steps >= 1 and cluster_frac, expansion in (0, 1]")
        self.bags, self.clusters = int(bags), int(clusters)
        self.cluster_frac, self.expansion = float(cluster_frac), float(expansion)
        self.min_active, self.min_per_class = float(min_active), int(min_per_class)
        self.min_votes, self.min_share = int(min_votes), float(min_share)
        self.steps, self.lr = int(steps), float(lr)
        self.spl_iters = int(spl_iters)

    @classmethod
    def from_config(cls, san) -> ISPLSanitizer:
        i = san.ispl
        return cls(san.window, san.every, i.bags, i.clusters, i.cluster_frac, i.expansion, i.min_active,
                   i.min_per_class, i.min_votes, i.min_share, i.steps, i.lr, i.spl_iters)

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
        f, num_classes = penultimate_features(model, x)
        num_classes = max(num_classes, int(y.max()) + 1)
        present = int(torch.unique(y).numel())
        floor = self.min_per_class * present
        stop = max(self.min_active * n, floor)

        learners: list[WeakLearner] = []
        trained: list[Tensor] = []  # per learner: which window samples its core holds
        for _ in range(self.bags):
            active = torch.arange(n, device=device)
            for e in range(self.clusters):
                if len(active) <= stop:
                    break
                dp = cluster_fraction(n, len(active), self.cluster_frac, floor)
                core, learner = self.core_set(f[active], y[active], num_classes, dp, e == 0, gen)
                learners.append(learner)
                trained.append(torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, active[core], True))
                if self.clusters > 1:
                    active = active[~core]
        self.stats[STEPS] = self.stats.get(STEPS, 0) + len(learners)
        if not learners:
            return torch.zeros(n, dtype=torch.bool, device=out_device)

        preds = torch.stack([lr.predict(f) for lr in learners])
        keep = vote_keep(preds, y, num_classes, min(self.min_votes, len(learners)), self.min_share,
                         torch.stack(trained), gen)

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
