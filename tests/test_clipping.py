import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from strategies import NormClipping, RoundNotes, clip_factors
from strategies.factory import build_aggregator
from fedguard.config import compose


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def reply(node_id: int, vec: np.ndarray, n: int = 10) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(vec[:3].astype(np.float32)),
                                                 "b": Array(vec[3:].astype(np.float32))}),
                          "metrics": MetricRecord({"num-examples": n})})
    msg = Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_src_node_id"] = node_id  # as if node `node_id` had replied
    return msg


def test_clip_factors_by_hand():
    np.testing.assert_allclose(clip_factors(np.array([0.5, 2.0, 4.0, 0.0]), 2.0), [1.0, 1.0, 0.5, 1.0])


@pytest.mark.parametrize("clip_norm", [None, 1.5])
def test_clipped_fedavg_equals_numpy(clip_norm):
    rng = np.random.default_rng(0)
    global_vec = rng.normal(size=5)
    updates = rng.normal(size=(5, 5)) * np.array([[1], [2], [0.5], [10], [1]])
    notes = RoundNotes()
    strategy = NormClipping(build_aggregator("fedavg", compose(), 5), clip_norm, 1.0, notes)
    strategy.global_arrays = ArrayRecord({"w": Array(global_vec[:3].astype(np.float32)),
                                          "b": Array(global_vec[3:].astype(np.float32))})
    replies = [reply(i, global_vec + u) for i, u in enumerate(updates)]
    arrays, _ = strategy.aggregate_train(1, replies)
    got = np.concatenate([arrays["w"].numpy(), arrays["b"].numpy()])

    norms = np.linalg.norm(updates, axis=1)
    bound = clip_norm if clip_norm is not None else np.median(norms)
    clipped = updates * np.minimum(1.0, bound / norms)[:, None]
    np.testing.assert_allclose(got, global_vec + clipped.mean(0), rtol=1e-5, atol=1e-5)
    assert notes.clients[3]["clip_factor"] < 1.0 and notes.clients[3]["update_norm"] == pytest.approx(norms[3], rel=1e-5)
    assert notes.timing["defense_s"] > 0


def test_median_aggregator_equals_numpy():
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(5, 5))
    arrays, _ = build_aggregator("median", compose(), 5).aggregate_train(1, [reply(i, v) for i, v in enumerate(vecs)])
    np.testing.assert_allclose(np.concatenate([arrays["w"].numpy(), arrays["b"].numpy()]),
                               np.median(vecs, axis=0), rtol=1e-6)
