import itertools

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from strategies.base import RoundNotes
from strategies.fldetector import (
    FLDetector,
    curvature_pairs,
    gap_clusters,
    kmeans_1d_costs,
    lbfgs_hvp,
    suspicious,
    upper_of_two_means,
)
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def test_curvature_pairs_by_hand():
    models = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [4.0, 2.0]])
    S, Y = curvature_pairs(models)
    # G_0 = w0 - w1 = [-1, 0], G_1 = [0, -2], G_2 = [-3, 0]; s_k = w_k - w_{k-1}, y_k = G_k - G_{k-1}
    np.testing.assert_array_equal(S, [[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(Y, [[1.0, -2.0], [-3.0, 2.0]])


def bfgs_matrix(S, Y):
    """The BFGS matrix built by the textbook rank-two recursion from B_0 = sigma I."""
    sigma = (Y[-1] @ S[-1]) / (S[-1] @ S[-1])
    B = sigma * np.eye(S.shape[1])
    for s, y in zip(S, Y):
        Bs = B @ s
        B = B - np.outer(Bs, Bs) / (s @ Bs) + np.outer(y, y) / (y @ s)
    return B


@pytest.mark.parametrize("seed", range(5))
def test_compact_lbfgs_equals_the_recursive_bfgs_matrix(seed):
    rng = np.random.default_rng(seed)
    d, m = 50, 6
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    A = Q @ np.diag(rng.uniform(0.2, 3.0, size=d)) @ Q.T  # a positive-definite Hessian
    S = rng.normal(size=(m, d))
    Y = S @ A + 0.01 * rng.normal(size=(m, d))
    v = rng.normal(size=d)
    np.testing.assert_allclose(lbfgs_hvp(S, Y, v), bfgs_matrix(S, Y) @ v, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(lbfgs_hvp(S, Y, S[-1]), Y[-1], rtol=1e-8, atol=1e-8)  # the secant equation


def brute_costs(x, kmax):
    out = []
    for k in range(1, kmax + 1):
        best = np.inf
        for labels in itertools.product(range(k), repeat=len(x)):
            if len(set(labels)) < k:
                continue
            groups = [[v for v, lab in zip(x, labels) if lab == c] for c in range(k)]
            best = min(best, sum(sum((v - np.mean(g)) ** 2 for v in g) for g in groups))
        out.append(best)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_exact_1d_kmeans_matches_brute_force(seed):
    x = np.random.default_rng(seed).normal(size=7)
    np.testing.assert_allclose(kmeans_1d_costs(x, 3), brute_costs(x, 3), atol=1e-12)
    upper = upper_of_two_means(x)
    split = min(((x[~m] - x[~m].mean()) ** 2).sum() + ((x[m] - x[m].mean()) ** 2).sum()
                for m in (x >= t for t in np.sort(x)[1:]))
    assert ((x[~upper] - x[~upper].mean()) ** 2).sum() + ((x[upper] - x[upper].mean()) ** 2).sum() \
        == pytest.approx(split)
    assert x[upper].min() > x[~upper].max()


def test_gap_statistic_sees_two_groups_and_one():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.04, 0.004, 16), rng.normal(0.1, 0.005, 4)])
    assert gap_clusters(two, np.random.default_rng(1)) >= 2
    assert suspicious(two, np.random.default_rng(1)).tolist() == [False] * 16 + [True] * 4
    one = [gap_clusters(rng.normal(0.05, 0.005, 20), np.random.default_rng(s)) for s in range(10)]
    assert one.count(1) >= 9


def quadratic_rounds(strategy, rounds, attackers=3, honest=7, d=20, seed=0):
    """Clients on a quadratic: an honest update is -eta (A w + b_i); an attacker sends a fresh
    random update each round. Returns the notes of each round."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    A = Q @ np.diag(rng.uniform(0.5, 1.5, size=d)) @ Q.T
    b = rng.normal(size=d) + 0.05 * rng.normal(size=(honest, d))
    w = rng.normal(size=d).astype(np.float32)
    history = []
    for r in range(1, rounds + 1):
        updates = np.vstack([-0.1 * (A @ w + b), rng.normal(scale=0.3, size=(attackers, d))])
        strategy.notes.reset()
        w = run_round(strategy, w, (w + updates).astype(np.float32), server_round=r).astype(np.float32)
        history.append({node: dict(v) for node, v in strategy.notes.clients.items()})
    return history


def test_attackers_are_flagged_from_the_start_round_and_honest_clients_are_not():
    strategy = FLDetector(FedAvg(), window=4, start=4, notes=RoundNotes())
    history = quadratic_rounds(strategy, 10)
    assert all(history[r - 1][1]["fld_score"] is None for r in (1, 2))  # no prediction yet
    for r in range(4, 11):
        assert [history[r - 1][node]["flagged"] for node in range(1, 11)] == [False] * 7 + [True] * 3, r
    assert not any(h[node]["flagged"] for h in history[:3] for node in h)


def test_checkpoint_resumes_the_same_detector():
    a = FLDetector(FedAvg(), window=3, start=3, notes=RoundNotes())
    quadratic_rounds(a, 5)
    b = FLDetector(FedAvg(), window=3, start=3, notes=RoundNotes())
    b.load_state_dict(a.state_dict())
    assert b.history.rounds == a.history.rounds
    assert {n: (r, u.tolist()) for n, (r, u) in b.last.items()} == {n: (r, u.tolist()) for n, (r, u) in a.last.items()}
    assert {n: list(d) for n, d in b.distances.items()} == {n: list(d) for n, d in a.distances.items()}


def test_equal_scores_flag_nobody():
    """Honest clients on a quadratic mispredict by the same amount: one cluster, no flags."""
    history = quadratic_rounds(FLDetector(FedAvg(), window=4, start=3, notes=RoundNotes()), 8, attackers=0, honest=10)
    assert history[-1][1]["fld_score"] == pytest.approx(0.1, rel=1e-4)  # 1/10 up to float32 rounding
    assert not any(h[node]["flagged"] for h in history for node in h)


def test_a_round_that_kept_the_model_gives_no_pair():
    models = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 2.0], [4.0, 2.0], [4.0, 3.0]])
    S, Y = curvature_pairs(models)  # steps [1,0], 0, [0,2], [3,0], [0,1]: only the last two pairs
    np.testing.assert_array_equal(S, [[0.0, 2.0], [3.0, 0.0]])
    np.testing.assert_array_equal(Y, [[-3.0, 2.0], [3.0, -1.0]])
