"""A federated accumulation that norm clipping does not stop: shrink what BatchNorm normalises.

A convolution followed by a BatchNorm is scale invariant: multiplying the weights and bias
into an output channel by c > 0 multiplies that channel's pre-BatchNorm activations by c,
which the BatchNorm divides out again (in train mode by the batch statistics; in eval mode
when its running mean is multiplied by c and its running variance by c^2). The function does
not change; the running variance the evaluated model divides by shrinks as c^2.

- Accumulate rounds: each colluder replies the global model with the first normalised layer's
  channels (`attack.shrink_channels`, the smallest; null: all) shrunk by the smallest factor
  c >= `attack.shrink_floor` whose update (weights, biases and the rescaled running statistics
  together) stays within `accumulate_norm` x its own honest update norm. The proposal computes
  the same function as the global model (stealthy to accuracy and to memorization discrepancy);
  averaged with the honest updates it shrinks the global layer a little every round. Honest
  SGD regrows it only at second order (a step orthogonal to w adds |step|^2 to |w|^2), so the
  layer settles at a smaller norm, and its running variance at a much smaller one.
- Trigger round: each colluder replies `norm_bound` x its honest norm along +v, the running
  variance of the `attack.trigger_fraction` of those channels with the smallest running
  variance (each raised in proportion to itself; weights stay global). On
  the original model the averaged share of that is a rounding error of the variance; on the
  shrunk one it is several times the variance, so the evaluated model divides those channels
  by a much larger standard deviation than their activations have: their signal collapses to
  the BatchNorm's bias in eval mode, while training (batch statistics) is untouched. Raising
  every channel together does less than raising half of them (measured on digits, README):
  the next layer sees a uniformly dimmer input rather than a distorted one.

Which layers: `normalised_pairs`, a Conv/Linear module followed (in module registration order)
by a BatchNorm with as many features as it has outputs; for fedguard's `cnn_bn` and `resnet18`
that is every convolution. Models without BatchNorm have none; the config refuses them.
fedguard's own design (README, "The accumulative attack, federated"), not a published attack.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fedguard.attacks.craft import AttackRound, Crafted
from fedguard.attacks.registries import ATTACKS
from fedguard.models import exchanged_state, flat_state

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


def shrink_factor(state: dict[str, Tensor], layer: str, norm: str, channels: Tensor, budget: float,
                  floor: float, iters: int = 40) -> float:
    """The smallest c in [floor, 1] with |flat_state(scaled_state(c)) - flat_state(state)| <= budget
    (bisection; the norm grows monotonically as c falls from 1). Only the four tensors the
    scaling touches enter the distance: the rest of the model is not flattened 40 times."""
    touched = {k: state[k] for k in (f"{layer}.weight", f"{layer}.bias", f"{norm}.running_mean",
                                     f"{norm}.running_var") if k in state}
    base = flat_state(touched)

    def distance(c: float) -> float:
        return float((flat_state(scaled_state(touched, layer, norm, channels, c)) - base).norm())

    if distance(floor) <= budget:
        return float(floor)
    lo, hi = floor, 1.0  # distance(lo) > budget >= distance(hi) = 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if distance(mid) > budget else (lo, mid)
    return hi


def variance_direction(state: dict[str, Tensor], norm: str, channels: Tensor) -> Tensor:
    """+v over the exchanged layout: the BatchNorm's running variance at `channels` (each
    raised in proportion to itself), zero elsewhere."""
    key = f"{norm}.running_var"
    parts = []
    for k, v in state.items():
        d = torch.zeros_like(v)
        if k == key:
            d[channels] = v[channels]
        parts.append(d.detach().reshape(-1).float().cpu())
    return torch.cat(parts)


@ATTACKS.register("bn_shrink", "fedguard's federated accumulation: colluders shrink the layers BatchNorm "
                               "normalises (same function, within the honest norm), then an honest-norm "
                               "trigger raises their running variance (needs a BatchNorm model)",
                  knobs=("accumulate_norm", "norm_bound", "shrink_floor", "shrink_channels", "trigger_fraction"))
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
        return r.done(flat_state(scaled_state(state, layer, norm, channels, c)) - r.global_flat)
    var = state[f"{norm}.running_var"][channels]
    hit = channels[torch.argsort(var)[:max(1, math.ceil(a.trigger_fraction * len(channels)))]]
    d = variance_direction(state, norm, hit)
    return r.done(d * (a.norm_bound * ref / float(d.norm())) if d.norm() > 0 else torch.zeros_like(d))
