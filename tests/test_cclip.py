import numpy as np
import pytest

from strategies.cclip import CenteredClipping, centered_clip
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def reference(updates, center, tau, iters):
    """The iteration written out with loops over clients."""
    v = np.array(center, dtype=np.float64)
    for _ in range(iters):
        dists = [float(np.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))) for u in updates]
        radius = sorted(dists)[len(dists) // 2] if tau is None else tau
        if tau is None and len(dists) % 2 == 0:
            radius = (sorted(dists)[len(dists) // 2 - 1] + sorted(dists)[len(dists) // 2]) / 2
        step = np.zeros_like(v)
        for u, dist in zip(updates, dists):
            step += (u - v) * min(1.0, radius / dist) / len(updates)
        v = v + step
    return v


def test_one_iteration_by_hand():
    updates = np.array([[1.0, 0.0], [0.0, 1.0], [10.0, 0.0]])
    # around 0 with tau 1: [10, 0] is clipped to [1, 0]; the mean of [1,0], [0,1], [1,0]
    np.testing.assert_allclose(centered_clip(updates, np.zeros(2), 1.0, 1), [2 / 3, 1 / 3])


@pytest.mark.parametrize("tau", [0.5, None])
@pytest.mark.parametrize("n", [10, 11])
def test_matches_loops_on_random_inputs(tau, n):
    for seed in range(10):
        rng = np.random.default_rng(seed)
        updates = rng.normal(size=(n, 20)) + rng.normal(size=20)
        updates[:2] *= 20
        center = rng.normal(size=20)
        np.testing.assert_allclose(centered_clip(updates, center, tau, 3), reference(updates, center, tau, 3),
                                   rtol=1e-10, atol=1e-12)


def test_strategy_starts_from_the_previous_aggregate_and_checkpoints_it():
    rng = np.random.default_rng(0)
    glob = rng.normal(size=12)
    rounds = [rng.normal(size=(10, 12)) for _ in range(3)]
    strategy = CenteredClipping(tau=0.3, iters=2)
    center = np.zeros(12)
    for r, updates in enumerate(rounds[:2], start=1):
        got = run_round(strategy, glob, glob + updates, server_round=r)
        center = reference(list(updates), center, 0.3, 2)
        np.testing.assert_allclose(got - glob, center, atol=1e-5)
    resumed = CenteredClipping(tau=0.3, iters=2)
    resumed.load_state_dict(strategy.state_dict())
    np.testing.assert_allclose(run_round(resumed, glob, glob + rounds[2], server_round=3) - glob,
                               reference(list(rounds[2]), center, 0.3, 2), atol=1e-5)


def test_zero_init_ignores_the_previous_round():
    rng = np.random.default_rng(1)
    glob, updates = rng.normal(size=8), rng.normal(size=(10, 8))
    strategy = CenteredClipping(tau=None, iters=1, init="zero")
    run_round(strategy, glob, glob + 5 * updates, server_round=1)
    got = run_round(strategy, glob, glob + updates, server_round=2)
    np.testing.assert_allclose(got - glob, reference(list(updates), np.zeros(8), None, 1), atol=1e-5)
