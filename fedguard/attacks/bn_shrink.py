"""A federated accumulation that norm clipping does not stop: shrink what BatchNorm normalises.

A convolution (or linear layer) followed by a BatchNorm is scale invariant: multiplying its
weight and bias by c > 0 multiplies the pre-BatchNorm activations by c, which the BatchNorm
divides out again (in train mode by the batch statistics; in eval mode when its running mean
is multiplied by c and its running variance by c^2). So the model's function does not change,
but the layer's norm does, and an update of a given norm turns a layer of small norm much
further than a large one (the effective step of a scale-invariant layer grows as 1/|w|^2).

- Accumulate rounds: each colluder replies the global model with every normalised layer shrunk
  by the smallest factor c >= `attack.shrink_floor` whose update (weights, biases and the
  rescaled running statistics together) stays within `accumulate_norm` x its own honest update
  norm. The proposal computes the same function as the global model, so it is stealthy to
  accuracy and to memorization discrepancy alike; averaged with the honest updates it shrinks
  the global layers a little every round, and honest SGD barely regrows them.
- Trigger round: each colluder replies `norm_bound` x its honest norm along -W (W: the
  normalised layers' weights and biases, flat; buffers stay global). On the original model this
  is one more harmless shrink; once the accumulation has made |W| smaller than the colluders'
  share of the averaged update it overshoots through zero and flips the sign of every
  normalised layer's input, which the model cannot survive.

Which layers: `normalised_pairs`, a Conv/Linear module followed (in module registration order)
by a BatchNorm with as many features as it has outputs; for fedguard's `cnn_bn` and `resnet18`
that is every convolution. Models without BatchNorm have none; the config refuses them.
fedguard's own design (README, "The accumulative attack, federated"), not a published attack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.registries import ATTACKS
from fedguard.models import exchanged_state

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def normalised_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) for every Conv/Linear whose next module (registration
    order, containers skipped) is a BatchNorm over its outputs."""
    leaves = [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS + _NORMS)]
    pairs = []
    for (name, m), (next_name, nxt) in zip(leaves, leaves[1:]):
        out = m.out_channels if isinstance(m, _LAYERS[:3]) else getattr(m, "out_features", None)
        if isinstance(m, _LAYERS) and isinstance(nxt, _NORMS) and nxt.num_features == out:
            pairs.append((name, next_name))
    return pairs


def channel_norms(state: dict[str, Tensor], layer: str) -> Tensor:
    """Per output channel: the norm of the layer's weights and bias into that channel."""
    w = state[f"{layer}.weight"].reshape(state[f"{layer}.weight"].shape[0], -1)
    b = state.get(f"{layer}.bias")
    return torch.cat([w, b.reshape(-1, 1)], 1).norm(dim=1) if b is not None else w.norm(dim=1)


def scaled_state(state: dict[str, Tensor], layer: str, norm: str, channels: Tensor, c: float
                 ) -> dict[str, Tensor]:
    """`state` (exchanged_state) with the layer's weights and bias into `channels` times c, and
    its BatchNorm's running mean there times c and running variance times c^2: the same function."""
    out = dict(state)
    for key, factor in ((f"{layer}.weight", c), (f"{layer}.bias", c),
                        (f"{norm}.running_mean", c), (f"{norm}.running_var", c * c)):
        if key in out:
            t = out[key].clone()
            t[channels] = t[channels] * factor
            out[key] = t
    return out


def flat(state: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.detach().reshape(-1).float().cpu() for v in state.values()])


def shrink_factor(state: dict[str, Tensor], layer: str, norm: str, channels: Tensor, budget: float,
                  floor: float, iters: int = 40) -> float:
    """The smallest c in [floor, 1] with |flat(scaled_state(c)) - flat(state)| <= budget
    (bisection; the norm grows monotonically as c falls from 1)."""
    base = flat(state)

    def distance(c: float) -> float:
        return float((flat(scaled_state(state, layer, norm, channels, c)) - base).norm())

    if distance(floor) <= budget:
        return float(floor)
    lo, hi = floor, 1.0  # distance(lo) > budget >= distance(hi) = 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if distance(mid) > budget else (lo, mid)
    return hi


def trigger_direction(model: nn.Module, layer: str, channels: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The ascent direction of the cross-entropy on (x, y), the model in eval mode (running
    statistics, as the server evaluates it), restricted to the layer's weights and bias into
    `channels`; flat over the exchanged layout, zero elsewhere."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        nn.functional.cross_entropy(model(x), y).backward()
        grads = {f"{layer}.{p}": getattr(model.get_submodule(layer), p).grad for p in ("weight", "bias")}
    finally:
        model.train(was_training)
    parts = []
    for key, v in exchanged_state(model).items():
        g = grads.get(key)
        d = torch.zeros_like(v)
        if g is not None:
            d[channels] = g[channels]
        parts.append(d.detach().reshape(-1).float().cpu())
    model.zero_grad(set_to_none=True)
    return torch.cat(parts)


@ATTACKS.register("bn_shrink", "fedguard's federated accumulation: colluders shrink the layers BatchNorm "
                               "normalises (same function, within the honest norm), then an honest-norm "
                               "trigger along -W flips them (needs a BatchNorm model)",
                  knobs=("accumulate_norm", "norm_bound", "shrink_floor", "shrink_channels"))
def bn_shrink(r: AttackRound) -> Crafted:
    a = r.cfg.attack
    state = exchanged_state(r.model)
    layer, norm = normalised_pairs(r.model)[0]
    norms = channel_norms(state, layer)
    k = a.shrink_channels if a.shrink_channels is not None else len(norms)
    channels = torch.argsort(norms)[:k]  # the smallest: the ones the accumulation has shrunk so far
    ref = float(r.honest_update.norm())
    if r.phase == "accumulate":
        c = shrink_factor(state, layer, norm, channels, a.accumulate_norm * ref, a.shrink_floor)
        return r.done(flat(scaled_state(state, layer, norm, channels, c)) - r.global_flat)
    d = trigger_direction(r.model, layer, channels, r.data.x_val.to(r.device), r.data.y_val.to(r.device))
    return r.done(d * (a.norm_bound * ref / float(d.norm())) if d.norm() > 0 else torch.zeros_like(d))
