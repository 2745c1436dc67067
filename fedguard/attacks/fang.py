"""Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX
Security 2020: the full-knowledge attacks on trimmed mean / median and on Krum, on flat update
vectors (the global model is the origin, so the paper's w_Re, the global model before the
attack, is 0 and a local model w_i is the update g_i). The server-side placement is
`strategies.omniscient` (`attack=fang`, `attack.fang_target`).

s_j is the sign of the j-th coordinate of the benign mean update: the direction the global
model would move along without the attack. The attack pushes every coordinate the other way.

- Trimmed mean and median (`fang_target=trimmed_mean`): with max_j, min_j the largest and the
  smallest benign value of coordinate j, each malicious value is drawn uniformly from
  s_j = -1:  [max_j, b * max_j] if max_j > 0, else [max_j, max_j / b]   (above the benign max)
  s_j = +1:  [min_j / b, min_j] if min_j > 0, else [b * min_j, min_j]   (below the benign min)
  independently per malicious client and coordinate, b > 1 (the paper's b = 2); s_j = 0 keeps
  the mean.
- Krum (`fang_target=krum`): every malicious client sends the same g_m = -lambda * s, with lambda
  the largest of lambda_max, lambda_max / 2, lambda_max / 4, ... (down to `threshold`) for which
  Krum, assuming c attackers among the n = k + c updates, selects g_m; the paper's bound, with D
  the Euclidean distance and Gamma_i the n - c - 2 benign updates nearest g_i:

      lambda_max = min_i sum_{l in Gamma_i} D(g_l, g_i) / ((n - 2c - 1) sqrt(d))
                   + max_i D(g_i, 0) / sqrt(d).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedguard.defense.krum import krum_scores

FANG_TARGETS = ("trimmed_mean", "krum")


def fang_trim_updates(honest: Tensor, num_malicious: int, b: float = 2.0,
                      generator: torch.Generator | None = None) -> Tensor:
    """(num_malicious, d) malicious updates of the trimmed-mean/median attack from the benign
    updates `honest` (k, d): per coordinate, uniform draws beyond the benign max (s_j = -1) or
    min (s_j = +1), the interval's far end b times farther from 0 (or b times nearer, for a
    max <= 0 or a min > 0), see the module docstring."""
    if b <= 1:
        raise ValueError(f"b must be > 1, got {b}")
    s = torch.sign(honest.mean(0))
    mx, mn = honest.max(0).values, honest.min(0).values
    # near end (the benign extreme) and far end of each coordinate's interval
    up_far = torch.where(mx > 0, b * mx, mx / b)  # s_j = -1: above max_j
    down_far = torch.where(mn > 0, mn / b, b * mn)  # s_j = +1: below min_j
    near = torch.where(s < 0, mx, mn)
    far = torch.where(s < 0, up_far, down_far)
    u = torch.rand((num_malicious, honest.shape[1]), generator=generator, dtype=torch.float64).to(honest.dtype)
    drawn = near + u * (far - near)
    return torch.where(s == 0, honest.mean(0), drawn)


def krum_selects(stacked: Tensor, f: int) -> int:
    """Index of the row Krum selects (`fedguard.defense.krum.krum_scores`; ties to the lower index)."""
    return int(np.argmin(krum_scores(stacked.double().numpy(), f)))


def fang_krum_lambda_max(honest: Tensor, num_malicious: int) -> float:
    """The paper's upper bound lambda_max for n = k + c updates of dimension d (see the module
    docstring; n - 2c - 1 is floored at 1 when Krum's n > 2c + 2 does not hold)."""
    g = honest.double()
    k, d = g.shape
    c = int(num_malicious)
    n = k + c
    dist = torch.cdist(g, g)
    m = min(max(1, n - c - 2), k - 1)
    if m >= 1:
        others = dist[~torch.eye(k, dtype=torch.bool)].reshape(k, k - 1)
        near = float(others.sort(dim=1).values[:, :m].sum(1).min())
    else:
        near = 0.0
    return near / (max(1, n - 2 * c - 1) * math.sqrt(d)) + float(g.norm(dim=1).max()) / math.sqrt(d)


def fang_krum_update(honest: Tensor, num_malicious: int, threshold: float = 1e-5) -> tuple[Tensor, float]:
    """(g_m = -lambda * s, lambda): the Krum attack. lambda halves from `fang_krum_lambda_max`
    until Krum (f = num_malicious) over the benign updates and num_malicious copies of g_m
    selects a copy; below `threshold` the search stops with the last lambda tried."""
    s = torch.sign(honest.mean(0))
    c = int(num_malicious)
    lam = fang_krum_lambda_max(honest, c)
    while True:
        crafted = -lam * s
        stacked = torch.cat([honest, crafted.expand(c, -1)])
        if krum_selects(stacked, c) >= len(honest) or lam / 2 < threshold or lam == 0.0:
            return crafted, float(lam)
        lam /= 2
