"""Adversarial training (AT; Madry et al., ICLR 2018) of each batch: the AT baseline the DSC
paper compares against (Memorization-Discrepancy's `adapt_tensor_at`; ST, standard training,
is `sanitizer=none`).

Online, like DSC: right before its SGD step each batch is replaced by its PGD adversarial
examples for the model as it is then, in eval mode,

    x <- clamp(project_{L-inf eps}(x + step * sign(grad_x CE(model(x), y)); x_original), 0, 1)

`steps` times from the clean batch (no random start), and the step trains on them in train
mode. AT flags nothing (it detects no poison; it hardens every step): the reply's
`sanitizer-corrected` counts the batches it replaced, `sanitizer-steps` the PGD steps.
`start_round` as DSC's: earlier rounds train on the batches as they are (pretraining).
"""

from __future__ import annotations

import torch
from flwr.app import Context
from torch import Tensor, nn
from torch.nn import functional as F

from fedguard.attacks.objectives import signed_steps
from fedguard.defense.md import _eval_mode
from fedguard.sanitizers.base import CORRECTED, SANITIZERS, STEPS, Batch, Sanitizer


def pgd_examples(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """The L-inf PGD adversarial examples of (x, y) for `model` in eval mode (its flags,
    weights and gradients are left as they were)."""
    with _eval_mode(model):
        return signed_steps(x, lambda xa: F.cross_entropy(model(xa), y), eps, step, steps, ascend=True)


@SANITIZERS.register("adv_training", "AT: each batch replaced by its PGD adversarial examples right before "
                     "its SGD step (Madry et al., 2018; the DSC paper's AT baseline)")
class AdversarialTraining(Sanitizer):
    name = "adv_training"
    online = True

    def __init__(self, eps: float = 0.2, step: float = 0.02, steps: int = 10, start_round: int = 1):
        super().__init__()
        self.eps, self.step, self.steps, self.start_round = float(eps), float(step), int(steps), int(start_round)

    @classmethod
    def from_config(cls, san) -> AdversarialTraining:
        a = san.adv_training
        return cls(a.eps, a.step, a.steps, a.start_round)

    def sanitize(self, model: nn.Module, batches: list[Batch], context: Context, server_round: int
                 ) -> tuple[list[Batch], list[Tensor]]:
        flags = [torch.zeros(len(y), dtype=torch.bool, device=y.device) for _, y in batches]
        if server_round < self.start_round:
            return list(batches), flags
        out = []
        for x, y in batches:
            out.append((pgd_examples(model, x, y, self.eps, self.step, self.steps), y))
            self.stats[CORRECTED] += 1
            self.stats[STEPS] += self.steps
        return out, flags
