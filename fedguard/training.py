"""Local training and evaluation loops (plain torch)."""

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


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device,
             batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on (x, y)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device)
        yb = torch.from_numpy(y[start:start + batch_size]).to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    return correct / len(y), loss_sum / len(y)
