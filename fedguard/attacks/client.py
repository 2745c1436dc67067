"""Malicious clients: what the ClientApp does on a partition that `malicious_ids` picked.

Every attack follows the schedule of `AttackPlan` (built from `cfg.attack`): in rounds where
the plan says it is not attacking (burn-in, and after the trigger when `honest_after`) the
client trains honestly. The server round comes from the train message's ConfigRecord
("server-round", set by Flower's `configure_train`).

Data of a malicious client
--------------------------
Its own partition only (never the server's validation split). The first `attack.val_batch`
indices of a seeded permutation of the partition are its held-out validation batch S_val
(kept out of its training stream in every round); the trigger batch S_T (`batch_size`
samples) is drawn from the rest. Both permutations are seeded with `shared_seed(seed,
trigger_round, salt)`, the seed every colluder derives identically, so colluders pick their
batches by the same rule.

Replies (all of the form global + update, flat over `models.exchanged_state`)
------------------------------------------------------------------------------
ref = the norm of the update this client would send honestly this round (a copy of the
global model trained on this round's stream batches).

- accumulative, form=update: accumulate rounds send `accumulate_norm * ref` along
  `accumulation_direction` (sign * grad_w sum_l cos(g_T, g_val)); the trigger round (and
  later attacking rounds) sends `norm_bound * ref` along `trigger_update` (`trigger_mode`,
  `local_steps` steps of size `lr`). Buffers (BatchNorm statistics) stay the global ones.
- accumulative, form=data: the client trains (ordinary local SGD) on poisoned data instead:
  `perturb_batch` copies of its stream batches in accumulate rounds, the `perturb_trigger`
  batch (`trigger_steps` times; null: `local_steps` times) in the trigger round. No norm is
  imposed: a data poisoner controls the data, not the update.
- accumulative, stealth (`attack.stealth_drop`, both forms): in each accumulate round the
  client first measures the accuracy of the global model it received on its held-out S_val;
  the first measurement is its reference, and once an accuracy falls more than `stealth_drop`
  below it (`stealth_step`) the client replies honestly for the rest of the accumulate phase.
  The trigger round fires regardless. The reference and the decision live in Context.state
  (ConfigRecord `STATE_KEY`, JSON-able scalars, so virtual clients and resumes carry them) and
  are reported in the reply's ConfigRecord "info" (`attack_info`: `attack-stopped`,
  `attack-val-acc`; clients.jsonl `attack_stopped`, `attack_val_acc`).
- label_flip: trains on y -> num_classes - 1 - y.
- sign_flip: global - honest update; scaling: global + scale * honest update (on parameters;
  BatchNorm statistics keep the honest values, which a negated or scaled running variance
  would make invalid).
- gaussian: global + N(0, noise_std^2) on every parameter.
- backdoor: trains on its stream batches with a seeded `poison_fraction` of each batch
  stamped with the trigger (`attacks.backdoor`: BadNets patch or blend) and relabelled
  `target_label`; with `boost` != 1 (model replacement, Bagdasaryan et al. 2020) it replies
  global + boost * (trained - global) on parameters (BatchNorm statistics: the trained ones).
- alie, ipm: train honestly; the server-side `strategies.omniscient.OmniscientAttack`
  (the attacker's part that sees every honest update, simulation only) overwrites the reply.

The reply keeps the honest format and metrics keys (Flower needs identical MetricRecord keys
across replies): `train_loss` is the loss of what the client trained on (its honest copy for
the update attacks, the flipped or poisoned batches for label_flip and the data form).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from torch import Tensor, nn

from fedguard.attacks.backdoor import poison_batch, trigger_from_config
from fedguard.attacks.objectives import (
    accumulation_direction,
    model_params,
    perturb_batch,
    perturb_trigger,
    scale_to_norm,
    to_exchanged,
    trigger_update,
)
from fedguard.attacks.plan import AttackPlan, malicious_ids, shared_seed
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.models import arrays_from_flat, exchanged_state, flat_from_arrays, model_to_arrays
from fedguard.streams import next_batches
from fedguard.training import sgd_steps

_VAL_SALT, _TRIGGER_SALT, _NOISE_SALT, _POISON_SALT = 1, 2, 3, 4
STATE_KEY = "attack"  # Context.state ConfigRecord of the stealth rule (see `stealth_step`)
INFO_STOPPED, INFO_VAL_ACC = "attack-stopped", "attack-val-acc"  # reply ConfigRecord "info" keys
OMNISCIENT_ATTACKS = ("alie", "ipm")  # crafted server-side (strategies/omniscient.py)


# ------------------------------------------------------------------------ schedule, identity

def attack_plan(cfg) -> AttackPlan | None:
    """The schedule of `cfg.attack`, or None without an attack."""
    a = cfg.attack
    if a.name == "none":
        return None
    return AttackPlan(burn_in=a.burn_in, accumulate_rounds=a.accumulate_rounds,
                      trigger_round=a.trigger_round, honest_after=a.honest_after)


def malicious_set(cfg) -> set[int]:
    """Partition ids of the malicious clients (empty without an attack: nobody misbehaves)."""
    if cfg.attack.name == "none":
        return set()
    return set(malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed))


def round_phase(cfg, server_round: int) -> str:
    """The phase of `server_round` for the records: "clean" without an attack; the plan's
    burn_in/accumulate/trigger/after for the accumulative attack; for the other attacks, which
    have no trigger, "attack" in the rounds they attack (so no trigger drop is reported)."""
    plan = attack_plan(cfg)
    if plan is None:
        return "clean"
    phase = plan.phase(server_round)
    if cfg.attack.name == "accumulative" or phase == "burn_in":
        return phase
    return "attack" if plan.attacking(server_round) else "after"


def server_round_of(msg: Message) -> int:
    """The "server-round" Flower's `configure_train` puts in the train message's ConfigRecord."""
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    raise RuntimeError("train message without a 'server-round' in its ConfigRecord")


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
    rng = np.random.default_rng(shared_seed(cfg.seed, int(plan.trigger_round), _VAL_SALT))
    perm = rng.permutation(len(partition))
    return partition[np.sort(perm[k:])], partition[perm[:k]]


@dataclass
class AttackData:
    batches: list[tuple[Tensor, Tensor]]  # this round's stream batches (held-out excluded)
    x_val: Tensor  # held-out validation batch S_val
    y_val: Tensor
    x_trig: Tensor  # trigger batch S_T (from the training indices, fixed over the run)
    y_trig: Tensor
    train_indices: np.ndarray  # pool indices of the training stream
    val_indices: np.ndarray  # pool indices of S_val
    batch_indices: list[np.ndarray]  # pool indices of `batches`


def attacker_data(cfg, context: Context, partition_id: int) -> AttackData:
    """This round's batches of the attacker's stream (advances the cursor) and its S_val, S_T."""
    data = splits_from_config(cfg)
    partition = partition_from_config(cfg, data.pool.y, partition_id)
    train_idx, val_idx = heldout_split(cfg, partition)
    batch_indices = next_batches(context, train_idx, cfg.seed, partition_id, cfg.local_steps, cfg.batch_size)
    rng = np.random.default_rng(shared_seed(cfg.seed, int(attack_plan(cfg).trigger_round), _TRIGGER_SALT))
    trig = train_idx[rng.permutation(len(train_idx))[:cfg.batch_size]]
    x = lambda idx: torch.from_numpy(data.pool.x[idx])  # noqa: E731
    y = lambda idx: torch.from_numpy(data.pool.y[idx])  # noqa: E731
    return AttackData([(x(idx), y(idx)) for idx in batch_indices], x(val_idx), y(val_idx), x(trig), y(trig),
                      train_idx, val_idx, batch_indices)


# --------------------------------------------------------------------------------- craft

@dataclass
class Crafted:
    update: Tensor  # flat over exchanged_state: the reply is global + update
    honest_update: Tensor  # what this client would have sent honestly this round
    loss: float  # train_loss to report
    phase: str
    attacking: bool
    trained: nn.Module | None = None  # when the reply is a trained model: reply it exactly
    metrics: dict | None = None  # data form: the sanitiser's METRICS of its training (None: no sanitiser ran)


def _flat(model: nn.Module) -> Tensor:
    return flat_from_arrays(model_to_arrays(model))


def param_mask(model: nn.Module) -> Tensor:
    """True at the parameter entries of the exchanged flat vector (False at buffers)."""
    names = {k for k, _ in model.named_parameters()}
    return torch.cat([torch.full((v.numel(),), k in names, dtype=torch.bool)
                      for k, v in exchanged_state(model).items()])


def _train_copy(model: nn.Module, batches, cfg, device) -> tuple[nn.Module, float]:
    trained = copy.deepcopy(model)
    loss = sgd_steps(trained, batches, cfg.lr, cfg.momentum, device)
    return trained, loss


def craft(cfg, server_round: int, model: nn.Module, data: AttackData, device: torch.device,
          num_classes: int, partition_id: int = 0, stopped: bool = False, train_poisoned=None) -> Crafted:
    """The malicious client's update for `server_round`. `model` holds the global weights
    on `device` and is left unchanged. `stopped` (the stealth rule fired, see `stealth_step`)
    makes an accumulate round honest. `train_poisoned(batches, poisoned) -> (trained copy, loss,
    metrics)`, given for the data form with a sanitiser, trains the client's batches (the
    poisoned ones, and the clean ones of its honest rounds) through it; without it the data
    form trains by plain local SGD."""
    a = cfg.attack
    plan = attack_plan(cfg)
    phase, attacking = plan.phase(server_round), plan.attacking(server_round)
    if stopped and phase == "accumulate":
        attacking = False
    global_flat = _flat(model)
    if not attacking and train_poisoned is not None:  # a sanitising learner: every batch through its sanitiser
        trained, loss, metrics = train_poisoned(data.batches, poisoned=False)
        update = _flat(trained) - global_flat
        return Crafted(update, update, float(loss), phase, attacking, trained, metrics)
    honest, honest_loss = _train_copy(model, data.batches, cfg, device)
    honest_update = _flat(honest) - global_flat

    def done(update, loss=honest_loss, trained=None):
        return Crafted(update, honest_update, float(loss), phase, attacking, trained)

    if not attacking:
        return done(honest_update, trained=honest)
    mask = param_mask(model)
    if a.name == "label_flip":
        flipped = [(x, num_classes - 1 - y) for x, y in data.batches]
        trained, loss = _train_copy(model, flipped, cfg, device)
        return done(_flat(trained) - global_flat, loss, trained)
    if a.name == "sign_flip":
        return done(torch.where(mask, -honest_update, honest_update))
    if a.name == "scaling":
        return done(torch.where(mask, a.scale * honest_update, honest_update))
    if a.name == "gaussian":
        gen = torch.Generator().manual_seed(shared_seed(cfg.seed, server_round, _NOISE_SALT * 100003 + partition_id))
        noise = torch.randn(global_flat.numel(), generator=gen) * a.noise_std
        return done(torch.where(mask, noise, torch.zeros_like(noise)))
    if a.name == "backdoor":
        gen = torch.Generator().manual_seed(shared_seed(cfg.seed, server_round, _POISON_SALT * 100003 + partition_id))
        trigger = trigger_from_config(cfg)
        poisoned = [poison_batch(x, y, trigger, int(a.target_label), float(a.poison_fraction), gen)[:2]
                    for x, y in data.batches]
        trained, loss = _train_copy(model, poisoned, cfg, device)
        update = _flat(trained) - global_flat
        if a.boost == 1.0:
            return done(update, loss, trained)
        return done(torch.where(mask, a.boost * update, update), loss)
    if a.name in OMNISCIENT_ATTACKS:  # honest here; the server-side wrapper overwrites the reply
        return done(honest_update, trained=honest)
    if a.name == "accumulative":
        return _accumulative(cfg, phase, model, data, device, global_flat, honest_update, done, train_poisoned)
    raise ValueError(f"unknown attack {a.name!r}")


def _accumulative(cfg, phase, model, data, device, global_flat, honest_update, done,
                  train_poisoned) -> Crafted:
    a = cfg.attack
    model.eval()  # reference behaviour: BatchNorm on running statistics
    params = model_params(model)
    xt, yt = data.x_trig.to(device), data.y_trig.to(device)
    xv, yv = data.x_val.to(device), data.y_val.to(device)
    ref = float(honest_update.norm())
    if a.form == "update":
        if phase == "accumulate":
            d = accumulation_direction(model, params, xt, yt, xv, yv, sign=a.sign)
            return done(to_exchanged(model, scale_to_norm(d, a.accumulate_norm * ref), params))
        steps = a.trigger_steps if a.trigger_steps is not None else cfg.local_steps
        u = trigger_update(model, params, xt, yt, xv, yv, mode=a.trigger_mode, lr=cfg.lr, steps=steps)
        return done(to_exchanged(model, scale_to_norm(u, a.norm_bound * ref), params))
    if phase == "accumulate":  # data form: train on poisoned copies of the stream batches
        if a.accumulate_against == "crafted":  # the trigger the trigger round will train on, for this model
            xt = perturb_trigger(model, params, xt, yt, xv, yv, eps=a.eps, steps=a.steps, sign=a.sign)
        d = accumulation_direction(model, params, xt, yt, xv, yv, sign=a.sign)
        batches = [(perturb_batch(model, params, x.to(device), y.to(device), xt, yt, xv, yv, eps=a.eps,
                                  steps=a.steps, sign=a.sign, direction=d), y)
                   for x, y in data.batches]
    else:  # the optimised trigger batch, trained on `trigger_steps` times (null: a whole local round)
        x_trig = perturb_trigger(model, params, xt, yt, xv, yv, eps=a.eps, steps=a.steps, sign=a.sign)
        batches = [(x_trig, yt)] * (a.trigger_steps if a.trigger_steps is not None else cfg.local_steps)
    if train_poisoned is None:
        trained, loss = _train_copy(model, batches, cfg, device)
        return done(_flat(trained) - global_flat, loss, trained)
    trained, loss, metrics = train_poisoned(batches, poisoned=True)
    return replace(done(_flat(trained) - global_flat, loss, trained), metrics=metrics)


# ------------------------------------------------------------------------------- stealth

def stealth_step(state: dict | None, accuracy: float, stealth_drop: float | None,
                 server_round: int) -> dict:
    """The stealth rule's state after seeing `accuracy` (held-out accuracy of the received
    global model) in an accumulate round; a pure function of JSON-able values.

    `state` is the previous result (None before the first accumulate round seen). The first
    accuracy seen becomes the `reference`; the rule fires (`stopped` True, `stopped_round` =
    this round) the first time `accuracy < reference - stealth_drop`, and stays fired.
    `stealth_drop` None never fires. `stopped_round` is 0 while not stopped.
    """
    prev = dict(state) if state else {}
    reference = float(prev["reference"]) if "reference" in prev else float(accuracy)
    stopped = bool(prev.get("stopped", False))
    stopped_round = int(prev.get("stopped_round", 0))
    if not stopped and stealth_drop is not None and accuracy < reference - float(stealth_drop):
        stopped, stopped_round = True, int(server_round)
    return {"reference": reference, "accuracy": float(accuracy), "stopped": stopped,
            "stopped_round": stopped_round}


@torch.no_grad()
def heldout_accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> float:
    """Accuracy of `model` (eval mode, restored afterwards) on the batch (x, y)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x.to(device)).argmax(1) == y.to(device)).float().mean())
    finally:
        model.train(was_training)


