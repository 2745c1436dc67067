"""The ClientApp: an honest client trains on the next batches of its own data stream; a
malicious one (`attacks.plan.malicious_set`, with an attack configured) runs `attacks.client`.
The message keys are those of `fedguard/protocol.py`.

Identity comes from the node (`node_config["partition-id"]`); the stream cursor lives in
`Context.state`, so it persists across rounds on the node's Ray actor. With virtual clients
(`backend.num_supernodes`, see server_app.py) the train message names the client instead
(`PARTITION`) and carries its state, which replaces the node's for this message.

Reliability hooks: an injected fault (`fedguard/faults.py`) may crash, hang or corrupt the
reply; every reply echoes the node's `Context.state` (ConfigRecord `INFO`, key `STATE`, JSON)
so the server can checkpoint it, and a resumed server sends it back (`RESUME_STATE` in the
train ConfigRecord), applied once to a node whose state does not hold it yet (so client
state, e.g. a sanitiser's, must live in ConfigRecords of JSON-able values). torch is
seeded per (seed, round, partition) so any randomness in local training is reproducible
whichever Ray actor runs the client.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedguard.app_config import config_from_context
from fedguard.attacks.accumulative import attack_info
from fedguard.attacks.client import malicious_train, server_round_of
from fedguard.attacks.plan import malicious_set
from fedguard.attacks.stream_poison import poison_stream_batch
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.faults import corrupt, fail_before_training, fault_for
from fedguard.models import arrays_to_model, build_model, model_to_arrays
from fedguard.protocol import (
    ARRAYS,
    DEVICE,
    IDENTITY,
    INFO,
    METRICS,
    NUM_EXAMPLES,
    PARTITION,
    PID,
    RAY_NODE,
    RESUME_STATE,
    STATE,
    TRAIN_LOSS,
    TRAIN_S,
)
from fedguard.runtime import assigned_device, ray_node_id, set_threads
from fedguard.sanitizers import build_sanitizer, train_sanitized, zero_metrics
from fedguard.streams import next_batches
from fedguard.training import load_momentum, save_momentum

app = ClientApp()


@lru_cache(maxsize=2)
def _model(name: str, shape: tuple, classes: int, hidden: int) -> torch.nn.Module:
    return build_model(name, shape, classes, hidden)


def stream_batches(cfg, context: Context, partition_id: int):
    """Next `local_steps` batches of this client's stream; advances the cursor in state.

    Returns (batches, partition size, poisoned masks, pool ids of each batch, fetch): an
    outsider's `stream_poison` is applied as the samples are drawn
    (`fedguard/attacks/stream_poison.py`); the masks are ground truth, only counted for the recorder.
    `fetch(ids) -> (x, y)` re-reads samples of this stream by pool id, poisoned the same way."""
    data = splits_from_config(cfg)
    indices = partition_from_config(cfg, data.pool.y, partition_id)

    def draw(idx):
        return poison_stream_batch(cfg, partition_id, idx, torch.from_numpy(data.pool.x[idx]),
                                   torch.from_numpy(data.pool.y[idx]), partition=indices,
                                   num_classes=data.num_classes)

    ids = next_batches(context, indices, cfg.seed, partition_id, cfg.local_steps, cfg.batch_size)
    drawn = [draw(idx) for idx in ids]
    return ([(x, y) for x, y, _ in drawn], len(indices), [m for _, _, m in drawn], ids,
            lambda idx: draw(idx)[:2])


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def client_identity(msg: Message, context: Context) -> int:
    """The partition this message trains: the node's own, or (virtual clients) the one the
    server names, whose carried state then replaces the node's (fresh when none is carried)."""
    for record in msg.content.config_records.values():
        if PARTITION in record:
            context.state = RecordDict()
            return int(record[PARTITION])
    return int(context.node_config["partition-id"])


def apply_resume_state(msg: Message, context: Context) -> None:
    """Restore the ConfigRecords a resumed server sent, those this node does not hold yet."""
    for record in msg.content.config_records.values():
        if RESUME_STATE in record and record[RESUME_STATE]:
            for name, values in json.loads(str(record[RESUME_STATE])).items():
                if name not in context.state.config_records:
                    context.state.config_records[name] = ConfigRecord(values)


def state_json(context: Context) -> str:
    return json.dumps({name: dict(rec) for name, rec in sorted(context.state.config_records.items())},
                      sort_keys=True)


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    cfg = config_from_context(context)
    partition_id = client_identity(msg, context)
    server_round = server_round_of(msg)
    fault = fault_for(cfg, server_round, partition_id)
    fail_before_training(fault, cfg)  # crash / hang (fedguard/faults.py)
    apply_resume_state(msg, context)
    torch.manual_seed(client_seed(cfg.seed, server_round, partition_id))
    set_threads(cfg.backend.client_resources.num_cpus)
    device = assigned_device()
    data = splits_from_config(cfg)
    model = _model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    arrays_to_model(model, msg.content[ARRAYS]).to(device)

    sanitizer_metrics = zero_metrics()  # every reply carries these keys (fedguard/sanitizers)
    if partition_id in malicious_set(cfg):  # attack branch (fedguard/attacks/client.py)
        arrays, loss, num_examples, metrics = malicious_train(cfg, msg, context, model, partition_id, device)
        sanitizer_metrics = metrics or sanitizer_metrics  # the data form's batches went through the sanitiser
        model.cpu()
    else:  # honest: its (possibly stream-poisoned) batches, through its sanitiser
        batches, _, poisoned, ids, fetch = stream_batches(cfg, context, partition_id)
        momentum = load_momentum(context.state, model) if cfg.keep_momentum else None
        loss, num_examples, sanitizer_metrics = train_sanitized(
            build_sanitizer(cfg), model, batches, poisoned, context, server_round, cfg.lr, cfg.momentum, device,
            ids=ids, fetch=fetch, buffers=momentum)
        if momentum is not None:
            save_momentum(context.state, momentum)
        arrays = model_to_arrays(model.cpu())

    metrics = MetricRecord({
        NUM_EXAMPLES: num_examples,
        TRAIN_LOSS: loss,
        PARTITION: partition_id,
        TRAIN_S: time.perf_counter() - start,
        **sanitizer_metrics,  # stream-poisoned, sanitizer-flagged-poisoned: ground truth, recorder only
    })
    info = ConfigRecord({RAY_NODE: ray_node_id(), PID: os.getpid(), DEVICE: str(device),
                         STATE: state_json(context),
                         **attack_info(context)})  # attack.stealth_drop: attack-stopped, attack-val-acc
    content = RecordDict({ARRAYS: arrays, METRICS: metrics, INFO: info})
    content = corrupt(fault, content, cfg.seed, server_round, partition_id)  # hostile-reply faults
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Handshake: tell the server this node's partition id. Also warms up the actor (data
    splits, this partition, the model: all cached; torch's lazy imports), so the first
    training round is not slowed by start-up work and a short `backend.round_timeout`
    measures training only (the handshake's own timeout is generous)."""
    partition_id = int(context.node_config["partition-id"])
    cfg = config_from_context(context)
    data = splits_from_config(cfg)
    partition_from_config(cfg, data.pool.y, partition_id)
    model = _model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    torch.optim.SGD(model.parameters(), lr=0.0)  # torch's first optimizer imports torch._dynamo (~1.3 s)
    content = RecordDict({IDENTITY: MetricRecord({PARTITION: partition_id})})
    return Message(content=content, reply_to=msg)
