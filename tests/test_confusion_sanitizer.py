"""Confusion Training sanitiser (fedguard/sanitizers/confusion.py): the pure pieces against
hand or brute-force values, the Gaussian 2-vs-1 decision on hand-made clusters, the
wrong-label mixing, and end to end a planted patch backdoor on scikit-learn digits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from scipy.stats import multivariate_normal
from torch import nn

from fedguard.attacks.backdoor import Trigger
from fedguard.config import compose
from fedguard.sanitizers import STEPS, build_sanitizer
from fedguard.sanitizers.confusion import (
    WARM_KEY,
    ConfusionSanitizer,
    class_balance_weights,
    clean_set_from_config,
    confusion_labels,
    distill_indices,
    distill_ratios,
    fit_loss,
    fitted,
    gaussian_logpdf,
    identify_poisons,
    log_likelihood_ratio,
    low_rank,
    predict,
    prior_corrected,
    weighted_mean,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------ wrong labels for the clean set

def test_confusion_labels_are_wrong_redrawn_every_call_and_seeded():
    y = torch.arange(10).repeat(5)
    gen = torch.Generator().manual_seed(3)
    draws = [confusion_labels(y, 10, gen) for _ in range(40)]
    shifts = set()
    for lab in draws:
        assert lab.dtype == y.dtype and lab.shape == y.shape
        assert not (lab == y).any()  # never the true label
        shift = (lab - y) % 10
        assert (shift == shift[0]).all()  # one permutation of the classes per batch (the reference's)
        shifts.add(int(shift[0]))
    assert shifts == set(range(1, 10))  # re-drawn: every wrong shift occurs over 40 calls
    again = torch.Generator().manual_seed(3)
    assert all(torch.equal(a, confusion_labels(y, 10, again)) for a in draws)  # same seed, same draws
    other = torch.Generator().manual_seed(4)
    assert any(not torch.equal(a, confusion_labels(y, 10, other)) for a in draws)


def test_confusion_labels_need_two_classes():
    with pytest.raises(ValueError):
        confusion_labels(torch.zeros(4, dtype=torch.long), 1, torch.Generator())


def test_confusion_steps_draw_new_labels_each_time_a_clean_batch_is_used():
    """The clean batches a confusion phase trains on get fresh wrong labels each step."""
    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    san = ConfusionSanitizer(iters=6, batch_size=4, batch_factor=100)  # clean batches only (after step 0)
    xc, yc = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    import fedguard.sanitizers.confusion as mod
    original = mod.confusion_labels

    def spy(y, c, gen):
        out = original(y, c, gen)
        seen.append(((out - y) % c).clone())
        return out

    mod.confusion_labels = spy
    try:
        san._confuse(Spy(), torch.randn(4, 4), torch.tensor([0, 1, 2, 0]), xc, yc, torch.ones(3), 3,
                     torch.Generator().manual_seed(0))
    finally:
        mod.confusion_labels = original
    assert len(seen) == 6  # one draw per step
    assert len({int(s[0]) for s in seen}) == 2  # both wrong shifts of 3 classes occur


# ------------------------------------------------------------------ weights, distillation

def test_class_balance_weights_by_hand():
    w = class_balance_weights(torch.tensor([0, 0, 0, 1]), 3)
    expected = [1 / math.sqrt(0.75 + 0.001), 1 / math.sqrt(0.25 + 0.001), 1 / math.sqrt(0.001)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    losses, y = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 1, 1])
    assert float(weighted_mean(losses, y, torch.tensor([1.0, 3.0]))) == pytest.approx((1 + 6 + 12) / 7)


def test_distill_ratios_are_geometric_from_first_to_last():
    assert distill_ratios(1, 0.5, 0.01) == []
    assert distill_ratios(2, 0.2, 0.05) == [0.2]
    assert distill_ratios(4, 0.5, 0.02) == pytest.approx([0.5, 0.1, 0.02])


def test_distill_keeps_the_lowest_losses_and_a_floor_per_class():
    loss = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.7, 0.3, 0.6])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert distill_indices(loss, y, 0.25, 2, floor_div=50).tolist() == [1, 3]  # round(0.25 * 8) = 2 lowest
    # floor n_c // 2 = 2 lowest of each class: class 1's are 6 (0.3) and 7 (0.6)
    assert distill_indices(loss, y, 0.25, 2, floor_div=2).tolist() == [1, 3, 6, 7]
    assert distill_indices(loss, y, 0.0, 2).tolist() == [1]  # at least one sample


def test_prior_correction_removes_a_constant_class_bias():
    # a near-uniform model biased towards class 0: argmax says class 0 for everyone
    logp = torch.log_softmax(torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.1, 0.0], [2.0, 0.0, 0.1], [3.5, 0.0, 0.0]]), 1)
    y = torch.tensor([0, 1, 2, 0])
    assert fitted(logp, y, prior_correction=False).tolist() == [True, False, False, True]
    corrected = prior_corrected(logp)
    assert corrected.mean(0).abs().max() < 1e-6
    assert fitted(logp, y).tolist() == [False, True, True, True]  # only the sample above its class's mean in 0
    assert fitted(logp, y, min_prob=0.9).tolist() == [False, False, False, True]  # also confidently
    assert fit_loss(logp, y, False).tolist() == pytest.approx((-logp[range(4), y]).tolist())
    assert fit_loss(logp, y).tolist() == pytest.approx((-corrected[range(4), y]).tolist())


# ------------------------------------------------------------------ the Gaussian test

def test_gaussian_logpdf_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + 0.5 * np.eye(3)
    mean = rng.normal(size=3)
    x = rng.normal(size=(7, 3))
    assert gaussian_logpdf(x, mean, cov) == pytest.approx(multivariate_normal(mean, cov).logpdf(x), rel=1e-10)


def test_low_rank_is_the_top_principal_components():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1]) + 7.0
    proj = low_rank(feats, 2)
    assert proj.shape == (200, 2) and np.abs(proj.mean(0)).max() < 1e-9
    eig = np.sort(np.linalg.eigvalsh(np.cov(feats.T)))[::-1]
    assert np.var(proj, axis=0, ddof=1) == pytest.approx(eig[:2], rel=1e-8)  # variance along the top axes
    assert abs(np.cov(proj.T)[0, 1]) < 1e-8  # uncorrelated
    assert low_rank(feats[:1], 2).shape[1] == 1  # a single sample: fewer axes


def test_log_likelihood_ratio_against_brute_force():
    rng = np.random.default_rng(2)
    proj = rng.normal(size=(30, 2))
    suspect = np.zeros(30, dtype=bool)
    suspect[[1, 4, 9, 20]] = True
    ridge = 1e-3
    reg = ridge * proj.var(axis=0, ddof=1).mean() * np.eye(2)
    g0 = multivariate_normal(proj[~suspect].mean(0), np.cov(proj[~suspect].T) + reg)
    g1 = multivariate_normal(proj[suspect].mean(0), np.cov(proj[suspect].T) + reg)
    two = sum(g1.logpdf(p) if s else g0.logpdf(p) for p, s in zip(proj, suspect))
    one = sum(g0.logpdf(p) for p in proj)
    assert log_likelihood_ratio(proj, suspect, ridge) == pytest.approx((two - one) / 30, rel=1e-9)
    one_suspect = np.zeros(30, dtype=bool)
    one_suspect[0] = True
    assert log_likelihood_ratio(proj, one_suspect) is None  # no covariance from one sample
    assert log_likelihood_ratio(proj, ~one_suspect) is None


def test_one_gaussian_is_not_split():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(120, 2))
    suspect = rng.random(120) < 0.2  # what the confused model happens to fit: a random part
    flagged, ratios = identify_poisons(feats, np.zeros(120, dtype=int), suspect, 1)
    assert ratios[0] < 1.5  # not even the "largest ratio" threshold
    assert not flagged.any()


def test_two_separated_clusters_flag_the_small_one():
    rng = np.random.default_rng(4)
    big = rng.normal(size=(100, 2))
    small = rng.normal(size=(15, 2)) * 0.5 + np.array([8.0, 8.0])
    feats = np.concatenate([big, small])
    suspect = np.r_[rng.random(100) < 0.05, np.ones(15, dtype=bool)]  # the small cluster + a few stray fits
    flagged, ratios = identify_poisons(feats, np.zeros(115, dtype=int), suspect, 1)
    assert ratios[0] > 2.0
    assert flagged[100:].all() and flagged.sum() == suspect.sum()  # the class's suspects, nothing else


def test_per_class_decision_thresholds_and_degenerate_classes():
    rng = np.random.default_rng(5)
    blocks, labels, suspects = [], [], []

    def add(feats, c, sus):
        blocks.append(feats)
        labels.extend([c] * len(feats))
        suspects.extend(sus)

    # class 0: two separated clusters (poisons fitted) -> flagged
    add(np.r_[rng.normal(size=(60, 2)), rng.normal(size=(10, 2)) * 0.3 + 6.0], 0, [False] * 60 + [True] * 10)
    # class 1: one Gaussian, a random fitted part -> passes
    sus1 = list(rng.random(60) < 0.2)
    add(rng.normal(size=(60, 2)), 1, sus1)
    # class 2: a single sample, fitted -> keeps the confusion verdict (flagged)
    add(rng.normal(size=(1, 2)), 2, [True])
    # class 3: a single sample, not fitted -> kept
    add(rng.normal(size=(1, 2)), 3, [False])
    # class 4: only one fitted sample among many -> no Gaussian test, confusion verdict
    add(rng.normal(size=(30, 2)), 4, [True] + [False] * 29)
    # class 5 is absent
    feats, y, sus = np.concatenate(blocks), np.array(labels), np.array(suspects)
    flagged, ratios = identify_poisons(feats, y, sus, 6)
    assert ratios[0] > 2.0 and ratios[1] < 2.0 and ratios[2] is None and ratios[3] is None and ratios[4] is None
    assert 5 not in ratios
    assert flagged[y == 0].sum() == 10 and flagged[y == 0][60:].all()
    assert not flagged[y == 1].any() and flagged[y == 2].all() and not flagged[y == 3].any()
    assert flagged[y == 4].tolist() == [True] + [False] * 29


def test_largest_ratio_uses_the_lower_threshold():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(40, 2))
    sus = np.zeros(40, dtype=bool)
    sus[:10] = True
    feats[:10] += 0.9  # a mild shift: a ratio between 1.5 and 2
    y = np.zeros(40, dtype=int)
    _, ratios = identify_poisons(feats, y, sus, 1)
    assert 1.0 < ratios[0]
    lo, hi = ratios[0] * 0.9, ratios[0] * 1.1
    assert identify_poisons(feats, y, sus, 1, threshold=hi, max_threshold=lo)[0].sum() == 10  # the largest
    assert identify_poisons(feats, y, sus, 1, threshold=hi, max_threshold=hi)[0].sum() == 0


# ------------------------------------------------------------------ the sanitiser on digits

def _digits(seed: int = 0, n_window: int = 500, n_poison: int = 25):
    from sklearn.datasets import load_digits

    d = load_digits()
    x_all = torch.from_numpy(d.images / 16.0).float()[:, None]
    y_all = torch.from_numpy(d.target).long()
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y_all)))
    pre, win, clean = perm[:400], perm[400:400 + n_window], perm[1000:1150]
    torch.manual_seed(seed)
    from fedguard.models import build_model
    from fedguard.training import sgd_steps

    model = build_model("mlp", (1, 8, 8), 10, 128)
    for _ in range(10):
        order = pre[torch.randperm(len(pre))]
        sgd_steps(model, [(x_all[b], y_all[b]) for b in order.split(32)], 0.05, 0.9, torch.device("cpu"))
    x, y = x_all[win].clone(), y_all[win].clone()
    cand = torch.nonzero(y != 0)[:, 0]
    idx = cand[torch.randperm(len(cand), generator=torch.Generator().manual_seed(seed))[:n_poison]]
    poisoned = torch.zeros(len(y), dtype=torch.bool)
    poisoned[idx] = True
    x[idx] = Trigger(kind="patch", patch_size=2)(x[idx])
    y[idx] = 0
    return model, x, y, poisoned, (x_all[clean], y_all[clean])


@pytest.fixture(scope="module")
def digits_problem():
    return _digits(0)


def _sanitizer(clean, **kw) -> ConfusionSanitizer:
    params = {"pretrain_steps": 150, "iters": 48, "lr": 0.02, "warm_start": False}  # recall >= 0.88 on seeds 0-5
    params.update(kw)
    return ConfusionSanitizer(clean=clean, **params)


def test_planted_patch_backdoor_on_digits_is_found(digits_problem):
    model, x, y, poisoned, clean = digits_problem
    san = _sanitizer(clean)
    san.begin_round(model, None, 1)
    torch.manual_seed(0)
    flagged = san.select(model, x, y, np.arange(len(y)))
    assert flagged.dtype == torch.bool and flagged.shape == (len(y),)
    recall = float((flagged & poisoned).sum()) / float(poisoned.sum())
    lost = float((flagged & ~poisoned).sum()) / float((~poisoned).sum())
    assert recall >= 0.8, recall
    assert lost <= 0.05, lost  # most clean samples are kept
    assert san.last_ratios[0] > 2.0  # the target class passes the Gaussian test
    assert san.stats[STEPS] == 2 * 150 + 2 * 48  # two rounds of pretraining and confusion


def test_select_leaves_the_model_alone_and_is_deterministic(digits_problem):
    model, x, y, _, clean = digits_problem
    model = copy.deepcopy(model).train()
    before = copy.deepcopy(model.state_dict())
    outs = []
    for _ in range(2):
        san = _sanitizer(clean, pretrain_steps=20, iters=8)
        san.begin_round(model, None, 1)
        torch.manual_seed(7)
        outs.append(san.select(model, x, y, np.arange(len(y))))
    assert torch.equal(outs[0], outs[1])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_iid_window_with_rare_and_absent_classes_does_not_fail(digits_problem):
    model, x, y, _, clean = digits_problem
    keep = (y <= 4) | (torch.arange(len(y)) == int(torch.nonzero(y == 7)[0]))  # class 7 once, 5, 6, 8, 9 absent
    san = _sanitizer(clean, pretrain_steps=20, iters=8)
    san.begin_round(model, None, 1)
    out = san.select(model, x[keep], y[keep], np.arange(int(keep.sum())))
    assert out.shape == (int(keep.sum()),) and 7 in san.last_ratios and san.last_ratios[7] is None
    tiny = san.select(model, x[:3], y[:3], np.arange(3))  # a window smaller than a batch
    assert tiny.shape == (3,)


def test_select_needs_the_clean_set(digits_problem):
    model, x, y, _, _ = digits_problem
    san = ConfusionSanitizer()
    san.begin_round(model, None, 1)
    with pytest.raises(RuntimeError, match="clean set"):
        san.select(model, x, y, np.arange(len(y)))


def test_penultimate_features_are_the_input_of_the_last_linear_layer(digits_problem):
    model, x, _, _, _ = digits_problem
    model = copy.deepcopy(model).train()
    logp, feats = predict(model, x[:10], features=True)
    with torch.no_grad():
        hidden = model.net[:-1](x[:10])
    assert torch.allclose(feats, hidden) and torch.allclose(logp.exp().sum(1), torch.ones(10))
    assert model.training and not model.net[-1]._forward_hooks  # mode restored, hook removed


# ------------------------------------------------------------------ config, Context.state

def test_config_builds_it_and_the_full_config_hands_it_the_clean_set():
    cfg = compose(["sanitizer=confusion"])
    san = build_sanitizer(cfg)  # what the ClientApp builds: with the server's clean set
    assert isinstance(san, ConfusionSanitizer) and len(san.clean[1]) == cfg.sanitizer.confusion.clean_size
    assert ConfusionSanitizer.from_config(cfg.sanitizer).clean is None
    c = cfg.sanitizer.confusion
    assert (san.rounds, san.pretrain_steps, san.iters, san.lam, san.fit_prob, san.warm_start) == (
        c.rounds, c.pretrain_steps, c.iters, c.lam, c.fit_prob, c.warm_start)
    full = ConfusionSanitizer.from_full_config(compose(["sanitizer=confusion", "sanitizer.confusion.clean_size=50"]))
    from fedguard.data.sources import splits_from_config

    val = splits_from_config(cfg).val
    xc, yc = full.clean
    assert xc.shape[0] == 50 and xc.dtype == torch.float32 and yc.dtype == torch.int64
    assert np.array_equal(xc.numpy(), val.x[:50]) and np.array_equal(yc.numpy(), val.y[:50])
    assert clean_set_from_config(cfg, 10**6)[0].shape[0] == len(val)  # at most the whole split


def test_config_checks_reject_bad_values():
    from fedguard.config import ConfigError, validate

    for override in ("sanitizer.confusion.lam=1.0", "sanitizer.confusion.fit_prob=1.0",
                     "sanitizer.confusion.distill_first=0", "sanitizer.confusion.rounds=0"):
        with pytest.raises(ConfigError):
            validate(compose(["sanitizer=confusion", override]))
    validate(compose(["sanitizer=confusion"]))
    virtual = ["sanitizer=confusion", "num_clients=100", "fraction_train=0.1", "backend.num_supernodes=10"]
    with pytest.raises(ConfigError, match=r"confusion\.warm_start"):  # the warm-start model would not follow the client
        validate(compose(virtual))
    validate(compose([*virtual, "sanitizer.confusion.warm_start=false"]))


def test_warm_start_base_lives_in_context_state(digits_problem):
    model, x, y, _, clean = digits_problem
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    ids = np.arange(len(y))

    def run(san: ConfusionSanitizer):
        san.batch_ids = [ids[:64]]
        san.fetch = lambda i: (x[i], y[i])
        san.begin_round(model, context, 1)
        san.sanitize(model, [(x[:64], y[:64])], context, 1)

    first = _sanitizer(clean, pretrain_steps=10, iters=4, warm_start=True)
    run(first)
    stored = context.state.array_records[WARM_KEY]
    assert set(stored.keys()) == set(model.state_dict().keys())
    w1 = {k: torch.from_numpy(a.numpy().copy()) for k, a in stored.items()}
    assert any(not torch.equal(w1[k], v) for k, v in model.state_dict().items())  # pretrained, not the global model
    second = _sanitizer(clean, pretrain_steps=10, iters=4, warm_start=True)
    seen = {}
    original = second.confused_model

    def spy(m, *a):
        seen.update(copy.deepcopy(second.warm_state))
        return original(m, *a)

    second.confused_model = spy
    run(second)
    assert all(torch.equal(seen[k], w1[k]) for k in w1)  # the second participation starts from the first's base
