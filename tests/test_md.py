"""MD math core: KL per sample, functional evaluation, vmap batching, scale correction."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.defense.correction import scale_correction
from fedguard.defense.md import batched_md, md_per_sample, unflatten_state
from fedguard.models import build_model, exchanged_state


def flat_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).float() for v in exchanged_state(model).values()])


class TinyConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def trained_bn(seed: int = 0) -> TinyConvBN:
    """A TinyConvBN whose running statistics are not at their initial values."""
    torch.manual_seed(seed)
    m = TinyConvBN().train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 8, 8) * 2 + 0.5)
    return m.eval()


def candidates(base: torch.Tensor, k: int, scale: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return base + scale * torch.randn(k, base.numel(), generator=g)


def loaded(template: nn.Module, flat: torch.Tensor) -> nn.Module:
    """A deep copy of `template` holding the flat vector `flat`, in eval mode."""
    m = copy.deepcopy(template)
    m.load_state_dict(unflatten_state(m, flat), strict=False)
    return m.eval()


def md_loop(model: nn.Module, params_hist: torch.Tensor, stacked_params: torch.Tensor,
            x: torch.Tensor) -> torch.Tensor:
    """Oracle for `batched_md`: one loaded module copy per candidate and an ordinary forward
    pass each (no functional_call, no vmap), per-sample MD `[K, N]`."""
    with torch.no_grad():
        hist = loaded(model, params_hist)(x)
        rows = [md_per_sample(hist, loaded(model, flat)(x)) for flat in stacked_params]
    return torch.stack(rows) if rows else x.new_zeros((0, x.shape[0]))


def model_md(model: nn.Module, params_hist: torch.Tensor, params_model: torch.Tensor,
             x: torch.Tensor) -> torch.Tensor:
    """Oracle per-sample MD `[N]` of one flat model against flat `params_hist` (`md_loop` of
    one candidate): the independent measurement tests check a correction against."""
    return md_loop(model, params_hist, params_model[None], x)[0]


MODELS = {"mlp": lambda: (torch.manual_seed(0), build_model("mlp", (1, 8, 8), 10))[1], "conv_bn": trained_bn}


def test_md_per_sample_matches_numpy_kl():
    rng = np.random.default_rng(0)
    zh, zm = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5)) * 3

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ph, pm = softmax(zh), softmax(zm)
    expected = (ph * np.log(ph / pm)).sum(axis=1)
    got = md_per_sample(torch.tensor(zh, dtype=torch.float32), torch.tensor(zm, dtype=torch.float32))
    assert got.shape == (7,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_md_direction_is_kl_hist_given_model():
    zh, zm = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    forward = md_per_sample(zh, zm).item()
    ph = torch.softmax(zh, -1)
    assert forward == pytest.approx((ph * (ph.log() - torch.log(torch.full((3,), 1 / 3)))).sum().item(), rel=1e-5)
    assert forward != pytest.approx(md_per_sample(zm, zh).item(), rel=1e-2)


def test_md_per_sample_is_stable_for_huge_logits():
    z = torch.tensor([[1000.0, -1000.0, 0.0]])
    out = md_per_sample(z, z.flip(-1))
    assert torch.isfinite(out).all() and out.item() > 100


def test_md_identical_is_zero():
    z = torch.randn(6, 10) * 5
    assert torch.equal(md_per_sample(z, z), torch.zeros(6))
    model = MODELS["conv_bn"]()
    flat = flat_of(model)
    x = torch.randn(5, 1, 8, 8)
    # candidates go through vmap-ed kernels, the reference through plain ones: zero to rounding
    torch.testing.assert_close(batched_md(model, flat, flat.expand(3, -1).clone(), x), torch.zeros(3, 5),
                               rtol=0, atol=1e-6)


def test_unflatten_state_shapes_and_length_check():
    model = MODELS["conv_bn"]()
    flat = flat_of(model)
    state = unflatten_state(model, flat)
    assert list(state) == list(exchanged_state(model))
    assert "bn.running_mean" in state and "bn.num_batches_tracked" not in state
    for name, ref in exchanged_state(model).items():
        assert torch.equal(state[name], ref)
    with pytest.raises(ValueError):
        unflatten_state(model, flat[:-1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_md_matches_separately_loaded_modules(name):
    template = MODELS[name]()
    base = flat_of(template)
    other = candidates(base, 1, 0.05)[0]
    x = torch.randn(9, 1, 8, 8)
    hist_m, cur_m = MODELS[name](), MODELS[name]()
    hist_m.load_state_dict(unflatten_state(hist_m, base), strict=False)
    cur_m.load_state_dict(unflatten_state(cur_m, other), strict=False)
    with torch.no_grad():
        expected = md_per_sample(hist_m.eval()(x), cur_m.eval()(x))
    template.train()
    got = batched_md(template, base, other[None], x)[0]
    assert template.training, "batched_md must restore the module's mode"
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_batched_md_matches_loop(name, chunk_size):
    model = MODELS[name]()
    base = flat_of(model)
    stacked = candidates(base, 5, 0.05)
    x = torch.randn(8, 1, 8, 8)
    got = batched_md(model, base, stacked, x, chunk_size=chunk_size)
    expected = md_loop(model, base, stacked, x)
    assert got.shape == (5, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_batchnorm_running_stats_are_used():
    model = MODELS["conv_bn"]()
    base = flat_of(model)
    names = list(exchanged_state(model))
    offsets = np.cumsum([0] + [v.numel() for v in exchanged_state(model).values()])
    i = names.index("bn.running_mean")
    shifted = base.clone()
    shifted[offsets[i]:offsets[i + 1]] += 1.0  # change only a buffer
    x = torch.randn(4, 1, 8, 8)
    md = batched_md(model, base, torch.stack([base, shifted]), x)
    assert md[0].max() <= 1e-6 and md[1].min() > 1e-3, md  # the global itself: zero to rounding


def test_reduced_precision_candidates_are_accepted():
    model = MODELS["mlp"]()
    base = flat_of(model)
    stacked = candidates(base, 3, 0.05).to(torch.bfloat16)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(batched_md(model, base, stacked, x), md_loop(model, base, stacked.float(), x))


def test_scale_correction_on_real_model():
    model = MODELS["mlp"]()
    glob = flat_of(model)
    update = candidates(torch.zeros_like(glob), 1, 0.1, seed=3)[0]
    x = torch.randn(32, 1, 8, 8)

    def md(alpha: float) -> float:
        return model_md(model, glob, glob + alpha * update, x).mean().item()

    grid = np.linspace(0, 1, 101)
    stacked = glob + torch.tensor(grid, dtype=torch.float32)[:, None] * update
    curve = batched_md(model, glob, stacked, x).mean(dim=1).numpy()
    assert curve[0] == 0 and np.all(np.diff(curve) > 0), "test premise: MD grows with alpha"
    threshold = 0.37 * curve[-1]
    iters = 20
    alpha = scale_correction(md, threshold, iters=iters)
    assert 0 < alpha < 1
    assert md(alpha) <= threshold
    assert md(alpha + 2.0 ** -iters * 1.5) > threshold  # largest, to within the tolerance
    first_bad = grid[np.argmax(curve > threshold)]
    assert first_bad - 0.01 <= alpha <= first_bad


def test_scale_correction_edges():
    assert scale_correction(lambda a: a, threshold=1.0) == 1.0
    assert scale_correction(lambda a: 1.0 + a, threshold=0.5) == 0.0
    alpha = scale_correction(lambda a: a * a, threshold=0.25, iters=30)
    assert alpha == pytest.approx(0.5, abs=1e-8) and alpha * alpha <= 0.25
    calls: list[float] = []
    scale_correction(lambda a: calls.append(a) or a, threshold=0.3, iters=10)
    assert len(calls) == 12
