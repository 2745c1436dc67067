import numpy as np
import pytest
from scipy.optimize import minimize

from strategies.geomed import GeometricMedian, weiszfeld
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def objective(v, points, weights):
    return sum(w * np.linalg.norm(v - p) for p, w in zip(points, weights))


def test_collinear_points_by_hand():
    # on a line with equal weights the geometric median is the 1-D median
    points = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(weiszfeld(points, np.ones(3), iters=1000, tol=0), [1.0, 0.0], atol=1e-5)


def test_a_majority_weight_pulls_the_median_onto_its_point():
    points = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 5.0]])
    np.testing.assert_allclose(weiszfeld(points, np.array([6.0, 2.0, 2.0]), iters=1000, tol=0), [0.0, 0.0],
                               atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_generic_minimiser(seed):
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(11, 5))
    points[:2] += 30.0
    weights = rng.integers(1, 20, size=11).astype(float)
    got = weiszfeld(points, weights, iters=500, tol=1e-12)
    best = minimize(objective, points.mean(axis=0), args=(points, weights), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 40000, "maxfev": 40000}).x
    assert objective(got, points, weights) <= objective(best, points, weights) + 1e-8
    np.testing.assert_allclose(got, best, atol=1e-4)
    # first-order optimality: the weighted unit vectors to the points cancel
    units = (got - points) / np.linalg.norm(got - points, axis=1)[:, None]
    assert np.linalg.norm(weights @ units) < 1e-5 * weights.sum()


def test_strategy_aggregates_the_updates_with_num_examples_weights():
    rng = np.random.default_rng(3)
    glob = rng.normal(size=10).astype(np.float32)
    models = (glob + rng.normal(size=(10, 10))).astype(np.float32)
    models[0] += 100.0  # one far outlier barely moves the median
    examples = rng.integers(1, 30, size=10)
    updates = models.astype(np.float64) - glob
    got = run_round(GeometricMedian(iters=500, tol=1e-12), glob, models, examples)
    np.testing.assert_allclose(got, glob + weiszfeld(updates, examples, iters=500, tol=1e-12), atol=1e-5)
    assert np.linalg.norm(got - glob - np.median(updates, axis=0)) < 2.0
