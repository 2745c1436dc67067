"""Server-side evaluation of the global model: test accuracy and loss, attack success rates.

Both run on the server's test split only (never on a client's data): `evaluate` gives the
rounds.jsonl `accuracy` and `loss`, `round_asr` the rounds.jsonl `asr` / `stream_asr` of a
run with a backdoor (its trigger and target come from the attack's or the stream poison's
config; `attacks.backdoor.attack_success_rate` does the counting).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedguard.attacks.backdoor import BACKDOORS, attack_success_rate, trigger_from_config
from fedguard.attacks.stream_poison import stream_trigger


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


def round_asr(cfg, model: nn.Module, test, device: torch.device | None = None) -> dict[str, float | None]:
    """The rounds.jsonl attack success rates of the global `model` on the triggered test split.

    `asr`: the run's backdoor, i.e. the trigger and target of `attack=backdoor|dba|neurotoxin`
    (`attacks.backdoor.BACKDOORS`; dba: the whole patch, every part at once), else a badnets/blend
    `stream_poison`'s (poisons in the honest clients' streams). With both, the stream poison's
    goes to `stream_asr`. `{}` when the run has no backdoor.
    """
    out: dict[str, float | None] = {}
    if cfg.attack.name in BACKDOORS:
        out["asr"] = attack_success_rate(model, test.x, test.y, int(cfg.attack.target_label),
                                         trigger_from_config(cfg), device)
    sp = getattr(cfg, "stream_poison", None)
    trigger = stream_trigger(cfg) if sp is not None else None
    if trigger is not None and sp.rate > 0:
        out["stream_asr" if out else "asr"] = attack_success_rate(
            model, test.x, test.y, int(sp.target_label), trigger, device)
    return out
