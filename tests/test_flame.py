import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import FedAvg

from strategies.base import RoundNotes
from strategies.flame import FLAME, cosine_distances, flame_clusters
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def one_round(seed=0, d=30):
    """Seven honest updates around one direction (norms 0.5..2), three attackers around the opposite one."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    honest = (direction + 0.1 * rng.normal(size=(7, d))) * np.linspace(0.5, 2.0, 7)[:, None]
    attackers = -direction + 0.3 * rng.normal(size=(3, d))
    glob = rng.normal(size=d).astype(np.float32)
    models = (glob + np.vstack([honest, attackers])).astype(np.float32)
    return glob, models


def test_cosine_distances_by_hand():
    dist = cosine_distances(np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(dist, [[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 0]], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_a_majority_of_honest_updates_is_admitted_and_no_attacker(seed):
    """HDBSCAN's single cluster keeps the points still in it at its last split: a majority
    (at least n/2 + 1), not always every honest update (one of seven is left out here)."""
    glob, models = one_round(seed)
    admitted, labels = flame_clusters(models.astype(np.float64) - glob)
    assert not admitted[7:].any() and admitted[:7].sum() >= 6
    assert (labels[admitted] == labels[admitted][0]).all() and (labels[~admitted] == -1).all()


def test_noise_free_aggregate_is_the_mean_of_the_clipped_admitted():
    glob, models = one_round()
    notes = RoundNotes()
    got = run_round(FLAME(FedAvg(), noise=0.0, notes=notes), glob, models)
    updates = models.astype(np.float64) - glob
    norms = [float(np.sqrt(sum(x * x for x in u))) for u in updates]
    bound = sorted(norms)[4] / 2 + sorted(norms)[5] / 2  # the median of ten norms
    admitted = [i for i in range(10) if not notes.clients[i + 1]["flagged"]]
    clipped = [updates[i] * min(1.0, bound / norms[i]) for i in admitted]
    np.testing.assert_allclose(got, glob + np.mean(clipped, axis=0), atol=1e-5)
    assert set(admitted) <= set(range(7)) and len(admitted) >= 6
    assert notes.clients[7]["clip_factor"] < 1.0 == notes.clients[1]["clip_factor"]


def test_noise_has_lambda_times_the_median_norm_and_spares_buffers():
    d = 20000
    glob, models = one_round(seed=1, d=d)
    mask = torch.ones(d, dtype=torch.bool)
    mask[-100:] = False  # as if the last 100 entries were BatchNorm statistics
    notes = RoundNotes()
    noisy = run_round(FLAME(FedAvg(), noise=0.01, seed=3, param_mask=mask, notes=notes), glob, models)
    clean = run_round(FLAME(FedAvg(), noise=0.0), glob, models)
    noise = noisy - clean
    bound = np.median(np.linalg.norm(models.astype(np.float64) - glob, axis=1))
    assert notes.round["flame_noise_std"] == pytest.approx(0.01 * bound, rel=1e-6)
    assert noise[:-100].std() == pytest.approx(0.01 * bound, rel=0.03)
    assert not noise[-100:].any()
