"""Reply validation (strategies/validation.py): every hostile reply is rejected with its
reason before the inner strategy sees it; num-examples cannot buy weight."""

import numpy as np
import pytest
from flwr.app import (Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.serverapp.strategy import FedAvg

from fedguard.config import compose
from fedguard.faults import INFLATED_EXAMPLES, corrupt
from strategies import ReplyValidator, RoundNotes
from strategies.factory import build_aggregator, build_strategy

MAX_EXAMPLES = 160
SHAPES = {"w": (3, 4), "b": (4,)}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def model_arrays(vec: np.ndarray, dtype=np.float32) -> ArrayRecord:
    return ArrayRecord({"w": Array(vec[:12].reshape(3, 4).astype(dtype)), "b": Array(vec[12:].astype(dtype))})


def content(vec, n=MAX_EXAMPLES, loss=0.5, **extra_metrics) -> RecordDict:
    return RecordDict({"arrays": model_arrays(vec),
                       "metrics": MetricRecord({"num-examples": n, "train_loss": loss, "partition-id": 0,
                                                "train_s": 0.1, **extra_metrics}),
                       "info": ConfigRecord({"ray-node": "local", "device": "cpu", "state": "{}"})})


def as_reply(node_id: int, record: RecordDict) -> Message:
    msg = Message(content=record, dst_node_id=0, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_src_node_id"] = node_id  # as if node `node_id` had replied
    return msg


def error_reply(node_id: int, reason: str = "ClientAppException: boom") -> Message:
    ins = Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return Message(Error(code=0, reason=reason), reply_to=ins)


class Spy(FedAvg):
    """FedAvg that remembers what it was shown."""

    def __init__(self):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0,
                         min_available_nodes=1)
        self.seen: list[Message] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = replies
        return super().aggregate_train(server_round, replies)


def validator(weighting="num_examples", min_replies=1, inner=None):
    notes = RoundNotes()
    v = ReplyValidator(inner or Spy(), notes, max_examples=MAX_EXAMPLES, weighting=weighting,
                       min_replies=min_replies)
    v.global_arrays = model_arrays(np.zeros(16))
    return v, notes


def flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays["w"].numpy().reshape(-1), arrays["b"].numpy()])


HONEST = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)


def honest_replies():
    return [as_reply(i, content(v)) for i, v in enumerate(HONEST)]


def _with_arrays(arrays: dict) -> RecordDict:
    c = content(np.ones(16))
    return RecordDict({"arrays": ArrayRecord(arrays), "metrics": c["metrics"], "info": c["info"]})


def _nan():
    v = np.ones(16); v[5] = np.nan
    return content(v)


def _inf():
    v = np.ones(16); v[14] = -np.inf
    return content(v)


def _garbage_bytes():
    good = model_arrays(np.ones(16))
    return _with_arrays({k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=b"\x00" * len(a.data))
                         for k, a in good.items()})


def _lying_shape():  # declares the model's shape, carries another
    a = Array(np.ones(12, dtype=np.float32))
    return _with_arrays({"w": Array(dtype="float32", shape=(3, 4), stype=a.stype, data=a.data),
                         "b": Array(np.ones(4, dtype=np.float32))})


def _metrics(**metrics):
    c = content(np.ones(16))
    return RecordDict({"arrays": c["arrays"], "metrics": MetricRecord(metrics), "info": c["info"]})


def _records(**records):
    c = content(np.ones(16))
    return RecordDict({**{k: c[k] for k in ("arrays", "metrics", "info")}, **records})


