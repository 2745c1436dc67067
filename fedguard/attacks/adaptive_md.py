"""`attack=adaptive_md`: the accumulative attack (Pang et al., NeurIPS 2021; `attacks.accumulative`)
made adaptive to the MD defense (`defense=mddsc`, `strategies.mddsc`), which flags a proposed model
whose memorization discrepancy MD = mean_x KL(p_global(x) || p_proposed(x)) over the server's
validation batch exceeds a threshold (the robust rule `defense.thresholds.robust_threshold`:
exp(median + k * max(1.4826 * MAD, min_log_spread)) of the round's log-MDs, or the paper's schedule
tau0 + slope * round).

The attacker knows the defense and its configuration (`defense.threshold.*`), not the honest
clients' updates nor the server's data. Each malicious client, in every attacking round:

1. crafts the accumulative attack's update u (accumulate or trigger round, all its knobs);
2. scores MD against the global model it received (the defense's default reference,
   `defense.history.lag` 0) on its own held-out batch S_val, for its honest update h and
   `attack.adaptive_samples` pseudo-honest updates (the global model trained on bootstrap
   resamples of the round's batches: stand-ins for the other clients' updates);
3. estimates the threshold as `adaptive_margin` x the robust rule over those scores (with the
   defense's k and min_log_spread; the spread is at least the floor, so with few samples the
   estimate is median x e^(k * min_log_spread)), or the schedule itself under `rule=schedule`;
4. replies with the largest fraction beta in [0, 1] whose model stays under the estimate
   (bisection, `defense.correction.scale_iters` steps: the defense's own
   `fedguard.defense.correction.scale_correction`):
   `adaptive_blend=mix`: h + beta (u - h), a convex mix with its honest update;
   `adaptive_blend=scale`: beta u, the crafted update shrunk toward the global model.

Damage is traded for stealth: beta = 1 is the plain accumulative attack, beta = 0 the honest
reply (mix) or no update (scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fedguard.attacks.accumulative import accumulative
from fedguard.attacks.craft import AttackRound, Crafted, flat_model, train_copy
from fedguard.attacks.plan import ADAPTIVE_SALT, shared_seed
from fedguard.attacks.registries import ATTACKS
from fedguard.defense.correction import scale_correction
from fedguard.defense.md import batched_md
from fedguard.defense.thresholds import robust_threshold, schedule_threshold

ADAPTIVE_BLENDS = ("mix", "scale")


def estimate_md_threshold(scores: Sequence[float], k: float = 2.5, min_log_spread: float = 0.1,
                          margin: float = 1.0) -> float:
    """`margin` x the robust rule over the attacker's MD scores of honest-looking updates (no
    history: the attacker does not see the accepted scores of past rounds)."""
    return float(margin) * robust_threshold(np.asarray(scores, dtype=np.float64), (), k, min_log_spread)


def blended(update: Tensor, honest: Tensor, beta: float, blend: str = "mix") -> Tensor:
    """mix: honest + beta * (update - honest); scale: beta * update."""
    if blend == "mix":
        return honest + beta * (update - honest)
    if blend == "scale":
        return beta * update
    raise ValueError(f"adaptive blend {blend!r}; allowed: {', '.join(ADAPTIVE_BLENDS)}")


def bootstrap(batches: list, generator: torch.Generator) -> list:
    """As many batches as `batches`, drawn from them with replacement."""
    idx = torch.randint(len(batches), (len(batches),), generator=generator)
    return [batches[int(i)] for i in idx]


def md_scores(model: nn.Module, global_flat: Tensor, proposed: Tensor, x: Tensor) -> Tensor:
    """Mean MD over `x` of each proposed model (rows of `proposed`, flat) against `global_flat`."""
    return batched_md(model, global_flat, proposed, x).mean(dim=1)


def adaptive_threshold(r: AttackRound, x: Tensor, global_flat: Tensor) -> float:
    """The attacker's estimate of this round's MD threshold (see the module docstring)."""
    cfg, a, t = r.cfg, r.cfg.attack, r.cfg.defense.threshold
    if t.rule == "schedule":
        return float(a.adaptive_margin) * schedule_threshold(r.server_round, t.tau0, t.slope)
    gen = torch.Generator().manual_seed(shared_seed(cfg.seed, r.server_round, ADAPTIVE_SALT * 100003 + r.partition_id))
    honest = [r.honest_update]
    for _ in range(int(a.adaptive_samples)):
        trained, _ = train_copy(r.model, bootstrap(r.data.batches, gen), cfg, r.device)
        honest.append(flat_model(trained) - r.global_flat)
    scores = md_scores(r.model, global_flat, global_flat + torch.stack(honest).to(r.device), x)
    return estimate_md_threshold(scores.cpu().tolist(), t.k, t.min_log_spread, a.adaptive_margin)


@ATTACKS.register("adaptive_md", "the accumulative attack kept under its own estimate of mddsc's MD threshold "
                                 "(mix with the honest update, or scale)",
                  knobs=(*ATTACKS.entry("accumulative").knobs, "adaptive_samples", "adaptive_margin", "adaptive_blend"))
def adaptive_md(r: AttackRound) -> Crafted:
    crafted = accumulative(r)
    a = r.cfg.attack
    x = r.data.x_val.to(r.device)
    global_flat = r.global_flat.to(r.device)
    threshold = adaptive_threshold(r, x, global_flat)
    update, honest = crafted.update.to(r.device), r.honest_update.to(r.device)

    def md_of(beta: float) -> float:
        proposed = global_flat + blended(update, honest, beta, a.adaptive_blend)
        return float(md_scores(r.model, global_flat, proposed[None], x)[0])

    beta = scale_correction(md_of, threshold, int(r.cfg.defense.correction.scale_iters))
    out = blended(update, honest, beta, a.adaptive_blend).cpu()
    return Crafted(out, r.honest_update, crafted.loss, r.phase, True, None, crafted.metrics)
