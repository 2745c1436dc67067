"""The malicious client's update for a round: what every attack gets and gives back.

`craft` follows the schedule of `AttackPlan` (built from `cfg.attack`): in rounds where the
plan says it is not attacking (burn-in, and after the trigger when `honest_after`) the client
trains honestly. In an attacking round it looks `attack.name` up in `ATTACKS` and calls the
registered function with an `AttackRound` (the config, the round, the global model, the
attacker's data, its honest update); the function returns a `Crafted`.

Replies are of the form global + update, flat over `models.exchanged_state`. The reply keeps
the honest format and metrics keys (Flower needs identical MetricRecord keys across replies):
`loss` is the loss of what the client trained on (its honest copy for the update attacks, the
flipped or poisoned batches for label_flip, backdoor and the data form).

A new client-side attack is one function `f(r: AttackRound) -> Crafted`, registered with
`@ATTACKS.register(name, summary)` in its own module under `fedguard/attacks/` (imported by the
package's `__init__`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from flwr.app import RecordDict
from torch import Tensor, nn

from fedguard.attacks.plan import attack_plan
from fedguard.attacks.registries import ATTACKS
from fedguard.models import flat_from_arrays, model_to_arrays, param_mask
from fedguard.training import load_momentum, save_momentum, sgd_steps


@dataclass
class AttackData:
    """The attacker's data for one round (`attacks.client.attacker_data`)."""
    batches: list[tuple[Tensor, Tensor]]  # this round's stream batches (held-out excluded)
    x_val: Tensor  # held-out validation batch S_val
    y_val: Tensor
    x_trig: Tensor  # trigger batch S_T (from the training indices, fixed over the run)
    y_trig: Tensor
    train_indices: np.ndarray  # pool indices of the training stream
    val_indices: np.ndarray  # pool indices of S_val
    batch_indices: list[np.ndarray]  # pool indices of `batches`


@dataclass
class Crafted:
    update: Tensor  # flat over exchanged_state: the reply is global + update
    honest_update: Tensor  # what this client would have sent honestly this round
    loss: float  # train_loss to report
    phase: str
    attacking: bool
    trained: nn.Module | None = None  # when the reply is a trained model: reply it exactly
    metrics: dict | None = None  # data form: the sanitiser's METRICS of its training (None: no sanitiser ran)


def flat_model(model: nn.Module) -> Tensor:
    """The model flat over `exchanged_state` (the ArrayRecord layout)."""
    return flat_from_arrays(model_to_arrays(model))


def train_copy(model: nn.Module, batches, cfg, device, buffers: list | None = None) -> tuple[nn.Module, float]:
    """(a copy of `model` after local SGD on `batches`, its mean loss); `model` is left unchanged.
    `buffers`: the momentum state carried between rounds (`training.sgd_steps`), updated."""
    trained = copy.deepcopy(model)
    loss = sgd_steps(trained, batches, cfg.lr, cfg.momentum, device, buffers=buffers)
    return trained, loss


# train_poisoned(batches, poisoned, buffers=None) -> (trained copy, loss, sanitiser METRICS); see `craft`
TrainPoisoned = Callable[..., tuple[nn.Module, float, dict]]


@dataclass
class AttackRound:
    """What a registered attack gets in an attacking round."""
    cfg: object  # the run config (`cfg.attack` holds the attack's knobs)
    server_round: int
    model: nn.Module  # the global weights, on `device`; leave them unchanged
    data: AttackData
    device: torch.device
    num_classes: int
    partition_id: int
    phase: str  # the plan's phase of `server_round`
    global_flat: Tensor  # `model` flat over exchanged_state
    honest: nn.Module  # a copy of the global model trained on this round's stream batches
    honest_update: Tensor  # honest - global, flat
    honest_loss: float
    mask: Tensor  # `param_mask(model)`
    train_poisoned: TrainPoisoned | None = None  # data form with a sanitiser (see `craft`)
    state: RecordDict | None = None  # the client's Context.state (what an attack keeps across rounds)
    buffers: list | None = None  # keep_momentum: the learner's momentum, advanced by train_copy

    def done(self, update: Tensor, loss: float | None = None, trained: nn.Module | None = None) -> Crafted:
        """The `Crafted` of this round (`loss` defaults to the honest loss)."""
        return Crafted(update, self.honest_update, float(self.honest_loss if loss is None else loss),
                       self.phase, True, trained)

    def train_copy(self, batches) -> tuple[nn.Module, float]:
        """`train_copy` of the global model on `batches` with the run's lr and momentum (and,
        with `keep_momentum`, the learner's momentum carried from its earlier rounds)."""
        return train_copy(self.model, batches, self.cfg, self.device, self.buffers)


def craft(cfg, server_round: int, model: nn.Module, data: AttackData, device: torch.device,
          num_classes: int, partition_id: int = 0, stopped: int = 0,
          train_poisoned: TrainPoisoned | None = None, state: RecordDict | None = None) -> Crafted:
    """The malicious client's update for `server_round`. `model` holds the global weights
    on `device` and is left unchanged. `stopped`: the round the stealth rule fired in (0: it
    has not; see `attacks.accumulative.stealth_step`): it makes the accumulate rounds honest,
    or with `attack.budget_action=trigger` fires the trigger in that round (then honest).
    `train_poisoned(batches, poisoned) -> (trained copy, loss, metrics)`, given for the data
    form with a sanitiser, trains the client's batches (the poisoned ones, and the clean ones
    of its honest rounds) through it; without it the data form trains by plain local SGD.
    `state` is the client's Context.state; with `keep_momentum` the momentum of the
    training the reply comes from is kept there between rounds (one optimizer over the run)."""
    plan = attack_plan(cfg)
    phase, attacking = plan.phase(server_round), plan.attacking(server_round)
    if stopped:  # the stealth rule fired in round `stopped` (accumulative attacks)
        early_trigger = cfg.attack.budget_action == "trigger"
        if early_trigger and server_round == stopped and phase == "accumulate":
            phase = "trigger"  # the error budget is spent: fire the trigger now
        elif phase == "accumulate" or (early_trigger and phase == "trigger"):
            attacking = False
    global_flat = flat_model(model)
    buffers = load_momentum(state, model) if cfg.keep_momentum else None
    if not attacking and train_poisoned is not None:  # a sanitising learner: every batch through its sanitiser
        trained, loss, metrics = train_poisoned(data.batches, poisoned=False, buffers=buffers)
        crafted = Crafted(flat_model(trained) - global_flat, flat_model(trained) - global_flat, float(loss), phase,
                          attacking, trained, metrics)
    else:
        # in an attacking round the honest copy is only a reference: it does not advance the momentum
        honest_buffers = list(buffers) if buffers is not None and attacking else buffers
        honest, honest_loss = train_copy(model, data.batches, cfg, device, honest_buffers)
        honest_update = flat_model(honest) - global_flat
        if not attacking:
            crafted = Crafted(honest_update, honest_update, float(honest_loss), phase, attacking, honest)
        else:
            attack = ATTACKS.get(cfg.attack.name)  # filled by the package: `import fedguard.attacks` imports them all
            crafted = attack(AttackRound(cfg, server_round, model, data, device, num_classes, partition_id, phase,
                                         global_flat, honest, honest_update, honest_loss, param_mask(model),
                                         train_poisoned, state, buffers))
    if buffers is not None and state is not None:
        save_momentum(state, buffers)
    return crafted
