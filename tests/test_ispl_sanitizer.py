"""ISPL + boosting (fedguard/sanitizers/ispl.py): the schedule, trimming, vote and learner math
against hand values, numpy and autograd; non-IID edge cases; the sanitiser end to end on digits
with planted label flips and a planted patch backdoor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from torch.nn import functional as F

from fedguard.attacks.backdoor import Trigger
from fedguard.config import ConfigError, compose, validate
from fedguard.data.sources import load_digits_all
from fedguard.models import build_model
from fedguard.sanitizers import DROPPED, STEPS, build_sanitizer
from fedguard.sanitizers.ispl import (
    WEIGHT_DECAY,
    ISPLSanitizer,
    WeakLearner,
    cluster_fraction,
    keep_fraction,
    loss_ema,
    penultimate_features,
    plurality_vote,
    refit_iterations,
    spl_update,
    trim_lowest_loss,
    vote_counts,
    vote_keep,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; requested before the module-scoped digits fixture trains


# ------------------------------------------------------------------ the schedule
def test_cluster_fraction_hand_values():
    assert cluster_fraction(1000, 1000, 0.12, 20) == pytest.approx(0.12)
    assert cluster_fraction(1000, 400, 0.12, 20) == pytest.approx(0.3)  # 120 / 400
    assert cluster_fraction(100, 100, 0.12, 20) == pytest.approx(0.2)  # floor 20 > 12
    assert cluster_fraction(1000, 100, 0.12, 20) == 1.0  # 120 > 100 active: take all
    assert cluster_fraction(1000, 0, 0.12, 20) == 1.0


def test_refit_iterations_and_annealed_keep_fraction_hand_values():
    # 2 + clamp(floor(1 / dp), 1, 3)
    assert [refit_iterations(dp) for dp in (0.12, 0.3, 0.34, 0.5, 0.6, 0.99, 0.999, 1.0)] == [5, 5, 4, 4, 3, 3, 0, 0]
    # min(3, max(1, R - 2 - it)) * dp: 3dp, 2dp, then dp
    assert [keep_fraction(it, 5, 0.12) for it in range(5)] == pytest.approx([0.36, 0.24, 0.12, 0.12, 0.12])
    assert [keep_fraction(it, 4, 0.3) for it in range(4)] == pytest.approx([0.6, 0.3, 0.3, 0.3])
    assert [keep_fraction(it, 3, 0.6) for it in range(3)] == pytest.approx([0.6, 0.6, 0.6])
    assert keep_fraction(0, 5, 0.4) == 1.0  # 3 * 0.4 clipped


def test_one_bag_schedule_with_exact_cores_hand_values():
    """n = 1000, clusters of exactly dp * active: dp and R per cluster until <= 4% is left."""
    n, active, plan = 1000, 1000, []
    while active > 0.04 * n and len(plan) < 8:
        dp = cluster_fraction(n, active, 0.12, 20)
        plan.append((round(dp, 4), refit_iterations(dp)))
        active -= round(dp * active)
    assert plan == [(0.12, 5), (0.1364, 5), (0.1579, 5), (0.1875, 5), (0.2308, 5), (0.3, 5),
                    (0.4286, 4), (0.75, 3)]
    assert active == 40  # = the stop size: the 8 clusters cover 96% (the paper's 0.96)


# ------------------------------------------------------------------ trimming
def test_trim_lowest_loss_hand_values():
    losses = torch.tensor([0.1, 0.5, 0.9, 0.3, 2.0, 0.05])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # global 0.5-quantile of [0.05, 0.1, 0.3, 0.5, 0.9, 2.0]: position 2.5 -> 0.3 + 0.5 * 0.2 = 0.4
    assert trim_lowest_loss(losses, labels, 0.5, 0.0).tolist() == [True, False, False, True, False, True]
    # global 0.2-quantile: position 1.0 -> 0.1 (samples 0, 5); the class floor adds class 1's best (3)
    assert trim_lowest_loss(losses, labels, 0.2, 0.0).tolist() == [True, False, False, True, False, True]
    # class 0's 0.5-quantile = 0.5 (its median) keeps sample 1 too
    assert trim_lowest_loss(losses, labels, 0.0, 0.5).tolist() == [True, True, False, True, False, True]
    # everything at q = 1; a NaN counts as the mean of the others
    assert trim_lowest_loss(losses, labels, 1.0, 0.0).all()
    nan = torch.tensor([1.0, float("nan"), 4.0, 1.0])  # NaN -> 2; 0.75-quantile of [1, 1, 2, 4] = 2.5
    assert trim_lowest_loss(nan, torch.zeros(4, dtype=torch.long), 0.75, 0.0).tolist() == [True, True, False, True]


def test_trim_lowest_loss_matches_numpy_quantiles():
    rng = np.random.default_rng(0)
    for t in range(200):
        n = int(rng.integers(1, 60))
        losses = rng.random(n) if t % 3 else np.round(rng.random(n), 1)  # ties too
        labels = rng.integers(0, 5, n)
        q, cq = float(rng.random()), float(rng.random() * 0.3)
        expect = losses <= np.quantile(losses, q)
        for c in np.unique(labels):
            m = labels == c
            expect[m] |= losses[m] <= np.quantile(losses[m], cq)
        got = trim_lowest_loss(torch.from_numpy(losses), torch.from_numpy(labels), q, cq).numpy()
        assert (got == expect).all()


def test_loss_ema_hand_values():
    first = loss_ema(None, torch.tensor([1.0, 2.0]))
    assert first.tolist() == pytest.approx([0.1, 0.2])  # m0 = 0
    second = loss_ema(first, torch.tensor([3.0, 0.0]))
    assert second.tolist() == pytest.approx([0.9 * 0.1 + 0.3, 0.9 * 0.2])


# ------------------------------------------------------------------ the vote
PREDS = torch.tensor([[1, 2, 4, 0],
                      [1, 2, 4, 1],
                      [1, 0, 4, 2],
                      [2, 0, 4, 3],
                      [3, 1, 4, 4]])  # 5 learners x 4 samples


def test_vote_counts_and_plurality_hand_values():
    counts = vote_counts(PREDS, 5)
    assert counts.tolist() == [[0, 3, 1, 1, 0], [2, 1, 2, 0, 0], [0, 0, 0, 0, 5], [1, 1, 1, 1, 1]]
    vote, count = plurality_vote(counts, torch.Generator().manual_seed(0))
    assert vote[0] == 1 and vote[2] == 4 and count.tolist() == [3, 2, 5, 1]
    # ties: uniformly among the tied classes only
    seen = {1: set(), 3: set()}
    for s in range(60):
        vote, _ = plurality_vote(counts, torch.Generator().manual_seed(s))
        seen[1].add(int(vote[1]))
        seen[3].add(int(vote[3]))
    assert seen[1] == {0, 2} and seen[3] == {0, 1, 2, 3, 4}


def test_vote_keep_hand_values():
    labels = torch.tensor([1, 0, 3, 3])
    # the reference rule: plurality == label with >= 2 votes. Sample 1 ties 0/2: kept iff the
    # tie goes to 0; sample 3 has one vote per class: never kept (count 1 < 2)
    outcomes = {tuple(vote_keep(PREDS, labels, 5, 2, 0.0, None, torch.Generator().manual_seed(s)).tolist())
                for s in range(40)}
    assert outcomes == {(True, True, False, False), (True, False, False, False)}
    # min_share 0.2 of the held-out learners (none trained): sample 1 has 2/5, sample 3 has 1/5
    keep = vote_keep(PREDS, labels, 5, 2, 0.2, None, torch.Generator().manual_seed(0))
    assert keep.tolist() == [True, True, False, True]
    # sample 3's only vote for its label comes from learner 3, which trained on it: 0 of 4 held out
    trained = torch.zeros(5, 4, dtype=torch.bool)
    trained[3, 3] = True
    keep = vote_keep(PREDS, labels, 5, 2, 0.2, trained, torch.Generator().manual_seed(0))
    assert keep.tolist() == [True, True, False, False]
    # sample 1: learners 0 and 1 voted 2, learners 2 and 3 voted 0 (its label); 2/3 held out if
    # learners 0 and 1 trained on it, 0/3 held out if learners 2 and 3 did
    trained = torch.zeros(5, 4, dtype=torch.bool)
    trained[2:4, 1] = True
    assert not vote_keep(PREDS, labels, 5, 9, 0.2, trained)[1]
    trained = torch.zeros(5, 4, dtype=torch.bool)
    trained[0:2, 1] = True
    assert vote_keep(PREDS, labels, 5, 9, 0.6, trained)[1]  # 2 of 3 >= 0.6
    assert not vote_keep(PREDS, labels, 5, 9, 0.7, trained)[1]


def test_spl_update_hand_values():
    score = torch.full((3,), 0.5, dtype=torch.float64)
    score = spl_update(score, torch.tensor([True, False, True]))
    assert score.tolist() == pytest.approx([0.6, 0.4, 0.6])
    score = spl_update(score, torch.tensor([False, True, True]))
    assert score.tolist() == pytest.approx([0.48, 0.52, 0.68])
    assert (score > 0.5).tolist() == [False, True, True]


# ------------------------------------------------------------------ learner and features
def test_weak_learner_step_matches_autograd_adam():
    g = torch.Generator().manual_seed(0)
    f, y = torch.randn(20, 6, generator=g), torch.randint(0, 4, (20,), generator=g)
    ours = WeakLearner(6, 4, lr=0.05)
    ours.w.copy_(torch.randn(4, 7, generator=g) * 0.1)
    ref = ours.w.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, weight_decay=WEIGHT_DECAY)
    for _ in range(3):
        ours.fit(f, y, 1)
        opt.zero_grad()
        F.cross_entropy(f @ ref[:, :-1].t() + ref[:, -1], y).backward()
        opt.step()
        assert torch.allclose(ours.w, ref.detach(), atol=1e-6)
    assert torch.allclose(ours.losses(f, y).float(), F.cross_entropy(ours.logits(f), y, reduction="none"))


def test_weak_learner_fits_and_never_weights_features_it_never_saw():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (60,), generator=g)
    f = torch.randn(60, 5, generator=g) * 0.3
    f[torch.arange(60), y] += 2.0  # class c lights feature c
    f[:, 4] = 0.0  # a "trigger" feature: 0 on every training sample
    learner = WeakLearner(5, 3, lr=0.1).fit(f, y, 60)
    assert (learner.predict(f) == y).float().mean() > 0.95
    assert torch.all(learner.w[:, 4] == 0)
    triggered = f.clone()
    triggered[:, 4] = 50.0
    assert torch.equal(learner.predict(triggered), learner.predict(f))


def test_penultimate_features_are_the_last_linear_input_and_leave_the_model_alone():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=16)
    model.train()
    x = torch.rand(30, 1, 8, 8)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    feats, classes = penultimate_features(model, x, chunk=7)
    expect = model.net[:-1](x).detach()
    assert classes == 10 and feats.shape == (30, 16)
    assert torch.allclose(feats, expect / expect.pow(2).mean().sqrt(), atol=1e-6)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.net[-1]._forward_hooks
    cnn = build_model("cnn", (1, 8, 8), 10, hidden=12)
    assert penultimate_features(cnn, x)[0].shape == (30, 12)


# ------------------------------------------------------------------ end to end on digits
@pytest.fixture(scope="module")
def digits():
    """A global MLP trained on 700 clean digits, and 600 other digits for the window."""
    split = load_digits_all()
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, window = perm[:700], perm[700:1300]
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(20):
        order = train[torch.randperm(700)]
        for i in range(0, 700, 32):
            b = order[i:i + 32]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model, x[window], y[window]


def _poisoned(x, y, kind: str, seed: int):
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:30]] = True  # 5%
    x, y = x.clone(), y.clone()
    effective = mask.clone()
    if kind == "flip":
        y[mask] = 9 - y[mask]
    else:
        x[mask] = Trigger(kind="patch", patch_size=2)(x[mask])
        effective &= y != 0  # a patched 0 keeps its label: no label vote can see it
        y[mask] = 0
    return x, y, mask, effective


@pytest.mark.parametrize("kind", ["flip", "patch"])
def test_select_finds_planted_poisons_on_digits(digits, kind):
    model, x0, y0 = digits
    for seed in (0, 1):
        x, y, mask, effective = _poisoned(x0, y0, kind, seed)
        torch.manual_seed(seed)
        san = ISPLSanitizer()
        san.stats = {}
        flagged = san.select(model, x, y, np.arange(len(y)))
        assert flagged.dtype == torch.bool and flagged.shape == y.shape
        recall = float((flagged & effective).sum() / effective.sum())
        clean_lost = int((flagged & ~mask).sum())
        assert recall >= 0.85, (kind, seed, recall)
        assert clean_lost <= 20, (kind, seed, clean_lost)  # of 570 clean samples
        assert san.stats[STEPS] == 24  # 3 bags x 8 clusters


def test_select_deterministic_given_the_seed_and_leaves_the_model_alone(digits):
    model, x0, y0 = digits
    x, y, _, _ = _poisoned(x0, y0, "flip", 3)
    model.train()
    state = copy.deepcopy(model.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(ISPLSanitizer(bags=1).select(model, x, y, np.arange(len(y))))
    assert torch.equal(runs[0], runs[1])
    assert model.training and all(m.training for m in model.modules())
    assert all((p.grad is None and g is None) or torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_select_non_iid_windows_and_tiny_windows(digits):
    model, x, y = digits
    san = ISPLSanitizer()
    san.stats = {}
    # three classes, plus classes with one and two samples; the rest absent
    idx = torch.cat([torch.nonzero(y == c).flatten()[:60] for c in (2, 5, 7)]
                    + [torch.nonzero(y == 1).flatten()[:1], torch.nonzero(y == 9).flatten()[:2]])
    xs, ys = x[idx].clone(), y[idx].clone()
    flips = torch.arange(0, 180, 20)
    ys[flips] = 9 - ys[flips]
    torch.manual_seed(0)
    flagged = san.select(model, xs, ys, np.arange(len(idx)))
    assert flagged.shape == (len(idx),)
    assert int(flagged[flips].sum()) >= 7
    assert int(flagged.sum()) <= 20
    # one class only: nothing to disagree with
    only = torch.nonzero(y == 4).flatten()
    assert not san.select(model, x[only], y[only], np.arange(len(only))).any()
    # windows too small for a cluster, or empty
    for n in (0, 1, 2, 5, 12):
        assert san.select(model, x[:n], y[:n], np.arange(n)).shape == (n,)
    assert not san.select(model, x[:5], y[:5], np.arange(5)).any()


# ------------------------------------------------------------------ the window protocol, config
def test_window_protocol_drops_the_flagged_samples(digits):
    model, x0, y0 = digits
    x, y, mask, _ = _poisoned(x0, y0, "flip", 0)
    ids = np.arange(len(y))
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    san = ISPLSanitizer(window=1024)
    san.batch_ids, san.fetch = [ids[:300], ids[300:]], lambda want: (x[want], y[want])
    torch.manual_seed(0)
    san.begin_round(model, context, 1)
    out, flags = san.sanitize(model, [(x[:300], y[:300]), (x[300:], y[300:])], context, 1)
    stats = san.end_round(model, context, 1)
    flagged = torch.cat(flags)
    assert int((flagged & mask).sum()) >= 27
    assert stats[DROPPED] == int(flagged.sum()) == len(y) - sum(len(b[1]) for b in out)
    assert stats[STEPS] == 24
    removed = sorted(int(i) for i in context.state.config_records["ispl"]["removed"])
    assert removed == torch.nonzero(flagged).flatten().tolist()


def test_ispl_from_config_and_validation():
    cfg = compose(["sanitizer=ispl", "sanitizer.window=256", "sanitizer.ispl.bags=2"])
    validate(cfg)
    san = build_sanitizer(cfg)
    assert isinstance(san, ISPLSanitizer) and san.state_key == "ispl" and not san.permanent
    assert (san.window, san.bags, san.clusters, san.cluster_frac, san.expansion, san.min_share) == (
        256, 2, 8, 0.12, 0.25, 0.1)
    for bad in ("bags=0", "clusters=0", "steps=0", "cluster_frac=0", "expansion=1.5", "min_active=1",
                "min_per_class=0", "min_votes=0", "min_share=2", "lr=0", "spl_iters=-1"):
        with pytest.raises(ConfigError):
            validate(compose(["sanitizer=ispl", f"sanitizer.ispl.{bad}"]))
