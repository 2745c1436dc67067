"""Objectives of the accumulative poisoning attack (Pang et al., NeurIPS 2021), in plain torch.

Conventions
-----------
- `params` is a dict name -> tensor of (a subset of) `model.named_parameters()`; missing
  names, and all buffers (BatchNorm running statistics), come from `model` itself
  (`torch.func.functional_call`). `model_params(model)` gives detached copies.
- The model's mode is respected: call `model.eval()` first for the reference behaviour
  (BatchNorm on running statistics). In train mode buffers are passed as copies, so the
  model is never mutated by these functions.
- Flat vectors are the concatenation of the `params` tensors, flattened, in dict order.
  `to_exchanged` turns a flat parameter update into one over `models.exchanged_state`
  (zeros for buffers), the layout of `models.flat_from_arrays`.
- Losses are the mean cross-entropy of a batch; inputs float in [0,1], shape (N, C, H, W).

The attack in one paragraph: let g_T = grad L(S_T) (trigger batch) and g_V = grad L(S_val)
(the attacker's validation batch). A trigger step w <- w - lr*g_T changes the validation loss
by about -lr*<g_T, g_V>; when g_T and g_V point apart, training on the trigger *raises* the
validation loss. The accumulative phase therefore moves the weights along
-grad_w A(w), A = sum_layers cos(g_T, g_V) (`accumulation_direction` with sign=-1), in small
norm-bounded steps, and the trigger round sends the SGD step on S_T (`trigger_update`).
The reference federated code also has the mirrored pairing (sign=+1 with an ascent step on
the trigger loss, mode "reverse").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from fedguard.models import exchanged_state

Params = dict[str, Tensor]
TriggerMode = Literal["sgd", "reverse", "val_ascent"]

_TINY = 1e-24  # under the square root of norms: keeps second derivatives finite at zero gradients


# ---------------------------------------------------------------------------- flat helpers

def model_params(model: nn.Module) -> Params:
    """Detached copies of the model's trainable parameters, in `named_parameters` order."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Params) -> Params:
    """Split `flat` into tensors shaped like `like`'s values (same keys, same order)."""
    out, offset = {}, 0
    for k, t in like.items():
        out[k] = flat[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, params have {offset}")
    return out


def to_exchanged(model: nn.Module, update: Tensor, like: Params | None = None) -> Tensor:
    """A flat update over `like` (default: all parameters) as a flat float32 vector over
    `exchanged_state(model)` (parameters and float buffers, the ArrayRecord layout), with
    zeros where `like` has no entry (buffers, frozen parameters)."""
    parts = unflatten(update, like if like is not None else model_params(model))
    return torch.cat([parts[k].detach().reshape(-1).float().cpu() if k in parts
                      else torch.zeros(v.numel()) for k, v in exchanged_state(model).items()])


def scale_to_norm(update: Tensor, target_norm: float) -> Tensor:
    """`update` rescaled to L2 norm `target_norm` (a zero update stays zero)."""
    norm = update.norm()
    if norm <= 0:
        return torch.zeros_like(update)
    return update * (target_norm / norm)


# ------------------------------------------------------------------------ losses, gradients

def _leaves(params: Params) -> Params:
    """Params usable as differentiation variables: kept if they already require grad
    (so callers can differentiate through), else detached copies that do."""
    return {k: p if p.requires_grad else p.detach().requires_grad_(True) for k, p in params.items()}


def loss_at(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of `model` with `params` substituted, on the batch (x, y)."""
    buffers = {k: (b.clone() if model.training else b) for k, b in model.named_buffers()}
    return F.cross_entropy(functional_call(model, {**buffers, **params}, (x,)), y)


def param_grads(model: nn.Module, params: Params, x: Tensor, y: Tensor,
                create_graph: bool = False) -> tuple[Tensor, ...]:
    """grad_params CE(x, y), one tensor per entry of `params` (zeros for unused ones).

    With `create_graph=True` the result is differentiable w.r.t. `params` (if they require
    grad) and `x` (if it requires grad): the building block of every second-order objective.
    """
    ps = _leaves(params)
    loss = loss_at(model, ps, x, y)
    return torch.autograd.grad(loss, list(ps.values()), create_graph=create_graph,
                               allow_unused=True, materialize_grads=True)


def _norm(t: Tensor) -> Tensor:
    return torch.sqrt((t * t).sum() + _TINY)


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum() / (_norm(a) * _norm(b))


def cos_sum(grads_a: Iterable[Tensor], grads_b: Iterable[Tensor], per_layer: bool = True) -> Tensor:
    """sum over tensors of cos(a_l, b_l) (per_layer), or cos of the concatenations."""
    grads_a, grads_b = list(grads_a), list(grads_b)
    if not per_layer:
        return _cos(flatten(grads_a), flatten(grads_b))
    return torch.stack([_cos(a, b) for a, b in zip(grads_a, grads_b, strict=True)]).sum()


# -------------------------------------------------------------------------------- objectives

def alignment(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
              x_val: Tensor, y_val: Tensor, per_layer: bool = True) -> Tensor:
    """A(w) = sum over parameter tensors l of cos(grad_l L(S_T), grad_l L(S_val)).

    Both gradients are built with `create_graph=True`, so A is differentiable (second order)
    w.r.t. `params` when they require grad, and w.r.t. `x_trig` when it requires grad.
    `per_layer=False` gives the single cosine of the full gradients (the reference's
    federated variant). Range: [-n_layers, n_layers].
    """
    ps = _leaves(params)
    g_trig = param_grads(model, ps, x_trig, y_trig, create_graph=True)
    g_val = param_grads(model, ps, x_val, y_val, create_graph=True)
    return cos_sum(g_trig, g_val, per_layer)


def alignment_grad(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
                   x_val: Tensor, y_val: Tensor, per_layer: bool = True) -> tuple[Tensor, Tensor]:
    """(A(w) detached, flat grad_w A(w)): the second-order gradient (Hessian-vector products)."""
    ps = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    value = alignment(model, ps, x_trig, y_trig, x_val, y_val, per_layer)
    grads = torch.autograd.grad(value, list(ps.values()), allow_unused=True, materialize_grads=True)
    return value.detach(), flatten(grads)


def accumulation_direction(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
                           x_val: Tensor, y_val: Tensor, sign: int = -1, per_layer: bool = True) -> Tensor:
    """The poisoner's update direction d = sign * grad_w A(w), a flat vector over `params`.

    Convention: the weights are moved by *adding* d, w <- w + lam * d with lam > 0, so that
    A(w + lam*d) ~= A(w) + lam * sign * |grad A|^2: sign=-1 (default, the paper's online form)
    lowers the trigger/validation alignment, which makes the later SGD trigger step
    (`trigger_update(mode="sgd")`) raise the validation loss; sign=+1 raises it (pair with
    mode="reverse"). A malicious client sends `global + scale_to_norm(d, accumulate_norm)`.
    """
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or +1, got {sign}")
    return sign * alignment_grad(model, params, x_trig, y_trig, x_val, y_val, per_layer)[1]


def lookahead_objective(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
                        x_val: Tensor, y_val: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """(J(w) detached, flat grad_w J(w)) with J(w) = L_val(w - eta * grad L(S_T)(w)).

    J is the attacker's validation loss right after a simulated SGD trigger step of size
    `eta`; the attacker wants it high, so its update direction is +grad J (add it to the
    weights). To first order J ~= L_val(w) - eta <g_T, g_V>: the unnormalised cousin of
    lowering the alignment. The gradient goes through the inner step (second order).
    """
    ps = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    g_trig = param_grads(model, ps, x_trig, y_trig, create_graph=True)
    stepped = {k: p - eta * g for (k, p), g in zip(ps.items(), g_trig)}
    value = loss_at(model, stepped, x_val, y_val)
    grads = torch.autograd.grad(value, list(ps.values()), allow_unused=True, materialize_grads=True)
    return value.detach(), flatten(grads)


def trigger_update(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
                   x_val: Tensor | None = None, y_val: Tensor | None = None,
                   mode: TriggerMode = "sgd", lr: float = 0.1, steps: int = 1) -> Tensor:
    """The trigger round's update, w_final - w, as a flat vector over `params`.

    - "sgd": `steps` plain SGD steps of size `lr` on the trigger batch (what an honest
      client training on S_T would send; pairs with accumulation sign=-1).
    - "reverse": `steps` ascent steps on the trigger-batch loss (pairs with sign=+1).
    - "val_ascent": `steps` ascent steps on the attacker's validation loss (the direct
      attack, needs x_val/y_val).
    Scale the result with `scale_to_norm` when a norm bound applies.
    """
    if mode == "val_ascent":
        if x_val is None or y_val is None:
            raise ValueError("mode='val_ascent' needs x_val and y_val")
        x, y, factor = x_val, y_val, lr
    elif mode in ("sgd", "reverse"):
        x, y, factor = x_trig, y_trig, (-lr if mode == "sgd" else lr)
    else:
        raise ValueError(f"unknown trigger mode {mode!r}; allowed: sgd, reverse, val_ascent")
    start = {k: p.detach() for k, p in params.items()}
    current = dict(start)
    for _ in range(steps):
        grads = param_grads(model, current, x, y)
        current = {k: p + factor * g for (k, p), g in zip(current.items(), grads)}
    return flatten(current[k] - start[k] for k in start)


# ------------------------------------------------------------------------------- data form

def signed_steps(x: Tensor, objective, eps: float, step: float, steps: int, ascend: bool) -> Tensor:
    """`steps` signed-gradient steps on `objective(x_adv)`, projected to the L-inf ball of
    radius `eps` around `x` and to [0, 1]."""
    x0 = x.detach()
    x_adv = x0.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(objective(x_adv), x_adv)
        moved = x_adv.detach() + (step if ascend else -step) * g.sign()
        x_adv = torch.clamp(torch.min(torch.max(moved, x0 - eps), x0 + eps), 0.0, 1.0)
    return x_adv.detach()


def perturb_batch(model: nn.Module, params: Params, x: Tensor, y: Tensor,
                  x_trig: Tensor, y_trig: Tensor, x_val: Tensor, y_val: Tensor,
                  eps: float, step: float | None = None, steps: int = 2, gamma: float = 1.0,
                  sign: int = -1, per_layer: bool = True, direction: Tensor | None = None) -> Tensor:
    """The accumulative phase in data form: a poisoned copy x' of the clean batch (x, y).

    A victim trains on (x', y) with w <- w - lr*g(x'), g(x') = grad_w L(x', y). For that step
    to follow the poisoner's direction d = `accumulation_direction(..., sign)` we need g(x')
    to point along -d. Per parameter tensor l we therefore *maximise*

        J(x') = sum_l < g_l(x')/|g_l(x')| ,  normalize(-d_l) + gamma * normalize(g_l(x)) >

    i.e. sum_l cos(g_l(x'), -d_l) + gamma * cos(g_l(x'), g_l(x)) (the reference's "reg"
    variant: the second term keeps the poisoned gradient close to the clean one, for
    stealth), by `steps` signed-gradient ascent steps of size `step` (default 2*eps/steps),
    projected to |x' - x|_inf <= eps and [0,1]. Labels are kept. d is computed once (pass a
    precomputed `direction` to reuse it across batches); each step costs one
    double-backward through the model on the batch.
    """
    if direction is None:
        direction = accumulation_direction(model, params, x_trig, y_trig, x_val, y_val, sign, per_layer)
    step = 2.0 * eps / steps if step is None else step
    fixed = {k: p.detach() for k, p in params.items()}
    target = unflatten(-direction.detach(), fixed)
    clean = param_grads(model, fixed, x, y)
    if per_layer:
        goals = [_unit(target[k]) + gamma * _unit(c) for k, c in zip(fixed, clean)]
    else:
        goals = [_unit(flatten(target.values())) + gamma * _unit(flatten(clean))]

    def objective(x_adv: Tensor) -> Tensor:
        g_adv = param_grads(model, fixed, x_adv, y, create_graph=True)
        g_adv = g_adv if per_layer else (flatten(g_adv),)
        return torch.stack([(_unit(g) * goal).sum() for g, goal in zip(g_adv, goals)]).sum()

    return signed_steps(x, objective, eps, step, steps, ascend=True)


def perturb_trigger(model: nn.Module, params: Params, x_trig: Tensor, y_trig: Tensor,
                    x_val: Tensor, y_val: Tensor, eps: float, step: float | None = None,
                    steps: int = 2, sign: int = -1, per_layer: bool = True) -> Tensor:
    """The optimised trigger batch: signed-gradient steps on the trigger inputs that move the
    alignment A (see `alignment`) in the direction `sign` (default -1: lower it, so the SGD
    step on the trigger works against the validation loss), within the L-inf `eps` ball
    and [0,1]. Labels are kept."""
    fixed = {k: p.detach() for k, p in params.items()}
    g_val = [g.detach() for g in param_grads(model, fixed, x_val, y_val)]
    step = 2.0 * eps / steps if step is None else step

    def objective(x_adv: Tensor) -> Tensor:
        return cos_sum(param_grads(model, fixed, x_adv, y_trig, create_graph=True), g_val, per_layer)

    return signed_steps(x_trig, objective, eps, step, steps, ascend=sign > 0)


def _unit(t: Tensor) -> Tensor:
    return t / _norm(t)

