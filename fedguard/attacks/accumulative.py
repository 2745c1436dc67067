"""The accumulative poisoning attack (Pang et al., NeurIPS 2021) as a malicious client runs it.

The math is in `attacks.objectives`; this module turns it into a round's reply, in two forms,
and keeps the stealth rule. ref = the norm of the update this client would send honestly
this round (a copy of the global model trained on this round's stream batches).

- form=update: accumulate rounds send `accumulate_norm * ref` along `accumulation_direction`
  (sign * grad_w sum_l cos(g_T, g_val)); the trigger round (and later attacking rounds)
  sends `norm_bound * ref` along `trigger_update` (`trigger_mode`, `trigger_steps` steps of
  size `lr`, null: `local_steps`). Buffers (BatchNorm statistics) stay the global ones.
- form=data: the client trains (ordinary local SGD) on poisoned data instead:
  `perturb_batch` copies of its stream batches in accumulate rounds, the `perturb_trigger`
  batch (`trigger_steps` times; null: `local_steps` times) in the trigger round. No norm is
  imposed: a data poisoner controls the data, not the update. With a sanitiser configured
  the poisoned batches go through it (`AttackRound.train_poisoned`).
- stealth (`attack.stealth_drop`, both forms): in each accumulate round the client first
  measures the accuracy of the global model it received on its held-out S_val; the first
  measurement is its reference, and once an accuracy falls more than `stealth_drop` below it
  (`stealth_step`) the client replies honestly for the rest of the accumulate phase. The
  trigger round fires regardless. The reference and the decision live in Context.state
  (ConfigRecord `protocol.ATTACK_STATE`, JSON-able scalars, so virtual clients and resumes
  carry them) and are reported in the reply's ConfigRecord "info" (`attack_info`:
  `attack-stopped`, `attack-val-acc`; clients.jsonl `attack_stopped`, `attack_val_acc`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from torch import Tensor, nn

from fedguard.attacks.craft import AttackData, AttackRound, Crafted, flat_model
from fedguard.attacks.objectives import (
    accumulation_direction,
    model_params,
    perturb_batch,
    perturb_trigger,
    scale_to_norm,
    to_exchanged,
    trigger_update,
)
from fedguard.attacks.plan import ACCUMULATIVE, attack_plan
from fedguard.attacks.registries import ATTACKS
from fedguard.protocol import ATTACK_STATE, ATTACK_STOPPED, ATTACK_STOPPED_ROUND, ATTACK_TRIGGER, ATTACK_VAL_ACC


@ATTACKS.register("accumulative", "Pang et al. 2021: stealthy poisoned rounds that precondition the model, "
                                  "then one trigger (form=update or data)",
                  knobs=("form", "sign", "trigger_mode", "norm_bound", "trigger_steps", "accumulate_norm", "eps",
                         "steps", "per_layer", "accumulate_against", "poison_base", "trigger_batch", "stealth_drop",
                         "budget_action"))
def accumulative(r: AttackRound) -> Crafted:
    a, cfg, model, data, device = r.cfg.attack, r.cfg, r.model, r.data, r.device
    model.eval()  # reference behaviour: BatchNorm on running statistics
    params = model_params(model)
    xt, yt = data.x_trig.to(device), data.y_trig.to(device)
    xv, yv = data.x_val.to(device), data.y_val.to(device)
    ref = float(r.honest_update.norm())
    if a.form == "update":
        if r.phase == "accumulate":
            d = accumulation_direction(model, params, xt, yt, xv, yv, sign=a.sign, per_layer=a.per_layer)
            return r.done(to_exchanged(model, scale_to_norm(d, a.accumulate_norm * ref), params))
        steps = a.trigger_steps if a.trigger_steps is not None else cfg.local_steps
        u = trigger_update(model, params, xt, yt, xv, yv, mode=a.trigger_mode, lr=cfg.lr, steps=steps)
        return r.done(to_exchanged(model, scale_to_norm(u, a.norm_bound * ref), params))
    if a.accumulate_against == "fixed":  # the reference's protocol: one trigger, crafted once, throughout
        x_fixed = fixed_trigger(r, lambda: perturb_trigger(model, params, xt, yt, xv, yv, eps=a.eps, steps=a.steps,
                                                           sign=a.sign, per_layer=a.per_layer))
    if r.phase == "accumulate":  # data form: train on poisoned copies of the stream batches
        if a.accumulate_against == "crafted":  # the trigger the trigger round will train on, for this model
            xt = perturb_trigger(model, params, xt, yt, xv, yv, eps=a.eps, steps=a.steps, sign=a.sign,
                                 per_layer=a.per_layer)
        elif a.accumulate_against == "fixed":
            xt = x_fixed
        d = accumulation_direction(model, params, xt, yt, xv, yv, sign=a.sign, per_layer=a.per_layer)
        base = data.batches if a.poison_base == "stream" else [(data.x_trig, data.y_trig)] * len(data.batches)
        batches = [(perturb_batch(model, params, x.to(device), y.to(device), xt, yt, xv, yv, eps=a.eps,
                                  steps=a.steps, sign=a.sign, per_layer=a.per_layer, direction=d), y)
                   for x, y in base]
    elif a.trigger_batch == "stream":  # the control: the round's clean batches where the trigger would be
        batches = data.batches[:a.trigger_steps] if a.trigger_steps is not None else data.batches
    else:  # the optimised trigger batch, trained on `trigger_steps` times (null: a whole local round)
        x_trig = x_fixed if a.accumulate_against == "fixed" else perturb_trigger(
            model, params, xt, yt, xv, yv, eps=a.eps, steps=a.steps, sign=a.sign, per_layer=a.per_layer)
        batches = [(x_trig, yt)] * (a.trigger_steps if a.trigger_steps is not None else cfg.local_steps)
    if r.train_poisoned is None:
        trained, loss = r.train_copy(batches)
        return r.done(flat_model(trained) - r.global_flat, loss, trained)
    trained, loss, metrics = r.train_poisoned(batches, poisoned=True, buffers=r.buffers)
    return replace(r.done(flat_model(trained) - r.global_flat, loss, trained), metrics=metrics)


def fixed_trigger(r: AttackRound, craft_now) -> Tensor:
    """`accumulate_against=fixed`: the trigger batch crafted once, at the model of the first
    attacking round (`craft_now()`), and kept in Context.state (`protocol.ATTACK_TRIGGER`)
    for the accumulation to align against and the trigger round to train on."""
    record = r.state.array_records.get(ATTACK_TRIGGER) if r.state is not None else None
    if record is not None:
        return torch.from_numpy(record["x"].numpy().copy()).to(r.device)
    x = craft_now().detach()
    if r.state is not None:
        r.state[ATTACK_TRIGGER] = ArrayRecord({"x": Array(x.cpu().numpy())})
    return x


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
                    device: torch.device) -> int:
    """Apply the stealth rule for this train call (accumulative attacks with `stealth_drop`
    set; measured in accumulate rounds only, kept in Context.state[ATTACK_STATE]): the round
    it fired in, 0 while it has not (see `craft.craft` for what that changes)."""
    a = cfg.attack
    if a.name not in ACCUMULATIVE or a.stealth_drop is None:
        return 0
    record = context.state.config_records.get(ATTACK_STATE)
    if attack_plan(cfg).phase(server_round) != "accumulate":
        return int(record["stopped_round"]) if record is not None else 0
    acc = heldout_accuracy(model, data.x_val, data.y_val, device)
    state = stealth_step(dict(record) if record is not None else None, acc, a.stealth_drop, server_round)
    context.state.config_records[ATTACK_STATE] = ConfigRecord(state)
    return state["stopped_round"]


def attack_info(context: Context) -> dict:
    """Reply ConfigRecord "info" entries of the stealth rule (empty before it ran): whether
    the client has stopped accumulating, in which round, and its last held-out accuracy."""
    record = context.state.config_records.get(ATTACK_STATE)
    if record is None:
        return {}
    return {ATTACK_STOPPED: bool(record["stopped"]), ATTACK_STOPPED_ROUND: int(record["stopped_round"]),
            ATTACK_VAL_ACC: float(record["accuracy"])}
