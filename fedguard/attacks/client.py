"""Malicious clients: what the ClientApp does on a partition that `malicious_set` picked.

This module is the Flower-facing glue of the attacks: it reads the round from the train
message (`protocol.SERVER_ROUND`, set by Flower's `configure_train`), draws the attacker's
data, applies the accumulative attack's stealth rule, calls `attacks.craft.craft` (which
follows the `AttackPlan` schedule and calls the attack registered under `attack.name`) and
turns the crafted update into the reply's arrays. The attacks themselves are in their own
modules (see the package docstring).

Data of a malicious client
--------------------------
Its own partition only (never the server's validation split). The first `attack.val_batch`
indices of a seeded permutation of the partition are its held-out validation batch S_val
(kept out of its training stream in every round); the trigger batch S_T (`batch_size`
samples) is drawn from the rest. Both permutations are seeded with `shared_seed(seed,
trigger_round, salt)`, the seed every colluder derives identically, so colluders pick their
batches by the same rule.

The data form of the accumulative attack poisons the client's stream, not its software: with
a sanitiser configured the poisoned batches go through it (`train_sanitized`) like any
client's batches, which is the paper's single-learner defense (`num_clients=1`: DSC on the
poisoned stream).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from fedguard.attacks.accumulative import stealth_stopped
from fedguard.attacks.craft import AttackData, craft
from fedguard.attacks.plan import ACCUMULATIVE, TRIGGER_SALT, VAL_SALT, attack_plan, shared_seed
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.models import arrays_from_flat, flat_from_arrays, model_to_arrays
from fedguard.protocol import SERVER_ROUND
from fedguard.sanitizers import build_sanitizer, train_sanitized
from fedguard.streams import next_batches


def server_round_of(msg: Message) -> int:
    """The `SERVER_ROUND` Flower's `configure_train` puts in the train message's ConfigRecord."""
    for record in msg.content.config_records.values():
        if SERVER_ROUND in record:
            return int(record[SERVER_ROUND])
    raise RuntimeError(f"train message without a {SERVER_ROUND!r} in its ConfigRecord")


# ----------------------------------------------------------------------------------- data

def heldout_split(cfg, partition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out validation indices) of an attacker's partition.

    The held-out batch is the first `attack.val_batch` entries of a seeded permutation of
    the partition; the training indices keep the partition's order (the stream shuffles).
    """
    k = int(cfg.attack.val_batch)
    if k >= len(partition):
        raise ValueError(f"attack.val_batch={k} leaves no training data in a partition of "
                         f"{len(partition)} samples; lower attack.val_batch")
    plan = attack_plan(cfg)
    rng = np.random.default_rng(shared_seed(cfg.seed, int(plan.trigger_round), VAL_SALT))
    perm = rng.permutation(len(partition))
    return partition[np.sort(perm[k:])], partition[perm[:k]]


def attacker_data(cfg, context: Context, partition_id: int) -> AttackData:
    """This round's batches of the attacker's stream (advances the cursor) and its S_val, S_T."""
    data = splits_from_config(cfg)
    partition = partition_from_config(cfg, data.pool.y, partition_id)
    train_idx, val_idx = heldout_split(cfg, partition)
    batch_indices = next_batches(context, train_idx, cfg.seed, partition_id, cfg.local_steps, cfg.batch_size)
    rng = np.random.default_rng(shared_seed(cfg.seed, int(attack_plan(cfg).trigger_round), TRIGGER_SALT))
    trig = train_idx[rng.permutation(len(train_idx))[:cfg.batch_size]]
    x = lambda idx: torch.from_numpy(data.pool.x[idx])  # noqa: E731
    y = lambda idx: torch.from_numpy(data.pool.y[idx])  # noqa: E731
    return AttackData([(x(idx), y(idx)) for idx in batch_indices], x(val_idx), y(val_idx), x(trig), y(trig),
                      train_idx, val_idx, batch_indices)


# ------------------------------------------------------------------------------ the reply

def malicious_train(cfg, msg: Message, context: Context, model: nn.Module, partition_id: int,
                    device: torch.device) -> tuple[ArrayRecord, float, int, dict | None]:
    """(reply arrays, train_loss, num-examples, sanitiser METRICS or None) of a malicious
    client for the train `msg`. `model` holds the global weights (on `device`); it is left
    unchanged. With `attack.form=data` and a sanitiser, the batches train through it."""
    data = attacker_data(cfg, context, partition_id)
    num_classes = splits_from_config(cfg).num_classes
    server_round = server_round_of(msg)
    stopped = stealth_stopped(cfg, context, server_round, model, data, device)
    train_poisoned = None
    if cfg.attack.name in ACCUMULATIVE and cfg.attack.form == "data" and cfg.sanitizer.name != "none":
        def train_poisoned(batches, poisoned: bool, buffers: list | None = None):
            trained = copy.deepcopy(model)
            truth = [torch.full((len(y),), poisoned) for _, y in batches]  # crafted: every sample
            loss, _, metrics = train_sanitized(build_sanitizer(cfg), trained, batches, truth, context,
                                               server_round, cfg.lr, cfg.momentum, device, buffers=buffers)
            return trained, loss, metrics
    crafted = craft(cfg, server_round, model, data, device, num_classes, partition_id, stopped, train_poisoned,
                    state=context.state)
    if crafted.trained is not None:
        arrays = model_to_arrays(crafted.trained)
    else:
        global_arrays = model_to_arrays(model)
        arrays = arrays_from_flat(flat_from_arrays(global_arrays) + crafted.update, global_arrays)
    return arrays, crafted.loss, sum(len(y) for _, y in data.batches), crafted.metrics
