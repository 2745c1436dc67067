"""EPIC (fedguard/sanitizers/epic.py): the math against hand values and brute force, per-class
budgets on non-IID windows, and the sanitiser end to end on digits."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from torch.nn import functional as F

from fedguard.config import ConfigError, compose, validate
from fedguard.data.sources import load_digits_all
from fedguard.models import build_model
from fedguard.sanitizers import DROPPED, build_sanitizer
from fedguard.sanitizers.epic import (
    EPICSanitizer,
    assign_to_medoids,
    class_budget,
    epic_clusters,
    facility_location_greedy,
    gradient_proxy,
    pairwise_distances,
    small_clusters,
)
from fedguard.training import sgd_steps


# ------------------------------------------------------------------ the pure math
def test_gradient_proxy_is_the_cross_entropy_gradient_of_the_logits():
    # hand: logits (0, ln 3) -> softmax (1/4, 3/4); label 0 -> (-3/4, 3/4)
    g = gradient_proxy(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([0]))
    assert torch.allclose(g, torch.tensor([[-0.75, 0.75]]), atol=1e-6)
    # autograd of the summed cross-entropy, a second way
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    (grad,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    assert torch.allclose(gradient_proxy(z.detach(), y), grad, atol=1e-6)


@pytest.mark.parametrize("n, fraction, k", [
    (0, 0.1, 0), (1, 0.1, 1), (4, 0.1, 1), (5, 0.1, 1), (14, 0.1, 1), (15, 0.1, 2), (25, 0.1, 3),
    (100, 0.1, 10), (100, 0.25, 25), (3, 1.0, 3), (7, 0.5, 4)])
def test_class_budget_is_max_1_round_half_up_of_its_own_count(n, fraction, k):
    assert class_budget(n, fraction) == k  # 25 * 0.1 = 2.5 -> 3 (Python's round would give 2)


def test_pairwise_distances_match_numpy():
    g = torch.randn(9, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = g.numpy()
    expected = np.sqrt(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1))
    assert np.allclose(pairwise_distances(g).numpy(), expected, atol=1e-12)


def _F(sim: np.ndarray, subset) -> float:
    """Facility location by definition: sum_i max_{m in S} sim[i, m] (0 for the empty set)."""
    subset = list(subset)
    return float(sim[:, subset].max(1).sum()) if subset else 0.0


def _sim(points: np.ndarray) -> np.ndarray:
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    return d.max() - d


def test_facility_location_on_a_hand_instance():
    # 1-D points 0, 1, 2, 50: max distance 50. F({0}) = 50+49+48+0 = 147, F({1}) = F({2}) = 149:
    # the tie goes to the lower index 1; then point 50 (gain 49) beats 0 (gain 1) and 2 (gain 2)
    sim = torch.from_numpy(_sim(np.array([[0.0], [1.0], [2.0], [50.0]])))
    order, values = facility_location_greedy(sim, 3)
    assert order.tolist()[:2] == [1, 3]
    assert values.tolist()[:2] == [149.0, 198.0]
    assert order.tolist()[2] == 0 and values.tolist()[2] == 199.0  # 0 and 2 both gain 1: the lower


@pytest.mark.parametrize("seed", range(5))
def test_greedy_facility_location_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(7, 2))
    points[5:] += 4.0  # a second, small group
    sim = _sim(points)
    n = len(points)
    # budget 1: the exact optimum, by enumeration
    best1 = max(range(n), key=lambda j: _F(sim, [j]))
    order, values = facility_location_greedy(torch.from_numpy(sim), 1)
    assert order.tolist() == [best1]
    assert values[0].item() == pytest.approx(max(_F(sim, [j]) for j in range(n)))
    # budget 4: same first pick, each pick the best marginal gain given the previous ones,
    # values = F(prefix), non-decreasing, and within (1 - 1/e) of the optimum of size 4
    k = 4
    order, values = facility_location_greedy(torch.from_numpy(sim), k)
    picks = order.tolist()
    assert picks[0] == best1 and len(set(picks)) == k
    for t in range(k):
        prefix = picks[:t]
        gain = {j: _F(sim, prefix + [j]) for j in range(n) if j not in prefix}
        assert gain[picks[t]] == pytest.approx(max(gain.values()))
        assert values[t].item() == pytest.approx(_F(sim, picks[:t + 1]))
    assert all(b >= a - 1e-12 for a, b in zip(values.tolist(), values.tolist()[1:]))
    optimum = max(_F(sim, s) for s in itertools.combinations(range(n), k))
    assert values[-1].item() >= (1 - 1 / math.e) * optimum - 1e-9
    assert values[-1].item() <= optimum + 1e-9


def test_the_similarity_constant_does_not_change_the_medoids():
    """sim = const - D for any const >= max D gives the same greedy order."""
    d = pairwise_distances(torch.randn(30, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    a, _ = facility_location_greedy(d.max() - d, 10)
    b, _ = facility_location_greedy(d.max() + 7.0 - d, 10)
    assert a.tolist() == b.tolist()


def test_budget_beyond_the_class_and_empty_budget():
    sim = torch.ones(3, 3, dtype=torch.float64)
    order, values = facility_location_greedy(sim, 10)
    assert sorted(order.tolist()) == [0, 1, 2] and values.tolist() == [3.0, 3.0, 3.0]
    order, values = facility_location_greedy(sim, 0)
    assert order.numel() == 0 and values.numel() == 0


def test_assign_to_medoids_takes_the_nearest_and_the_earlier_on_ties():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [5.0]], dtype=torch.float64)
    dist = pairwise_distances(x)
    # medoids (in pick order) 3 then 0; sample 4 (x=5) is 5 from both: the earlier pick, 3
    assert assign_to_medoids(dist, torch.tensor([3, 0])).tolist() == [1, 1, 1, 0, 0]


# ------------------------------------------------------------------ per class, non-IID
def _proxies(counts: dict[int, int], seed: int = 0, num_classes: int = 6):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in counts.items()])
    y = y[torch.randperm(len(y), generator=g)]
    return gradient_proxy(3.0 * torch.randn(len(y), num_classes, generator=g), y), y


def test_unequal_class_counts_get_their_own_budgets_medoids_and_cluster_ids():
    counts = {0: 300, 1: 7, 2: 45, 3: 1, 4: 2, 5: 16}  # classes 3, 4: under min_class = 3
    g, y = _proxies(counts)
    fraction = 0.1
    cluster, medoids = epic_clusters(g, y, fraction, min_class=3)
    assert set(medoids) == {0, 1, 2, 5}
    offset = 0
    for c in sorted(counts):
        members = y == c
        if counts[c] < 3:
            assert (cluster[members] == -1).all()
            continue
        k = class_budget(counts[c], fraction)
        assert len(medoids[c]) == k
        assert (y[medoids[c]] == c).all()  # a class's medoids are its own samples
        ids = cluster[members]
        assert ids.min() >= offset and ids.max() < offset + k  # and its own id range
        for t, m in enumerate(medoids[c].tolist()):  # each medoid heads its own cluster
            assert cluster[m] == offset + t
        offset += k
    assert offset == sum(class_budget(n, fraction) for n in counts.values() if n >= 3)
    # the per-class clustering is the one of the class alone: same medoids when run on it
    for c in (0, 2):
        idx = torch.nonzero(y == c).flatten()
        _, alone = epic_clusters(g[idx], y[idx], fraction)
        assert idx[alone[c]].tolist() == medoids[c].tolist()


def test_small_clusters_flags_small_ones_but_never_a_whole_class():
    cluster = torch.tensor([0, 0, 0, 1, 2, 2, 3, 4, -1])
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, 3])  # class 1, 2 are one-sample single clusters
    assert small_clusters(cluster, y, 1).tolist() == [False, False, False, True, False, False, False, False, False]
    assert small_clusters(cluster, y, 2).tolist() == [False, False, False, True, True, True, False, False, False]
    assert not small_clusters(cluster, y, 0).any()
    # a class in one cluster of 3 is never dropped, however large max_size
    assert not small_clusters(torch.tensor([5, 5, 5]), torch.tensor([1, 1, 1]), 10).any()


def test_isolated_points_are_flagged_and_groups_survive_max_cluster_1():
    g = torch.Generator().manual_seed(0)
    core = 0.02 * torch.randn(60, 4, generator=g)  # the clean samples of one class
    loner = torch.tensor([[1.0, -1.0, 0.0, 0.0]])  # an isolated poison
    group = torch.tensor([[0.0, 0.0, 1.0, -1.0]]) + 0.01 * torch.randn(3, 4, generator=g)  # 3 alike
    proxies = torch.cat([core, loner, group])
    y = torch.zeros(len(proxies), dtype=torch.long)
    cluster, _ = epic_clusters(proxies, y, fraction=0.05)  # 3 medoids: core, group, loner
    flags = small_clusters(cluster, y, 1)
    assert torch.nonzero(flags).flatten().tolist() == [60]
    assert torch.nonzero(small_clusters(cluster, y, 3)).flatten().tolist() == [60, 61, 62, 63]


# ------------------------------------------------------------------ the sanitiser
@pytest.fixture(scope="module")
def digits_window():
    """(model, x, y, poisoned): an MLP trained on 1000 clean digits, and a window of 500 others
    with one label flip per class (true t labelled t + 1): each flip alone in its class."""
    torch.manual_seed(0)
    data = load_digits_all()
    perm = np.random.default_rng(0).permutation(len(data.y))
    tr, win = perm[:1000], perm[1000:1500]
    model = build_model("mlp", (1, 8, 8), 10, 64)
    xt, yt = torch.from_numpy(data.x[tr]), torch.from_numpy(data.y[tr])
    sgd_steps(model, [(xt[i:i + 32], yt[i:i + 32]) for i in range(0, 1000, 32)] * 10, 0.1, 0.0,
              torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    x, truth = torch.from_numpy(data.x[win]), torch.from_numpy(data.y[win])
    y, poisoned = truth.clone(), torch.zeros(len(truth), dtype=torch.bool)
    for t in range(10):
        i = int(torch.nonzero(truth == t)[0])
        y[i], poisoned[i] = (t + 1) % 10, True
    return model, x, y, poisoned


def test_select_finds_isolated_label_flips_on_digits(digits_window):
    model, x, y, poisoned = digits_window
    flags = EPICSanitizer(fraction=0.1).select(model, x, y, np.arange(len(y)))
    hits = int((flags & poisoned).sum())
    assert hits >= 6  # of 10 (8 here: two flips share a small cluster with clean look-alikes)
    assert int(flags.sum()) <= 25  # 5% of the window; 2% are poisoned
    assert hits / int(flags.sum()) >= 0.3  # 15x the base rate


def test_select_leaves_the_model_as_it_was_and_is_deterministic(digits_window):
    model, x, y, _ = digits_window
    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = copy.deepcopy(model.state_dict())
    san = EPICSanitizer(fraction=0.2)
    a = san.select(model, x, y, np.arange(len(y)))
    b = san.select(model, x, y, np.arange(len(y)))
    assert torch.equal(a, b) and a.dtype == torch.bool and a.shape == y.shape
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_tiny_and_one_class_windows_do_not_crash(digits_window):
    model, x, y, _ = digits_window
    san = EPICSanitizer()
    for idx in ([0], [0, 1], list(range(5))):
        assert not san.select(model, x[idx], y[idx], np.arange(len(idx))).any()
    one = torch.nonzero(y == 3).flatten()
    assert san.select(model, x[one], y[one], np.arange(len(one))).shape == (len(one),)
    assert san.select(model, x[:0], y[:0], np.arange(0)).shape == (0,)


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _run_round(san, model, context, server_round, x, y, ids):
    """One round of the window protocol whose only batch is the samples `ids`."""
    san.batch_ids, san.fetch = [ids], lambda want: (x[want], y[want])
    san.begin_round(model, context, server_round)
    (out,), (mask,) = san.sanitize(model, [(x[ids], y[ids])], context, server_round)
    return out, mask, san.end_round(model, context, server_round)


def test_warm_up_then_permanent_drops_through_the_window_protocol(digits_window):
    model, x, y, poisoned = digits_window
    context, ids = _context(), np.arange(len(y))
    san = EPICSanitizer(window=1024, fraction=0.1, start_round=3)
    out, mask, stats = _run_round(san, model, context, 2, x, y, ids)  # warm-up: nothing
    assert not mask.any() and len(out[1]) == len(y) and stats[DROPPED] == 0
    out, mask, stats = _run_round(san, model, context, 3, x, y, ids)
    assert int((mask & poisoned).sum()) >= 6
    assert stats[DROPPED] == int(mask.sum()) == len(y) - len(out[1])
    removed = sorted(int(i) for i in context.state.config_records["epic"]["removed"])
    assert removed == torch.nonzero(mask).flatten().tolist()
    # dropped for good: a later run that flags nothing still drops them
    later = EPICSanitizer(window=1024, max_cluster=0, start_round=1)
    _, mask2, _ = _run_round(later, model, context, 4, x, y, ids)
    assert torch.equal(mask2, mask)


# ------------------------------------------------------------------ config
def test_epic_from_config_and_validation():
    cfg = compose(["sanitizer=epic", "sanitizer.epic.max_cluster=2", "sanitizer.window=256"])
    validate(cfg)
    san = build_sanitizer(cfg)
    assert isinstance(san, EPICSanitizer) and san.permanent and san.state_key == "epic"
    assert (san.window, san.max_cluster, san.fraction, san.min_class, san.start_round) == (256, 2, 0.1, 3, 5)
    for bad in ("fraction=0", "fraction=1.5", "max_cluster=-1", "min_class=0", "start_round=0"):
        with pytest.raises(ConfigError):
            validate(compose(["sanitizer=epic", f"sanitizer.epic.{bad}"]))
