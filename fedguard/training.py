"""The local training loop (plain torch); the server's evaluation is in `fedguard.evaluation`."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn
from torch.nn import functional as F

from fedguard.protocol import MOMENTUM


def sgd_steps(model: nn.Module, batches, lr: float, momentum: float, device: torch.device,
              prepare=None, buffers: list | None = None) -> float:
    """One SGD step per (x, y) batch; returns the mean training loss (nan without a step).

    `buffers`, when given, is the optimizer's momentum state carried between calls (one
    entry per parameter, None before its first step): loaded before the steps and replaced
    by the state after them, so successive calls are one SGD optimizer (an online learner).
    Without it every call starts a fresh optimizer.

    `prepare(model, i, x, y) -> (x, y)`, when given, transforms batch `i` (already on `device`)
    right before its step, with the model as it is then (an online sanitiser, e.g. DSC; it
    must leave the model in train mode); an empty result skips the step.
    """
    model.train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    if buffers:
        for p, buf in zip(params, buffers):
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.to(p.device).clone()
    losses = []
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if prepare is not None:
            x, y = prepare(model, i, x, y)
            if len(y) == 0:
                continue
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if buffers is not None:
        buffers[:] = [opt.state[p].get("momentum_buffer") for p in params]
    return float(np.mean(losses)) if losses else float("nan")


def pretrain(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, momentum: float,
             batch_size: int, seed: int, device: torch.device) -> None:
    """Central SGD on (x, y) for `epochs` epochs (one optimizer, batches of a seeded shuffle per
    epoch; the last partial batch is kept): the burned-in initial model of `pretrain_epochs`."""
    rng = np.random.default_rng([int(seed), 0x70726574])  # "pret"
    model.to(device)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        batches += [(torch.from_numpy(x[order[i:i + batch_size]]), torch.from_numpy(y[order[i:i + batch_size]]))
                    for i in range(0, len(y), batch_size)]
    sgd_steps(model, batches, lr, momentum, device)
    model.cpu()


def load_momentum(state: RecordDict | None, model: nn.Module) -> list:
    """`keep_momentum`: the client's SGD momentum buffers kept in Context.state (one per
    parameter, None before its first step; all None at the first round): `sgd_steps`' `buffers`."""
    record = state.array_records.get(MOMENTUM) if state is not None else None
    n = len(list(model.parameters()))
    if record is None:
        return [None] * n
    return [torch.from_numpy(record[str(i)].numpy().copy()) if str(i) in record else None for i in range(n)]


def save_momentum(state: RecordDict, buffers: list) -> None:
    state[MOMENTUM] = ArrayRecord({str(i): Array(b.detach().cpu().numpy())
                                   for i, b in enumerate(buffers) if b is not None})
