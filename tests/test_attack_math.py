"""The pure core of the accumulative attack: schedule, colluder seeds, second-order math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedguard.attacks.objectives import (
    accumulation_direction,
    alignment,
    alignment_grad,
    flatten,
    lookahead_objective,
    model_params,
    param_grads,
    perturb_batch,
    perturb_trigger,
    scale_to_norm,
    to_exchanged,
    trigger_update,
    unflatten,
)
from fedguard.attacks.plan import AttackPlan, malicious_ids, shared_seed
from fedguard.models import CNN, exchanged_state


def flat_grad(model, params, x, y, create_graph: bool = False) -> torch.Tensor:
    """Oracle: `param_grads` as one flat vector."""
    return flatten(param_grads(model, params, x, y, create_graph))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------ plan

def phases(plan: AttackPlan, rounds: int) -> list[str]:
    return [plan.phase(r) for r in range(1, rounds + 1)]


def test_phases_by_round():
    plan = AttackPlan(burn_in=2, accumulate_rounds=3, trigger_round=7)
    assert phases(plan, 9) == ["burn_in"] * 3 + ["accumulate"] * 3 + ["trigger", "after", "after"]
    assert plan.accumulation_start == 4


def test_phases_trigger_alone():
    plan = AttackPlan(burn_in=0, accumulate_rounds=0, trigger_round=3)
    assert phases(plan, 5) == ["burn_in", "burn_in", "trigger", "after", "after"]
    first = AttackPlan(accumulate_rounds=0, trigger_round=1)
    assert phases(first, 2) == ["trigger", "after"]


def test_phases_trigger_derived_from_burn_in():
    plan = AttackPlan(burn_in=2, accumulate_rounds=2)
    assert plan.trigger_round == 5
    assert phases(plan, 6) == ["burn_in", "burn_in", "accumulate", "accumulate", "trigger", "after"]
    no_burn = AttackPlan(accumulate_rounds=2, trigger_round=3)
    assert phases(no_burn, 3) == ["accumulate", "accumulate", "trigger"]


def test_attacking_and_honest_after():
    honest = AttackPlan(accumulate_rounds=1, trigger_round=3, honest_after=True)
    persistent = AttackPlan(accumulate_rounds=1, trigger_round=3, honest_after=False)
    assert [honest.attacking(r) for r in range(1, 5)] == [False, True, True, False]
    assert [persistent.attacking(r) for r in range(1, 5)] == [False, True, True, True]


@pytest.mark.parametrize("kwargs", [
    dict(burn_in=3, accumulate_rounds=3, trigger_round=5),   # too few clean rounds
    dict(accumulate_rounds=4, trigger_round=4),              # accumulation from round 0
    dict(accumulate_rounds=-1, trigger_round=4),
    dict(trigger_round=0),
])
def test_plan_rejects_impossible_schedules(kwargs):
    with pytest.raises(ValueError):
        AttackPlan(**kwargs)


def test_malicious_ids_deterministic_and_shared():
    ids = malicious_ids(20, 5, seed=7)
    assert ids == sorted(ids) and len(set(ids)) == 5 and all(0 <= i < 20 for i in ids)
    # every colluder (and the recorder) derives the same set from the seed alone
    assert all(malicious_ids(20, 5, seed=7) == ids for _ in range(3))
    assert any(malicious_ids(20, 5, seed=s) != ids for s in range(8, 12))
    assert malicious_ids(10, 0, seed=1) == []
    assert malicious_ids(4, 4, seed=1) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        malicious_ids(3, 4, seed=0)


def test_shared_seed_identical_for_colluders():
    a, b = shared_seed(3, 10), shared_seed(3, 10)
    assert a == b and 0 <= a < 2**31
    assert shared_seed(3, 11) != a and shared_seed(4, 10) != a and shared_seed(3, 10, salt=1) != a
    # two colluders drawing "their" trigger batch get the same one
    g1, g2 = torch.Generator().manual_seed(a), torch.Generator().manual_seed(b)
    assert torch.equal(torch.randperm(100, generator=g1)[:8], torch.randperm(100, generator=g2)[:8])


# ----------------------------------------------------------------------- fixtures

def tiny_problem(model: nn.Module, n: int = 6, features: int = 4, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    batch = lambda: (torch.rand(n, features, generator=g, dtype=torch.float64),  # noqa: E731
                     torch.randint(0, classes, (n,), generator=g))
    return model, model_params(model), batch(), batch()


def linear():
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def tanh_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def central_differences(fn, params, h: float = 1e-6) -> torch.Tensor:
    """Coordinate-wise central differences of the scalar fn(params) over the flat params."""
    flat = flatten(params.values()).detach()
    out = torch.empty_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        out[i] = (fn(unflatten(flat + e, params)) - fn(unflatten(flat - e, params))) / (2 * h)
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# -------------------------------------------------------------------- second order

@pytest.mark.parametrize("make", [linear, tanh_mlp])
@pytest.mark.parametrize("per_layer", [True, False])
def test_alignment_grad_matches_finite_differences(make, per_layer):
    model, params, (xt, yt), (xv, yv) = tiny_problem(make())
    value, grad = alignment_grad(model, params, xt, yt, xv, yv, per_layer)
    fd = central_differences(lambda p: alignment(model, p, xt, yt, xv, yv, per_layer).detach(), params)
    assert grad.shape == fd.shape
    assert grad.norm() > 1e-6  # not trivially zero
    assert rel_err(grad, fd) < 1e-4
    n_layers = len(params) if per_layer else 1
    assert -n_layers - 1e-9 <= value <= n_layers + 1e-9


def test_alignment_is_sum_of_layer_cosines():
    model, params, (xt, yt), (xv, yv) = tiny_problem(linear())
    gt = unflatten(flat_grad(model, params, xt, yt), params)
    gv = unflatten(flat_grad(model, params, xv, yv), params)
    expected = sum(torch.nn.functional.cosine_similarity(gt[k].reshape(-1), gv[k].reshape(-1), dim=0)
                   for k in params)
    assert torch.allclose(alignment(model, params, xt, yt, xv, yv), expected, atol=1e-10)


def test_param_grads_match_autograd():
    model, params, (x, y), _ = tiny_problem(tanh_mlp())
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    expected = flatten(p.grad for p in model.parameters())
    assert torch.allclose(flat_grad(model, params, x, y), expected, atol=1e-12)


@pytest.mark.parametrize("sign", [-1, 1])
def test_accumulation_direction_moves_alignment_in_sign(sign):
    model, params, (xt, yt), (xv, yv) = tiny_problem(tanh_mlp())
    d = accumulation_direction(model, params, xt, yt, xv, yv, sign=sign)
    before = alignment(model, params, xt, yt, xv, yv).detach()
    moved = unflatten(flatten(params.values()) + 1e-3 * d / d.norm(), params)
    after = alignment(model, moved, xt, yt, xv, yv).detach()
    assert sign * (after - before) > 0
    # the model itself is untouched
    assert torch.equal(flatten(model_params(model).values()), flatten(params.values()))


def test_lookahead_objective_matches_finite_differences():
    model, params, (xt, yt), (xv, yv) = tiny_problem(tanh_mlp())
    eta = 0.5

    def j(p):
        g = unflatten(flat_grad(model, p, xt, yt), p)
        stepped = {k: p[k] - eta * g[k] for k in p}
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, stepped, (xv,)), yv)

    value, grad = lookahead_objective(model, params, xt, yt, xv, yv, eta)
    assert torch.allclose(value, j(params).detach(), atol=1e-12)
    assert rel_err(grad, central_differences(lambda p: j(p).detach(), params)) < 1e-4


# ------------------------------------------------------------------- updates

def test_scale_to_norm():
    u = torch.tensor([3.0, -4.0, 0.0])
    assert math.isclose(scale_to_norm(u, 2.5).norm().item(), 2.5, rel_tol=1e-6)
    assert torch.allclose(scale_to_norm(u, 1.0), u / 5)
    assert torch.equal(scale_to_norm(torch.zeros(4), 3.0), torch.zeros(4))


@pytest.mark.parametrize("mode", ["sgd", "reverse", "val_ascent"])
def test_trigger_update_variants(mode):
    model, params, (xt, yt), (xv, yv) = tiny_problem(tanh_mlp())
    n = sum(p.numel() for p in params.values())
    u = trigger_update(model, params, xt, yt, xv, yv, mode=mode, lr=0.1, steps=3)
    assert u.shape == (n,) and torch.isfinite(u).all() and u.norm() > 0
    if mode == "sgd":  # one step equals -lr * grad
        one = trigger_update(model, params, xt, yt, mode="sgd", lr=0.1, steps=1)
        assert torch.allclose(one, -0.1 * flat_grad(model, params, xt, yt), atol=1e-12)


def test_trigger_update_rejects_bad_mode_and_missing_val():
    model, params, (xt, yt), _ = tiny_problem(linear())
    with pytest.raises(ValueError):
        trigger_update(model, params, xt, yt, mode="val_ascent")
    with pytest.raises(ValueError):
        trigger_update(model, params, xt, yt, mode="nope")  # type: ignore[arg-type]


def test_to_exchanged_zero_for_buffers():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    params = model_params(model)
    update = torch.arange(1, sum(p.numel() for p in params.values()) + 1, dtype=torch.float32)
    flat = to_exchanged(model, update)
    state = exchanged_state(model)
    assert flat.numel() == sum(v.numel() for v in state.values())
    offset = 0
    parts = unflatten(update, params)
    for k, v in state.items():
        chunk = flat[offset:offset + v.numel()]
        expected = parts[k].reshape(-1) if k in parts else torch.zeros(v.numel())
        assert torch.equal(chunk, expected), k
        offset += v.numel()


# ------------------------------------------------------------------- data form

def image_problem():
    torch.manual_seed(0)
    model = CNN(1, 8, 10, hidden=16).eval()
    g = torch.Generator().manual_seed(0)
    batch = lambda n: (torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    return model, model_params(model), batch(8), batch(8), batch(8)


@pytest.mark.parametrize("per_layer", [True, False])
def test_perturb_batch_stays_in_ball_and_range(per_layer):
    model, params, (x, y), (xt, yt), (xv, yv) = image_problem()
    x[0, 0, 0, :] = 0.0  # pixels at the box edges
    x[1, 0, 0, :] = 1.0
    eps = 0.05
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = perturb_batch(model, params, x, y, xt, yt, xv, yv, eps=eps, steps=3, per_layer=per_layer)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert not torch.equal(x_adv, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_perturb_batch_reuses_direction_and_raises_goal():
    model, params, (x, y), (xt, yt), (xv, yv) = image_problem()
    d = accumulation_direction(model, params, xt, yt, xv, yv)
    a = perturb_batch(model, params, x, y, xt, yt, xv, yv, eps=0.1, steps=2)
    b = perturb_batch(model, params, x, y, xt, yt, xv, yv, eps=0.1, steps=2, direction=d)
    assert torch.equal(a, b)
    # the poisoned gradient agrees with the poisoner's direction better than the clean one
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v, dim=0)  # noqa: E731
    only_target = perturb_batch(model, params, x, y, xt, yt, xv, yv, eps=0.1, steps=5, gamma=0.0, direction=d)
    assert cos(flat_grad(model, params, only_target, y), -d) > cos(flat_grad(model, params, x, y), -d)


def test_perturb_trigger_stays_in_ball_and_lowers_alignment():
    model, params, _, (xt, yt), (xv, yv) = image_problem()
    eps = 0.1
    xt_adv = perturb_trigger(model, params, xt, yt, xv, yv, eps=eps, steps=3)
    assert (xt_adv - xt).abs().max() <= eps + 1e-6 and xt_adv.min() >= 0 and xt_adv.max() <= 1
    assert alignment(model, params, xt_adv, yt, xv, yv) < alignment(model, params, xt, yt, xv, yv)
