"""Confusion Training (Qi, Xie, Wang, Mittal, USENIX Security 2023), run by a client on its window.

"Fight poison with poison": a model trained on the (poisoned) window while it is also trained
on a small clean set whose labels are deliberately wrong ("confusion") loses the benign
correlations (the confusion batches contradict them), whereas a backdoor's trigger -> target
shortcut is contradicted by nothing and stays fitted. The samples the confused model still
fits are suspects; a per-class Gaussian test on its features decides which are flagged.

Algorithm, after the reference code (Unispac/Fight-Poison-With-Poison: `ct_cleanser.py`,
`confusion_training.py`), constants rescaled for a window of ~300-1024 samples on a CPU
(`sanitizer.confusion.*` config keys):

    base <- the round's global model (or, `warm_start`, this client's base of last time)
    D_0 <- the whole window
    for k = 0 .. R-1 (R = `rounds`):
      pretrain: `pretrain_steps` SGD steps (momentum 0.9, wd 1e-4; lr `pretrain_lr` in round 0,
        `lr` after) of base on shuffled epochs of D_k; in the last round D_k plus the clean set
        labelled (y + 1) % C (the reference's shifted clean set). base carries over.
      confuse: m <- copy of base; `iters` SGD steps (lr `lr`, momentum 0.7, wd 1e-4), each on a
        clean batch with labels drawn anew at every step, (y + s) % C with one s uniform in
        1..C-1 per batch (`confusion_labels`); every `batch_factor`-th step the clean batch is
        joined by a batch of D_k and the loss is
            ((lambda - 1) * CE(clean, wrong labels) + CE_w(D_k batch)) / lambda   (lambda = `lam`),
        CE_w weighting each class by 1 / sqrt(its frequency in D_k + 0.001)
        (`class_balance_weights`; uniform in the last round); the other steps train on the
        clean batch alone.
      distill (k < R-1): D_{k+1} <- the `distill_ratios(k)` fraction of the window with the
        lowest loss under m, plus each class's floor(n_c / 50) lowest (`distill_indices`):
        the distilled set is poison-rich and the next round's pretraining reinforces the
        backdoor while its confusion erases the rest.
    suspects <- the window samples the last m fits (`fitted`)
    per class (`identify_poisons`): the penultimate features of m (the input of its last
      Linear layer) of the class's window samples, centred, projected on their top `pca_dims`
      principal directions; Gaussian G0 fitted to the non-suspects, G1 to the suspects;
      log-ratio = mean over the class of [log G_own side(x) - log G0(x)] (one Gaussian, that of
      the rest of the class, against two: `log_likelihood_ratio`). A class's suspects are
      flagged when its ratio exp(log-ratio) > `ratio_threshold`, or when its ratio is the
      largest of all classes and > `max_ratio_threshold` (the reference's 2 and 1.5); other
      classes are passed (nothing flagged).
      Degenerate classes: a class with fewer than 2 window samples, or with fewer than 2
      suspects or fewer than 2 non-suspects (no covariance to fit), gets no Gaussian test and
      keeps the confusion verdict (its suspects are flagged). The reference passes them
      (ratio 1); in a non-IID window a target class can be made of poisons almost only, and
      passing it would let them all through.

Deliberate departures from the reference:
- constants: 6 rounds, 40-100 pretraining epochs, 2000-6000 confusion iterations, distilled
  fractions 1/2 .. 1/100 of 50k samples become `rounds` 2, `pretrain_steps` ~1.5-2 epochs of
  the window, `iters` 16-24, `distill_first` 0.2 (geometric to `distill_last` for R >= 3).
- `warm_start` (default on): the pretrained base (round 0) is kept in the node's
  `Context.state` (ArrayRecord `WARM_KEY`, not echoed to the server: after a resume it starts
  again from the global model) and the next participation continues from it instead of from
  the global model, so the "model pretrained on the poisoned set" accumulates
  `pretrain_steps` per participation instead of being paid for at once (a blend backdoor
  needs ~200 steps from a clean model). Off: each select starts from the global model.
  Virtual clients (backend.num_supernodes) carry JSON state only: the config rejects it there.
- `prior_correction` (default on): ranking and fitting use log-probabilities with each
  class's window mean removed (`prior_corrected`); `fit_prob` (default 0.5): a suspect must
  also give its label probability > fit_prob. A briefly confused model is near-uniform with a
  bias towards the most frequent label, the backdoor's target (its own clean samples plus the
  poisons): with the reference's plain argmax every sample of the target class looked fitted
  and the distilled set was that whole class. Both off = the reference's rule.
- the confusion labels avoid the clean sample's true label, not the pretrained model's
  prediction (no extra model); the shift is drawn at random per batch rather than cycled.
- the PCA is an exact SVD (the reference's `torch.pca_lowrank` is randomised); the
  covariance ridge is `cov_ridge` times the class's mean feature variance on the diagonal
  (the reference adds 0.001 to every entry, which is not scale-free and need not make the
  matrix regular).
Confusion Training targets backdoors: label flips have no trigger for the confused model to
keep fitting, and are not what it finds.

The clean set: the server holds a clean validation stream; a client is handed its first
`clean_size` samples (`clean_set_from_config`). `from_config(san)` only sees the `sanitizer`
node and leaves `clean` unset: whoever builds the sanitiser (the ClientApp) must set
`sanitizer.clean = clean_set_from_config(cfg, san.clean_size)`, or build it with
`ConfusionSanitizer.from_full_config(cfg)`, which does both. `select` refuses to run without.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context
from torch import Tensor, nn
from torch.nn import functional as F

from fedguard.models import exchanged_state
from fedguard.protocol import CONFUSION_BASE
from fedguard.sanitizers.base import SANITIZERS, STEPS, Batch
from fedguard.sanitizers.window import WindowSanitizer

WEIGHT_DECAY = 1e-4  # the reference's, both phases
PRETRAIN_MOMENTUM, CONFUSION_MOMENTUM = 0.9, 0.7  # the reference's
CLASS_FLOOR_DIV = 50  # distillation keeps at least n_c // 50 samples of each class (the reference's rate_factor)
EVAL_BATCH = 512
WARM_KEY = CONFUSION_BASE  # ArrayRecord of Context.state: the warm-start base (not echoed to the server)


# --------------------------------------------------------------------------- pure pieces
def confusion_labels(y: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """Wrong labels for a clean batch, drawn anew at every call with `generator`:
    (y + s) % num_classes with one s uniform in 1 .. num_classes-1 for the whole batch (the
    reference's scheme: a consistent permutation of the classes, a new one each batch).
    Never the true label."""
    if num_classes < 2:
        raise ValueError(f"confusion needs at least 2 classes, got {num_classes}")
    shift = torch.randint(1, num_classes, (1,), generator=generator, device=generator.device)
    return (y + shift.to(y.device)) % num_classes


def class_balance_weights(y: Tensor, num_classes: int) -> Tensor:
    """Per-class weights of the window part of the confusion loss: 1 / sqrt(f_c + 0.001), with
    f_c the fraction of `y` in class c (the reference's `freq_of_each_class`)."""
    counts = torch.bincount(y.long().cpu(), minlength=num_classes)[:num_classes].double()
    freq = counts / max(1, len(y))
    return (1.0 / torch.sqrt(freq + 0.001)).float()


def weighted_mean(losses: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_{y_i} l_i / sum_i w_{y_i}."""
    w = weights.to(losses.device)[y]
    return (w * losses).sum() / w.sum()


def distill_ratios(rounds: int, first: float, last: float) -> list[float]:
    """The fraction of the window kept after confusion round k = 0 .. rounds-2: geometric
    from `first` to `last` (one value `first` when rounds == 2; none when rounds == 1)."""
    n = rounds - 1
    if n <= 0:
        return []
    if n == 1:
        return [float(first)]
    return [float(first * (last / first) ** (k / (n - 1))) for k in range(n)]


def distill_indices(loss: np.ndarray, y: np.ndarray, ratio: float, num_classes: int,
                    floor_div: int = CLASS_FLOOR_DIV) -> np.ndarray:
    """Sorted indices of the distilled set: the round(ratio * N) (at least 1) lowest-loss
    samples, plus, for each class c, its floor(n_c / floor_div) lowest-loss samples (ties
    broken by index)."""
    loss, y = np.asarray(loss, dtype=np.float64), np.asarray(y)
    order = np.argsort(loss, kind="stable")
    keep = set(order[:max(1, round(ratio * len(loss)))].tolist())
    for c in range(num_classes):
        in_c = order[y[order] == c]
        keep.update(in_c[:len(in_c) // floor_div].tolist())
    return np.array(sorted(keep), dtype=np.int64)


def low_rank(feats: np.ndarray, dims: int) -> np.ndarray:
    """`feats` (n, d) centred and projected on their top `dims` principal directions (exact
    SVD; fewer columns when n or d is smaller)."""
    feats = np.asarray(feats, dtype=np.float64)
    centred = feats - feats.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(dims, vt.shape[0])
    return centred @ vt[:k].T


def gaussian_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x_i; mean, cov) for each row of x (cov symmetric positive definite)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    d = x.shape[1]
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)  # (d, n)
    maha = (z ** 2).sum(axis=0)
    logdet = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (d * math.log(2 * math.pi) + logdet + maha)


def log_likelihood_ratio(proj: np.ndarray, suspect: np.ndarray, ridge: float = 1e-3) -> float | None:
    """The reference's 2-vs-1 Gaussian test on one class's low-rank features `proj` (n, k),
    split by the confused model into suspects (`suspect` True) and the rest:
    mean_i [log N(x_i; own side's Gaussian) - log N(x_i; the rest's Gaussian)].
    Each side's Gaussian: its sample mean and covariance (ddof 1) plus `ridge` times the
    class's mean feature variance on the diagonal. None when a side has fewer than 2 samples."""
    proj = np.asarray(proj, dtype=np.float64)
    suspect = np.asarray(suspect, dtype=bool)
    n, k = proj.shape
    if suspect.sum() < 2 or (~suspect).sum() < 2:
        return None
    scale = proj.var(axis=0, ddof=1).mean() if n > 1 else 0.0
    reg = ridge * (scale if scale > 0 else 1.0) * np.eye(k)

    def fit(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return part.mean(axis=0), np.atleast_2d(np.cov(part.T, ddof=1)) + reg

    mu0, cov0 = fit(proj[~suspect])
    mu1, cov1 = fit(proj[suspect])
    inside = proj[suspect]  # the rest score the same under both models
    gain = gaussian_logpdf(inside, mu1, cov1) - gaussian_logpdf(inside, mu0, cov0)
    return float(gain.sum() / n)


def identify_poisons(feats: np.ndarray, y: np.ndarray, suspect: np.ndarray, num_classes: int,
                     dims: int = 2, ridge: float = 1e-3, threshold: float = 2.0,
                     max_threshold: float = 1.5) -> tuple[np.ndarray, dict[int, float | None]]:
    """(flagged mask, {class: likelihood ratio or None}) from the confused model's features
    `feats` (n, d), labels `y` and its verdict `suspect` (fits the label).

    Per class: flag its suspects when ratio > `threshold`, or when it is the largest ratio of
    all classes and > `max_threshold`; pass the class otherwise. A class that cannot be tested
    (fewer than 2 samples, or fewer than 2 on either side of the split; ratio None) keeps the
    confusion verdict: its suspects are flagged."""
    y, suspect = np.asarray(y), np.asarray(suspect, dtype=bool)
    feats = np.asarray(feats, dtype=np.float64).reshape(len(y), -1)
    flagged = np.zeros(len(y), dtype=bool)
    ratios: dict[int, float | None] = {}
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) == 0:
            continue
        llr = None
        if len(idx) >= 2:
            llr = log_likelihood_ratio(low_rank(feats[idx], dims), suspect[idx], ridge)
        ratios[c] = None if llr is None else math.exp(min(llr, 700.0))
    tested = [r for r in ratios.values() if r is not None]
    top = max(tested) if tested else None
    for c, ratio in ratios.items():
        idx = np.flatnonzero(y == c)
        if ratio is None or ratio > threshold or (ratio == top and ratio > max_threshold):
            flagged[idx] = suspect[idx]
    return flagged, ratios


def prior_corrected(logp: Tensor) -> Tensor:
    """Log-probabilities with each class's mean over the batch removed: logp[i, c] -
    mean_j logp[j, c]. A briefly trained confused model is near-uniform with a bias towards
    the frequent labels (a backdoor's target class has its clean samples plus the poisons);
    without the correction that bias makes every sample of the target class look fitted."""
    return logp - logp.mean(dim=0, keepdim=True) if len(logp) > 1 else logp


def fitted(logp: Tensor, y: Tensor, prior_correction: bool = True, min_prob: float = 0.0) -> Tensor:
    """Which samples a model fits: its (prior-corrected, `prior_corrected`) prediction is the
    label and, with `min_prob` > 0, it gives the label a probability > `min_prob`."""
    score = prior_corrected(logp) if prior_correction else logp
    ok = score.argmax(dim=1) == y
    if min_prob > 0:
        ok &= logp.gather(1, y[:, None])[:, 0] > math.log(min_prob)
    return ok


def fit_loss(logp: Tensor, y: Tensor, prior_correction: bool = True) -> Tensor:
    """Per-sample loss the distillation ranks by: -logp[i, y_i], prior-corrected or not."""
    score = prior_corrected(logp) if prior_correction else logp
    return -score.gather(1, y[:, None])[:, 0]


# --------------------------------------------------------------------------- model helpers
def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, features: bool = False) -> tuple[Tensor, Tensor | None]:
    """(log-probabilities, penultimate features or None) of `model` in eval mode (its mode is
    restored); the features are the input of its last Linear layer (the logits without one)."""
    captured: list[Tensor] = []
    last = _last_linear(model) if features else None
    hook = None if last is None else last.register_forward_hook(
        lambda _m, inp, _out: captured.append(inp[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    logps, logits_all = [], []
    try:
        for s in range(0, len(x), EVAL_BATCH):
            logits = model(x[s:s + EVAL_BATCH])
            logps.append(F.log_softmax(logits, dim=1))
            logits_all.append(logits)
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    feats = None
    if features:
        feats = torch.cat(captured) if last is not None else torch.cat(logits_all)
    return torch.cat(logps), feats


def load_warm_state(context: Context) -> dict[str, Tensor] | None:
    """The warm-start base stored in the node's state (None when there is none)."""
    rec = context.state.array_records.get(WARM_KEY)
    if rec is None:
        return None
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in rec.items()}


def load_exchanged(model: nn.Module, state: dict[str, Tensor]) -> bool:
    """Load `state` (the `exchanged_state` tensors) into `model` when every key and shape
    matches; returns whether it did."""
    own = exchanged_state(model)
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(v.shape) for k, v in state.items()):
        return False
    model.load_state_dict({k: v.to(own[k].device, own[k].dtype) for k, v in state.items()}, strict=False)
    return True


def clean_set_from_config(cfg, size: int | None = None) -> tuple[Tensor, Tensor]:
    """The first `size` (default `cfg.sanitizer.confusion.clean_size`) samples of the server's
    clean validation split (`fedguard.data.sources.splits_from_config(cfg).val`), as
    (float32 x, int64 y) CPU tensors."""
    from fedguard.data.sources import splits_from_config  # local: lazy data loading

    if size is None:
        size = int(cfg.sanitizer.confusion.clean_size)
    val = splits_from_config(cfg).val
    size = min(int(size), len(val))
    x = torch.from_numpy(np.ascontiguousarray(val.x[:size])).float()
    y = torch.from_numpy(np.ascontiguousarray(val.y[:size])).long()
    return x, y


# --------------------------------------------------------------------------- the sanitiser
@SANITIZERS.register("confusion", "Confusion Training: flag the samples a model confused by randomly relabelled "
                     "clean data still fits, per class (Qi et al., USENIX Security 2023)", knobs=("window", "every"))
class ConfusionSanitizer(WindowSanitizer):
    name = "confusion"
    state_key = "confusion"

    def __init__(self, window: int = 1024, every: int = 1, clean_size: int = 200, rounds: int = 2,
                 pretrain_steps: int = 48, pretrain_lr: float = 0.05, iters: int = 24, lr: float = 0.01,
                 lam: float = 10.0, batch_factor: int = 2, batch_size: int = 32, distill_first: float = 0.2,
                 distill_last: float = 0.05, prior_correction: bool = True, fit_prob: float = 0.5,
                 pca_dims: int = 2, cov_ridge: float = 1e-3, ratio_threshold: float = 2.0,
                 max_ratio_threshold: float = 1.5, warm_start: bool = True,
                 clean: tuple[Tensor, Tensor] | None = None):
        super().__init__(window, every)
        if rounds < 1 or iters < 0 or pretrain_steps < 0 or batch_size < 1 or batch_factor < 1:
            raise ValueError("confusion: rounds, batch_size, batch_factor >= 1 and iters, pretrain_steps >= 0")
        if lam <= 1.0:
            raise ValueError(f"confusion: lambda must be > 1, got {lam}")
        self.clean_size, self.rounds, self.pretrain_steps = int(clean_size), int(rounds), int(pretrain_steps)
        self.iters, self.batch_size, self.lam = int(iters), int(batch_size), float(lam)
        self.batch_factor, self.lr, self.pretrain_lr = int(batch_factor), float(lr), float(pretrain_lr)
        self.distill_first, self.distill_last = float(distill_first), float(distill_last)
        self.pca_dims, self.cov_ridge = int(pca_dims), float(cov_ridge)
        self.ratio_threshold, self.max_ratio_threshold = float(ratio_threshold), float(max_ratio_threshold)
        self.prior_correction, self.fit_prob = bool(prior_correction), float(fit_prob)
        self.warm_start = bool(warm_start)
        self.warm_state: dict[str, Tensor] | None = None  # the pretrained base of the last select
        self.clean = clean  # (x, y): a small clean set; the ClientApp sets it (clean_set_from_config)
        self.last_ratios: dict[int, float | None] = {}  # per class, of the last select (diagnostics)

    @classmethod
    def from_config(cls, san) -> ConfusionSanitizer:
        """From the `sanitizer` node alone: `clean` stays None and must be set before use
        (`clean_set_from_config`), or use `from_full_config`."""
        c = san.confusion
        return cls(
            window=san.window, every=san.every, clean_size=c.clean_size, rounds=c.rounds,
            pretrain_steps=c.pretrain_steps, pretrain_lr=c.pretrain_lr, iters=c.iters, lr=c.lr, lam=c.lam,
            batch_factor=c.batch_factor, batch_size=c.batch_size, distill_first=c.distill_first,
            distill_last=c.distill_last, prior_correction=c.prior_correction, fit_prob=c.fit_prob,
            pca_dims=c.pca_dims, cov_ridge=c.cov_ridge, ratio_threshold=c.ratio_threshold,
            max_ratio_threshold=c.max_ratio_threshold, warm_start=c.warm_start)

    @classmethod
    def from_full_config(cls, cfg) -> ConfusionSanitizer:
        """From the whole run config: `from_config(cfg.sanitizer)` with its clean set, the first
        `sanitizer.confusion.clean_size` samples of the server's validation split."""
        san = cls.from_config(cfg.sanitizer)
        san.clean = clean_set_from_config(cfg, san.clean_size)
        return san

    # ------------------------------------------------------------------ Context.state
    def sanitize(self, model: nn.Module, batches: list[Batch], context: Context, server_round: int
                 ) -> tuple[list[Batch], list[Tensor]]:
        """The window protocol (`WindowSanitizer.sanitize`), with the warm-start base read from
        and written back to the node's `Context.state` (ArrayRecord `WARM_KEY`)."""
        if self.warm_start:
            self.warm_state = load_warm_state(context)
        out = super().sanitize(model, batches, context, server_round)
        if self.warm_start and self.warm_state is not None:
            context.state.array_records[WARM_KEY] = ArrayRecord(
                {k: Array(v.numpy()) for k, v in self.warm_state.items()})
        return out

    # ------------------------------------------------------------------ training pieces
    @staticmethod
    def _epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
        chunks = list(torch.randperm(n, generator=gen).split(batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:  # no batch of one (BatchNorm in train mode)
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return chunks

    def _pretrain(self, model: nn.Module, x: Tensor, y: Tensor, xc: Tensor | None, yc: Tensor | None,
                  num_classes: int, gen: torch.Generator, lr: float | None = None) -> int:
        """`pretrain_steps` steps of plain SGD on shuffled epochs of (x, y) (plus, when xc is
        given, the clean set labelled (y + 1) % C, the reference's shifted clean set). Returns
        the steps taken."""
        lr = self.pretrain_lr if lr is None else lr
        if self.pretrain_steps == 0 or lr == 0 or len(y) == 0:
            return 0
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=PRETRAIN_MOMENTUM,
                              weight_decay=WEIGHT_DECAY)
        model.train()
        steps = 0
        while steps < self.pretrain_steps:
            xe, ye = x, y
            if xc is not None:
                xe = torch.cat([x, xc])
                ye = torch.cat([y, (yc + 1) % num_classes])
            for b in self._epoch_batches(len(ye), self.batch_size, gen)[:self.pretrain_steps - steps]:
                b = b.to(ye.device)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xe[b]), ye[b]).backward()
                opt.step()
                steps += 1
        return steps

    def _confuse(self, model: nn.Module, x: Tensor, y: Tensor, xc: Tensor, yc: Tensor, weights: Tensor,
                 num_classes: int, gen: torch.Generator) -> int:
        """`iters` confusion steps (see the module docstring). Returns the steps taken."""
        if self.iters == 0:
            return 0
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=CONFUSION_MOMENTUM,
                              weight_decay=WEIGHT_DECAY)
        model.train()
        clean_batches: list[Tensor] = []
        win_batches: list[Tensor] = []
        for it in range(self.iters):
            if not clean_batches:
                clean_batches = self._epoch_batches(len(yc), self.batch_size, gen)
            cb = clean_batches.pop(0).to(yc.device)
            xs, ys = xc[cb], confusion_labels(yc[cb], num_classes, gen)
            opt.zero_grad(set_to_none=True)
            if it % self.batch_factor == 0 and len(y):
                if not win_batches:
                    win_batches = self._epoch_batches(len(y), self.batch_size, gen)
                wb = win_batches.pop(0).to(y.device)
                out = model(torch.cat([xs, x[wb]]))
                loss_conf = F.cross_entropy(out[:len(cb)], ys)
                loss_win = weighted_mean(F.cross_entropy(out[len(cb):], y[wb], reduction="none"), y[wb], weights)
                loss = ((self.lam - 1.0) * loss_conf + loss_win) / self.lam
            else:
                loss = F.cross_entropy(model(xs), ys)
            loss.backward()
            opt.step()
        return self.iters

    # ------------------------------------------------------------------ select
    def confused_model(self, model: nn.Module, x: Tensor, y: Tensor, num_classes: int,
                       gen: torch.Generator) -> tuple[nn.Module, int]:
        """The last round's confused model (a trained copy of `model`) and the SGD steps taken."""
        xc, yc = (t.to(x.device) for t in self.clean)
        yc = yc.long()
        ratios = distill_ratios(self.rounds, self.distill_first, self.distill_last)
        base = copy.deepcopy(model)
        for p in base.parameters():
            p.grad = None
        if self.warm_start and self.warm_state is not None:
            load_exchanged(base, self.warm_state)
        distilled = torch.arange(len(y), device=y.device)
        steps = 0
        confused = base
        for k in range(self.rounds):
            last = k == self.rounds - 1
            xd, yd = x[distilled], y[distilled]
            steps += self._pretrain(base, xd, yd, xc if last else None, yc if last else None, num_classes, gen,
                                    lr=self.pretrain_lr if k == 0 else self.lr)
            if k == 0 and self.warm_start:
                self.warm_state = {n: v.detach().cpu().clone() for n, v in exchanged_state(base).items()}
            confused = copy.deepcopy(base)
            weights = torch.ones(num_classes) if last else class_balance_weights(yd, num_classes)
            steps += self._confuse(confused, xd, yd, xc, yc, weights, num_classes, gen)
            if not last:
                logp, _ = predict(confused, x)
                loss = fit_loss(logp, y, self.prior_correction)
                keep = distill_indices(loss.cpu().numpy(), y.cpu().numpy(), ratios[k], num_classes)
                distilled = torch.from_numpy(keep).to(y.device)
        return confused, steps

    def select(self, model: nn.Module, x: Tensor, y: Tensor, ids: np.ndarray) -> Tensor:
        if self.clean is None:
            raise RuntimeError("confusion: no clean set; set `sanitizer.clean = clean_set_from_config(cfg, size)` "
                               "or build it with ConfusionSanitizer.from_full_config(cfg)")
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device).long()
        if len(y) == 0:
            return torch.zeros(0, dtype=torch.bool)
        with torch.no_grad():
            was_training = model.training
            model.eval()
            num_classes = int(model(x[:1]).shape[1])
            model.train(was_training)
        seed = int(torch.randint(0, 2**62, (1,)))  # from the global RNG: deterministic under torch.manual_seed
        gen = torch.Generator().manual_seed(seed)
        with torch.enable_grad():
            confused, steps = self.confused_model(model, x, y, num_classes, gen)
        self.stats[STEPS] = self.stats.get(STEPS, 0) + steps
        logp, feats = predict(confused, x, features=True)
        suspect = fitted(logp, y, self.prior_correction, self.fit_prob).cpu().numpy()
        flagged, self.last_ratios = identify_poisons(
            feats.double().cpu().numpy(), y.cpu().numpy(), suspect, num_classes, self.pca_dims, self.cov_ridge,
            self.ratio_threshold, self.max_ratio_threshold)
        return torch.from_numpy(flagged)
