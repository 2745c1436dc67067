"""Memorization discrepancy (Zhu et al., ICML 2023): per sample x,
`MD(x) = KL(p_hist(x) || p_model(x))`, p = softmax(logits), no temperature, the historical
model being the reference distribution. The paper scores a batch by the mean over samples;
these functions return per-sample values and leave the reduction to the caller.

Models travel as flat float vectors laid out in `exchanged_state(model)` order (floating-point
parameters and buffers, e.g. BatchNorm running statistics). Models are evaluated in eval mode
(running statistics, no dropout) and without autograd.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedguard.models import exchanged_state


def md_per_sample(logits_hist: Tensor, logits_model: Tensor) -> Tensor:
    """`sum_c p_hist[c] * (log p_hist[c] - log p_model[c])` per row of `[N, C]` logits -> `[N]`.

    Computed from log_softmax (stable for large logits), in float32 at least, clamped at 0
    (KL is non-negative; rounding can give -1e-9).
    """
    dtype = torch.promote_types(logits_hist.dtype, torch.float32)
    log_h = F.log_softmax(logits_hist.to(dtype), dim=-1)
    log_m = F.log_softmax(logits_model.to(dtype), dim=-1)
    return (log_h.exp() * (log_h - log_m)).sum(dim=-1).clamp_min(0.0)


def unflatten_state(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split a flat vector into the model's exchanged tensors (names, shapes, dtype, device).

    Works inside `vmap` (slicing and reshaping only). Raises ValueError on a length mismatch.
    """
    state = exchanged_state(model)
    total = sum(v.numel() for v in state.values())
    if flat.shape[-1] != total:
        raise ValueError(f"flat vector has {flat.shape[-1]} values, the model exchanges {total}")
    out, offset = {}, 0
    for name, ref in state.items():
        n = ref.numel()
        out[name] = flat[offset:offset + n].reshape(ref.shape).to(dtype=ref.dtype, device=ref.device)
        offset += n
    return out


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts a module in eval mode and restores each submodule's previous flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _logits(model: nn.Module, flat: Tensor, x: Tensor) -> Tensor:
    return functional_call(model, unflatten_state(model, flat), (x,))


def reference_logits(model: nn.Module, params_hist: Tensor, x: Tensor) -> Tensor:
    """Logits `[N, C]` of the historical model on `x` (eval mode, no autograd): computed once
    and shared by every `md_against` call that scores candidates against that model on `x`."""
    with torch.no_grad(), _eval_mode(model):
        return _logits(model, params_hist, x)


def md_against(model: nn.Module, logits_hist: Tensor, stacked_params: Tensor, x: Tensor,
               chunk_size: int | None = None) -> Tensor:
    """Per-sample MD `[K, N]` of K candidates (rows of `stacked_params`, `[K, P]`) against a
    historical model given by its logits on `x`, in one `vmap`-ed `functional_call` over the
    candidates. `chunk_size` evaluates that many candidates at a time (peak activation memory
    ~ chunk_size x one forward pass on x); None = all at once."""
    if stacked_params.dim() != 2:
        raise ValueError(f"stacked_params must be [K, P], got shape {tuple(stacked_params.shape)}")
    with torch.no_grad(), _eval_mode(model):

        def one(flat: Tensor) -> Tensor:
            return md_per_sample(logits_hist, _logits(model, flat, x))

        return vmap(one, chunk_size=chunk_size)(stacked_params)


def batched_md(model: nn.Module, params_hist: Tensor, stacked_params: Tensor, x: Tensor,
               chunk_size: int | None = None) -> Tensor:
    """Per-sample MD `[K, N]` of K candidates against flat `params_hist` (`[P]`): the
    historical logits once, then `md_against`."""
    return md_against(model, reference_logits(model, params_hist, x), stacked_params, x, chunk_size)
