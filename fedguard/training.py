"""The local training loop (plain torch); the server's evaluation is in `fedguard.evaluation`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def sgd_steps(model: nn.Module, batches, lr: float, momentum: float, device: torch.device,
              prepare=None) -> float:
    """One SGD step per (x, y) batch; returns the mean training loss (nan without a step).

    `prepare(model, i, x, y) -> (x, y)`, when given, transforms batch `i` (already on `device`)
    right before its step, with the model as it is then (an online sanitiser, e.g. DSC; it
    must leave the model in train mode); an empty result skips the step.
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
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
    return float(np.mean(losses)) if losses else float("nan")