HOSTILE = {
    "nan": (_nan, "non-finite"),
    "inf": (_inf, "non-finite"),
    "wrong_shape": (lambda: _with_arrays({"w": Array(np.ones((4, 3), np.float32)), "b": Array(np.ones(4, np.float32))}),
                    "array shape"),
    "wrong_dtype": (lambda: _with_arrays({"w": Array(np.ones((3, 4), np.float16)), "b": Array(np.ones(4, np.float32))}),
                    "array dtype"),
    "renamed_array": (lambda: _with_arrays({"W": Array(np.ones((3, 4), np.float32)), "b": Array(np.ones(4, np.float32))}),
                      "array names"),
    "missing_array": (lambda: _with_arrays({"w": Array(np.ones((3, 4), np.float32))}), "array names"),
    "extra_array": (lambda: _with_arrays({"w": Array(np.ones((3, 4), np.float32)), "b": Array(np.ones(4, np.float32)),
                                          "x": Array(np.ones(1, np.float32))}), "array names"),
    "swapped_order": (lambda: _with_arrays({"b": Array(np.ones(4, np.float32)), "w": Array(np.ones((3, 4), np.float32))}),
                      "array names"),
    "oversize": (lambda: _with_arrays({"w": Array(np.ones((3, 4), np.float32)), "b": Array(np.ones(4, np.float32)),
                                       "pad": Array(np.zeros(10_000, np.float32))}), "oversize"),
    "garbage_bytes": (_garbage_bytes, "array data"),
    "lying_shape": (_lying_shape, "array data"),
    "extra_arrayrecord": (lambda: _records(more=model_arrays(np.ones(16))), "records"),
    "extra_metricrecord": (lambda: _records(more=MetricRecord({"num-examples": 1})), "records"),
    "extra_configrecord": (lambda: _records(evil=ConfigRecord({"x": 1})), "records"),
    "huge_info": (lambda: _records(info=ConfigRecord({"blob": "x" * 100_000})), "records"),
    "missing_metricrecord": (lambda: RecordDict({"arrays": model_arrays(np.ones(16))}), "records"),
    "missing_arrayrecord": (lambda: RecordDict({"metrics": MetricRecord({"num-examples": 1, "train_loss": 0.1})}),
                            "records"),
    "renamed_records": (lambda: RecordDict({"params": model_arrays(np.ones(16)),
                                            "metrics": MetricRecord({"num-examples": 1, "train_loss": 0.1})}),
                        "records"),
    "missing_num_examples": (lambda: _metrics(train_loss=0.1), "metrics"),
    "missing_train_loss": (lambda: _metrics(**{"num-examples": 10}), "metrics"),
    "nan_loss": (lambda: _metrics(**{"num-examples": 10, "train_loss": float("nan")}), "metrics"),
    "inf_loss": (lambda: _metrics(**{"num-examples": 10, "train_loss": float("inf")}), "metrics"),
    "negative_loss": (lambda: _metrics(**{"num-examples": 10, "train_loss": -1.0}), "metrics"),
    "zero_examples": (lambda: _metrics(**{"num-examples": 0, "train_loss": 0.1}), "metrics"),
    "negative_examples": (lambda: _metrics(**{"num-examples": -5, "train_loss": 0.1}), "metrics"),
    "float_examples": (lambda: _metrics(**{"num-examples": 3.5, "train_loss": 0.1}), "metrics"),
    "list_metric": (lambda: _metrics(**{"num-examples": 10, "train_loss": [0.1, 0.2]}), "metrics"),
    "unexpected_metric": (lambda: _metrics(**{"num-examples": 10, "train_loss": 0.1, "weight": 1e9}), "metrics"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_reply_rejected_with_reason_and_aggregate_unharmed(kind):
    make, category = HOSTILE[kind]
    v, notes = validator()
    replies = honest_replies() + [as_reply(99, make())]
    arrays, _ = v.aggregate_train(1, replies)
    reason = notes.clients[99]["rejected"]
    assert reason.startswith(category + ":"), reason
    assert all("rejected" not in notes.clients[i] for i in range(3))
    assert [m.metadata.src_node_id for m in v.inner.seen] == [0, 1, 2]  # never reached the aggregator
    np.testing.assert_allclose(flat(arrays), HONEST.mean(0), rtol=1e-6, atol=1e-6)
    assert notes.round["valid_replies"] == 3 and notes.round["rejected"] == 1


def test_flower_error_reply_is_rejected_and_never_reaches_the_inner_strategy():
    v, notes = validator()
    arrays, _ = v.aggregate_train(1, honest_replies() + [error_reply(42)])
    assert notes.clients[42]["rejected"] == "client error: ClientAppException: boom"
    assert len(v.inner.seen) == 3 and not any(m.has_error() for m in v.inner.seen)
    np.testing.assert_allclose(flat(arrays), HONEST.mean(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, category", [("nan", "non-finite"), ("wrong_shape", "array shape"),
                                            ("oversize", "oversize"), ("garbage", "array data")])
def test_injected_fault_replies_are_rejected(kind, category):
    """The hostile replies fedguard/faults.py makes are caught with the expected reason."""
    v, notes = validator()
    hostile = corrupt(kind, content(np.ones(16)), 0, 1, 7)
    v.aggregate_train(1, honest_replies() + [as_reply(7, hostile)])
    assert notes.clients[7]["rejected"].startswith(category + ":")


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_inflated_num_examples_does_not_change_the_aggregate(weighting):
    def run(n_claimed):
        v, notes = validator(weighting)
        replies = honest_replies()
        inflated = as_reply(3, content(np.full(16, 5.0, dtype=np.float32), n=n_claimed))
        arrays, _ = v.aggregate_train(1, replies + [inflated])
        return flat(arrays), notes

    honest, _ = run(MAX_EXAMPLES)
    inflated, notes = run(INFLATED_EXAMPLES)
    np.testing.assert_array_equal(inflated, honest)  # bit-identical
    expected = np.vstack([HONEST, np.full((1, 16), 5.0)]).mean(0)
    np.testing.assert_allclose(honest, expected, rtol=1e-6, atol=1e-6)
    assert notes.clients[3]["claimed_examples"] == INFLATED_EXAMPLES
    # the injected fault makes the same inflated reply
    faulty = corrupt("inflate_examples", content(np.ones(16)), 0, 1, 3)
    assert faulty["metrics"]["num-examples"] == INFLATED_EXAMPLES


def test_uniform_weighting_ignores_claims_and_num_examples_caps_them():
    vecs = np.array([[0.0] * 16, [1.0] * 16], dtype=np.float32)
    for weighting, expected in (("uniform", 0.5), ("num_examples", 1 * 100 / 160 + 0 * 60 / 160)):
        v, _ = validator(weighting)
        replies = [as_reply(0, content(vecs[0], n=60)), as_reply(1, content(vecs[1], n=100))]
        arrays, _ = v.aggregate_train(1, replies)
        np.testing.assert_allclose(flat(arrays), expected, rtol=1e-6)


def test_below_min_replies_keeps_the_previous_model():
    v, notes = validator(min_replies=3)
    replies = honest_replies()[:2] + [as_reply(9, _nan())]
    assert v.aggregate_train(1, replies) == (None, None)
    assert notes.round["below_min_replies"] and notes.round["valid_replies"] == 2
    assert v.inner.seen == []


def test_a_reply_missing_an_optional_metric_does_not_break_flower_consistency():
    v, notes = validator()
    c = content(HONEST[0])
    del c["metrics"]["train_s"]
    arrays, metrics = v.aggregate_train(1, [as_reply(0, c)] + honest_replies()[1:])
    np.testing.assert_allclose(flat(arrays), HONEST.mean(0), rtol=1e-6, atol=1e-6)
    assert "train_s" not in metrics


@pytest.mark.parametrize("defense", ["fedavg", "median", "clipping"])
def test_validation_is_the_outermost_strategy(defense):
    cfg = compose([f"defense={defense}"])
    strategy = build_strategy(cfg, 4, RoundNotes())
    assert isinstance(strategy, ReplyValidator)
    assert strategy.max_examples == cfg.local_steps * cfg.batch_size
    assert not isinstance(strategy.inner, ReplyValidator)
    inner = "NormClipping" if defense == "clipping" else type(build_aggregator(defense, cfg, 4)).__name__
    assert type(strategy.inner).__name__ == inner