def stealth_stopped(cfg, context: Context, server_round: int, model: nn.Module, data: AttackData,
                    device: torch.device) -> bool:
    """Apply the stealth rule for this train call (accumulative attack with `stealth_drop`
    set, accumulate rounds only; updates Context.state[STATE_KEY]); whether to reply honestly."""
    a = cfg.attack
    if a.name != "accumulative" or a.stealth_drop is None or attack_plan(cfg).phase(server_round) != "accumulate":
        return False
    record = context.state.config_records.get(STATE_KEY)
    acc = heldout_accuracy(model, data.x_val, data.y_val, device)
    state = stealth_step(dict(record) if record is not None else None, acc, a.stealth_drop, server_round)
    context.state.config_records[STATE_KEY] = ConfigRecord(state)
    return state["stopped"]


def attack_info(context: Context) -> dict:
    """Reply ConfigRecord "info" entries of the stealth rule (empty before it ran): whether
    the client has stopped accumulating and its last held-out accuracy."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return {}
    return {INFO_STOPPED: bool(record["stopped"]), INFO_VAL_ACC: float(record["accuracy"])}


# ------------------------------------------------------------------------------ the reply

def malicious_train(cfg, msg: Message, context: Context, model: nn.Module, partition_id: int,
                    device: torch.device) -> tuple[ArrayRecord, float, int, dict | None]:
    """(reply arrays, train_loss, num-examples, sanitiser METRICS or None) of a malicious
    client for the train `msg`. `model` holds the global weights (on `device`); it is left
    unchanged.

    The data form poisons the client's stream, not its software: with a sanitiser configured
    the poisoned batches go through it (`train_sanitized`) like any client's batches, which
    is the paper's single-learner defense (`num_clients=1`: DSC on the poisoned stream)."""
    data = attacker_data(cfg, context, partition_id)
    num_classes = splits_from_config(cfg).num_classes
    server_round = server_round_of(msg)
    stopped = stealth_stopped(cfg, context, server_round, model, data, device)
    train_poisoned = None
    if cfg.attack.name == "accumulative" and cfg.attack.form == "data" and cfg.sanitizer.name != "none":
        from fedguard.sanitizers import build_sanitizer, train_sanitized  # local: sanitisers load on use

        def train_poisoned(batches, poisoned: bool):
            trained = copy.deepcopy(model)
            truth = [torch.full((len(y),), poisoned) for _, y in batches]  # crafted: every sample
            loss, _, metrics = train_sanitized(build_sanitizer(cfg), trained, batches, truth, context,
                                               server_round, cfg.lr, cfg.momentum, device)
            return trained, loss, metrics
    crafted = craft(cfg, server_round, model, data, device, num_classes, partition_id, stopped, train_poisoned)
    if crafted.trained is not None:
        arrays = model_to_arrays(crafted.trained)
    else:
        global_arrays = model_to_arrays(model)
        arrays = arrays_from_flat(flat_from_arrays(global_arrays) + crafted.update, global_arrays)
    return arrays, crafted.loss, sum(len(y) for _, y in data.batches), crafted.metrics
