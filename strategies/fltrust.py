"""`defense=fltrust`: FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated
Learning via Trust Bootstrapping", NDSS 2021), on client updates.

Each round the server trains the global model itself on its root data, exactly as a client
trains (`local_steps` SGD steps of `batch_size`, the run's `lr` and `momentum`), and takes its
own update g_0. With the clients' updates g_1..g_n:

    TS_i  = ReLU(cos(g_i, g_0))                  trust score
    g_i'  = g_i * ||g_0|| / ||g_i||              every update rescaled to the server's norm
    aggregate = sum_i TS_i g_i' / sum_i TS_i     (0, the global model kept, if all TS_i = 0)

The root data is the server's validation split (`data.val`), the same clean data MD-DSC scores
on, drawn as a stream of its own (reshuffled each pass; its cursor is checkpointed). That is
MD-DSC's threat model too: a server holding a small clean set. The paper's root set is 100
samples; a larger validation split gives a less noisy g_0 than the paper's.

Trust and rescaling are computed on the parameters. BatchNorm running statistics (buffers)
are not gradients: a norm ratio computed on the parameters would rescale a variance's update
beyond anything trained, possibly below zero, so on the buffers the aggregate is the
trust-weighted mean of the clients' own, unscaled updates (sum_i TS_i b_i / sum_i TS_i).

What the server holds: the model architecture, the root data, the global model it sent.
Per-client notes: `trust` (TS_i), `flagged` (TS_i = 0: the update has no weight).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import Message
from torch import nn

from fedguard.models import param_mask
from fedguard.models import arrays_to_model, model_to_arrays
from fedguard.streams import IndexStream, StreamCursor
from fedguard.training import sgd_steps
from strategies.base import RoundNotes
from strategies.updates import Aggregate, UpdateAggregator, flat64

ROOT_STREAM_ID = 2**31 - 2  # stream id of FLTrust's root-data stream (MD-DSC's is 2**31 - 1)


def trust_scores(updates: np.ndarray, server_update: np.ndarray) -> np.ndarray:
    """ReLU of the cosine of each update with the server's (0 for a zero update)."""
    norms = np.linalg.norm(updates, axis=1) * np.linalg.norm(server_update)
    cos = np.divide(updates @ server_update, norms, out=np.zeros(len(updates)), where=norms > 0)
    return np.maximum(cos, 0.0)


def fltrust_aggregate(updates: np.ndarray, server_update: np.ndarray, params: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(the FLTrust aggregate, the trust scores); `params` (bool [d], None: all) marks the
    parameter coordinates, the others (buffers) get the trust-weighted mean, unscaled."""
    params = np.ones(updates.shape[1], dtype=bool) if params is None else np.asarray(params, dtype=bool)
    p, g0 = updates[:, params], server_update[params]
    trust = trust_scores(p, g0)
    out = np.zeros(updates.shape[1])
    if trust.sum() == 0:
        return out, trust
    norms = np.linalg.norm(p, axis=1)
    scale = np.divide(np.linalg.norm(g0), norms, out=np.zeros(len(updates)), where=norms > 0)
    out[params] = (trust * scale) @ p / trust.sum()
    out[~params] = trust @ updates[:, ~params] / trust.sum()
    return out, trust


class FLTrust(UpdateAggregator):
    def __init__(self, model: nn.Module, root_x: np.ndarray, root_y: np.ndarray, *, lr: float, momentum: float,
                 local_steps: int, batch_size: int, seed: int = 0, device: torch.device | None = None,
                 notes: RoundNotes | None = None, **flower):
        super().__init__(notes, **flower)
        self.device = device or torch.device("cpu")
        self.model = model
        self.params = param_mask(model).numpy()
        self.root_x, self.root_y = root_x, root_y
        self.root_stream = IndexStream(np.arange(len(root_y)), seed, ROOT_STREAM_ID)
        self.lr, self.momentum = float(lr), float(momentum)
        self.local_steps, self.batch_size = int(local_steps), int(batch_size)

    def server_update(self) -> np.ndarray:
        """g_0: the global model trained on the next `local_steps` root batches, minus the global model."""
        model = arrays_to_model(copy.deepcopy(self.model), self.global_arrays).to(self.device)
        batches = []
        for _ in range(self.local_steps):
            idx = self.root_stream.next_batch(self.batch_size)
            batches.append((torch.from_numpy(self.root_x[idx]), torch.from_numpy(self.root_y[idx])))
        sgd_steps(model, batches, self.lr, self.momentum, self.device)
        return flat64(model_to_arrays(model.cpu())) - flat64(self.global_arrays)

    def aggregate_updates(self, server_round: int, updates: np.ndarray, weights: np.ndarray,
                          replies: list[Message]) -> Aggregate:
        aggregate, trust = fltrust_aggregate(updates, self.server_update(), self.params)
        for msg, ts in zip(replies, trust):
            self.notes.clients[msg.metadata.src_node_id].update(trust=float(ts), flagged=bool(ts == 0))
        return Aggregate(aggregate, range(len(updates)))

    def state_dict(self) -> dict:
        cur = self.root_stream.cursor
        return {"root_cursor": [int(cur.epoch), int(cur.position)]}

    def load_state_dict(self, state: dict) -> None:
        self.root_stream.cursor = StreamCursor(*(int(v) for v in state["root_cursor"]))
