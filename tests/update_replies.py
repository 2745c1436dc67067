"""Flower reply Messages for strategy tests: a flat vector travels as two arrays "w" and "b", or
in the layout of a model's ArrayRecord (`like`)."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedguard.models import arrays_from_flat


def records(vec: np.ndarray, like: ArrayRecord | None = None) -> ArrayRecord:
    if like is not None:
        return arrays_from_flat(torch.from_numpy(np.asarray(vec, dtype=np.float32)), like)
    half = len(vec) // 2
    return ArrayRecord({"w": Array(np.asarray(vec[:half], dtype=np.float32)),
                        "b": Array(np.asarray(vec[half:], dtype=np.float32))})


def reply(node_id: int, vec: np.ndarray, examples: int = 10, like: ArrayRecord | None = None) -> Message:
    content = RecordDict({"arrays": records(vec, like), "metrics": MetricRecord({"num-examples": int(examples)})})
    msg = Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_src_node_id"] = node_id  # as if node `node_id` had replied
    return msg


def run_round(strategy, glob: np.ndarray, models, examples=None, server_round: int = 1, nodes=None, like=None):
    """The strategy's new global model (float64, None when it keeps the previous one) from
    replies of `models` [n, d] to the global model `glob` (remembered as configure_train would)."""
    examples = np.full(len(models), 10) if examples is None else examples
    nodes = range(1, len(models) + 1) if nodes is None else nodes
    strategy.global_arrays = records(glob, like)
    replies = [reply(i, m, e, like) for i, m, e in zip(nodes, models, examples)]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        return None
    return np.concatenate([a.numpy().reshape(-1) for a in arrays.values()]).astype(np.float64)
