import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedguard.models import flat_from_arrays, model_to_arrays
from fedguard.streams import IndexStream
from strategies.base import RoundNotes
from strategies.fltrust import ROOT_STREAM_ID, FLTrust, fltrust_aggregate
from tests.update_replies import run_round


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def reference(updates, g0):
    """sum_i ReLU(cos(g_i, g0)) * g_i * |g0| / |g_i|  /  sum_i ReLU(cos), with loops."""
    n0 = float(np.sqrt(sum(x * x for x in g0)))
    total, weight = np.zeros(len(g0)), 0.0
    for g in updates:
        ng = float(np.sqrt(sum(x * x for x in g)))
        ts = max(0.0, sum(a * b for a, b in zip(g, g0)) / (ng * n0))
        total += ts * g * (n0 / ng)
        weight += ts
    return total / weight


def test_aggregate_by_hand():
    g0 = np.array([1.0, 0.0])
    updates = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    agg, trust = fltrust_aggregate(updates, g0)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(trust, [1.0, 0.0, 0.0, s])
    # [2,0] -> [1,0] with trust 1; [1,1] -> [s,s] with trust s; the others weigh nothing
    np.testing.assert_allclose(agg, (np.array([1.0, 0.0]) + s * np.array([s, s])) / (1 + s))


def test_nothing_trusted_keeps_the_global_model():
    agg, trust = fltrust_aggregate(np.array([[-1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 0.0]))
    assert trust.sum() == 0 and not agg.any()


def server_update_by_hand(model, x, y, lr, momentum, steps, batch):
    """The server's own update, trained here with a plain torch loop on the same root stream."""
    trained = copy.deepcopy(model)
    opt = torch.optim.SGD(trained.parameters(), lr=lr, momentum=momentum)
    stream = IndexStream(np.arange(len(y)), 0, ROOT_STREAM_ID)
    for _ in range(steps):
        idx = stream.next_batch(batch)
        opt.zero_grad()
        F.cross_entropy(trained(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
        opt.step()
    return (flat_from_arrays(model_to_arrays(trained)) - flat_from_arrays(model_to_arrays(model))).double().numpy()


def test_strategy_trains_on_the_root_data_and_weighs_by_trust():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = nn.Linear(4, 3)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, size=40)
    like = model_to_arrays(model)
    glob = flat_from_arrays(like).double().numpy()
    g0 = server_update_by_hand(model, x, y, 0.1, 0.9, 3, 8)
    updates = rng.normal(scale=0.1, size=(6, len(glob))) + g0
    updates[0] = -5 * g0  # points away from the server's update: no trust
    models = (glob + updates).astype(np.float32)
    notes = RoundNotes()
    strategy = FLTrust(model, x, y, lr=0.1, momentum=0.9, local_steps=3, batch_size=8, notes=notes)
    got = run_round(strategy, glob.astype(np.float32), models, like=like)
    exact = models.astype(np.float64) - glob.astype(np.float32)
    np.testing.assert_allclose(got, glob.astype(np.float32) + reference(exact, g0), atol=1e-5)
    assert notes.clients[1]["flagged"] and notes.clients[1]["trust"] == 0.0
    assert not any(notes.clients[i]["flagged"] for i in range(2, 7))
    # the root stream moved on, and its cursor is what a checkpoint keeps
    assert strategy.state_dict()["root_cursor"] == [0, 24]


def test_buffers_take_the_trust_weighted_mean_unscaled():
    g0 = np.array([1.0, 0.0, 0.5])  # the last coordinate a BatchNorm statistic
    updates = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, -4.0], [-1.0, 0.0, 3.0]])
    agg, trust = fltrust_aggregate(updates, g0, params=np.array([True, True, False]))
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(trust, [1.0, s, 0.0])  # cosines on the parameters only
    np.testing.assert_allclose(agg[:2], (np.array([1.0, 0.0]) + s * np.array([s, s])) / (1 + s))
    assert agg[2] == pytest.approx((1.0 * 1.0 + s * -4.0) / (1 + s))
