import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from strategies.base import RoundNotes
from strategies.dnc import DnC, dnc_good
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def reference_scores(sub):
    """Projections on the top eigenvector of the centred scatter matrix (eigh, not an SVD)."""
    centred = sub - sub.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    return (centred @ vecs[:, -1]) ** 2


def reference_good(updates, removed, subsets):
    good = set(range(len(updates)))
    for coords in subsets:
        scores = reference_scores(updates[:, coords])
        good &= set(sorted(range(len(updates)), key=lambda i: scores[i])[:len(updates) - removed])
    return good


@pytest.mark.parametrize("seed", range(10))
def test_kept_set_matches_an_eigendecomposition(seed):
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(11, 40))
    updates[:2] += rng.normal(scale=2.0, size=40)
    subsets = [np.sort(rng.choice(40, 15, replace=False)) for _ in range(3)]
    good, _ = dnc_good(updates, 2, subsets)
    assert set(np.flatnonzero(good).tolist()) == reference_good(updates, 2, subsets)


def test_colluding_shift_is_removed_and_the_rest_averaged():
    rng = np.random.default_rng(0)
    glob = rng.normal(size=30).astype(np.float32)
    updates = rng.normal(scale=0.1, size=(10, 30))
    updates[7:] += 1.5 * rng.normal(size=30)  # three attackers, one common direction
    models = (glob + updates).astype(np.float32)
    notes = RoundNotes()
    strategy = DnC(FedAvg(), num_malicious=3, iters=2, subsample=20, notes=notes)
    got = run_round(strategy, glob, models)
    np.testing.assert_allclose(got, models[:7].astype(np.float64).mean(axis=0), atol=1e-5)
    assert [notes.clients[i]["flagged"] for i in range(1, 11)] == [False] * 7 + [True] * 3


def test_coordinates_are_reproducible_per_round():
    strategy = DnC(FedAvg(), num_malicious=1, iters=3, subsample=5, seed=4)
    first, again, other = strategy.subsets(2, 50), strategy.subsets(2, 50), strategy.subsets(3, 50)
    assert all(len(c) == 5 and len(set(c)) == 5 for c in first)
    assert all((a == b).all() for a, b in zip(first, again))
    assert any((a != b).any() for a, b in zip(first, other))
    assert len(strategy.subsets(2, 5)) == 1  # d <= subsample: all coordinates once
