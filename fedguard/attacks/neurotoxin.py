"""Neurotoxin (Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022):
a backdoor confined to the coordinates the benign clients change least, so that their later
updates do not overwrite it.

The paper takes the benign gradient from the last global update; here the attacker's own
honest update of the round stands for it (what it would send this round). With r that update
on the parameters, the attacker masks out the top-k coordinates by |r| (k = floor(topk * d),
d the number of parameter coordinates, `attack.neurotoxin_topk`; the paper's top-k%) and trains
on its backdoored batches (the backdoor attack's trigger, target_label and poison_fraction) by
projected SGD: every gradient is multiplied by the mask before the optimiser step, so the
masked coordinates keep the global values (momentum included: it only ever sees masked
gradients). BatchNorm statistics are the trained ones. ASR is recorded like the backdoor's.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from fedguard.attacks.backdoor import poisoned_batches, trigger_from_config
from fedguard.attacks.craft import AttackRound, Crafted, flat_model
from fedguard.attacks.registries import ATTACKS
from fedguard.models import exchanged_state
from fedguard.training import sgd_steps


def neurotoxin_keep(reference: Tensor, topk: float) -> Tensor:
    """True at the coordinates of `reference` (1-D) that training may change: all but the
    floor(topk * d) largest |reference| (ties: `torch.topk`'s pick)."""
    if not 0.0 <= topk < 1.0:
        raise ValueError(f"topk must be in [0, 1), got {topk}")
    keep = torch.ones(reference.numel(), dtype=torch.bool)
    k = int(topk * reference.numel())
    if k:
        keep[torch.topk(reference.abs().flatten(), k).indices] = False
    return keep


def parameter_masks(model: nn.Module, keep_flat: Tensor) -> dict[str, Tensor]:
    """Split a mask over the exchanged flat layout into one mask per parameter (by name)."""
    params = dict(model.named_parameters())
    out, offset = {}, 0
    for name, value in exchanged_state(model).items():
        n = value.numel()
        if name in params:
            out[name] = keep_flat[offset:offset + n].reshape(value.shape)
        offset += n
    if offset != keep_flat.numel():
        raise ValueError(f"mask has {keep_flat.numel()} entries, the model exchanges {offset}")
    return out


def projected_sgd(model: nn.Module, batches, keep: dict[str, Tensor], lr: float, momentum: float,
                  device: torch.device, buffers: list | None = None) -> float:
    """`training.sgd_steps` with every parameter's gradient multiplied by its mask (in place on
    `model`); returns the mean loss."""
    hooks = [p.register_hook(lambda g, m=keep[name].to(p.device, p.dtype): g * m)
             for name, p in model.named_parameters() if name in keep]
    try:
        return sgd_steps(model, batches, lr, momentum, device, buffers=buffers)
    finally:
        for h in hooks:
            h.remove()


@ATTACKS.register("neurotoxin", "Zhang et al. 2022: the backdoor trained only on the coordinates its honest update "
                                "changes least (top neurotoxin_topk masked out)",
                  knobs=("neurotoxin_topk", "target_label", "poison_fraction", "trigger_type", "patch_size",
                         "blend_alpha"))
def neurotoxin(r: AttackRound) -> Crafted:
    keep_flat = torch.ones(r.global_flat.numel(), dtype=torch.bool)
    keep_flat[r.mask] = neurotoxin_keep(r.honest_update[r.mask], float(r.cfg.attack.neurotoxin_topk))
    trained = copy.deepcopy(r.model)
    loss = projected_sgd(trained, poisoned_batches(r, trigger_from_config(r.cfg)), parameter_masks(trained, keep_flat),
                         r.cfg.lr, r.cfg.momentum, r.device, r.buffers)
    return r.done(flat_model(trained) - r.global_flat, loss, trained)
