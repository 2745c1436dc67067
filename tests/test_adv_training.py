"""sanitizer=adv_training (fedguard/sanitizers/adv_training.py), the DSC paper's AT baseline:
PGD against a hand-written numpy PGD on a softmax-regression model, and the online step."""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import Context, RecordDict

from fedguard.config import compose, validate
from fedguard.sanitizers import build_sanitizer, train_sanitized
from fedguard.sanitizers.adv_training import pgd_examples
from fedguard.training import sgd_steps

CPU = torch.device("cpu")


def numpy_pgd(W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, eps: float, step: float,
              steps: int) -> np.ndarray:
    """PGD on softmax regression with the gradient written out: d CE / d x = W^T (p - onehot) / n."""
    xa = x.copy()
    for _ in range(steps):
        logits = xa @ W.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        grad = p @ W / len(y)
        xa = np.clip(np.clip(xa + step * np.sign(grad), x - eps, x + eps), 0.0, 1.0)
    return xa


def test_pgd_matches_numpy_on_softmax_regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    x, y = torch.rand(16, 6, dtype=torch.float64), torch.randint(0, 4, (16,))
    got = pgd_examples(model, x, y, eps=0.2, step=0.03, steps=10)
    want = numpy_pgd(model.weight.detach().numpy(), model.bias.detach().numpy(), x.numpy(), y.numpy(), 0.2, 0.03, 10)
    assert np.allclose(got.numpy(), want, atol=1e-12)
    assert float((got - x).abs().max()) <= 0.2 + 1e-12 and float(got.min()) >= 0 and float(got.max()) <= 1
    with torch.no_grad():
        assert float(torch.nn.functional.cross_entropy(model(got), y)) > float(torch.nn.functional.cross_entropy(model(x), y))


def test_the_learner_trains_on_the_pgd_examples_of_the_model_as_it_is_then():
    cfg = compose(["sanitizer=adv_training", "model=mlp", "model.hidden=16"])
    validate(cfg)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    batches = [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    reference = copy.deepcopy(model)
    for x, y in batches:  # AT by hand: the examples of the current model, then its SGD step
        sgd_steps(reference, [(pgd_examples(reference, x, y, 0.2, 0.02, 10), y)], cfg.lr, 0.0, CPU)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    _, _, metrics = train_sanitized(build_sanitizer(cfg), model, batches, [torch.zeros(8, dtype=torch.bool)] * 3,
                                    context, 1, cfg.lr, 0.0, CPU)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert metrics["sanitizer-corrected"] == 3 and metrics["sanitizer-steps"] == 30
    assert metrics["sanitizer-flagged"] == 0  # AT detects nothing
