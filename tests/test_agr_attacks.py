"""MinMax, MinSum (fedguard/attacks/agr_agnostic.py) and Fang's attacks (fedguard/attacks/fang.py),
checked against hand computations and independent numpy implementations written here, and their
placement by the omniscient adapter (strategies/omniscient.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedguard.attacks.agr_agnostic import agr_agnostic_gamma, agr_agnostic_update, max_gamma, perturbation
from fedguard.attacks.fang import fang_krum_lambda_max, fang_krum_update, fang_trim_updates, krum_selects
from fedguard.attacks.omniscient import OmniscientSettings, crafted_updates
from fedguard.config import ConfigError, compose, validate
from strategies import ReplyValidator, RoundNotes
from strategies.factory import build_strategy
from strategies.omniscient import OmniscientAttack
from tests.test_omniscient import partition_replies
from tests.test_reply_validation import Spy, flat, model_arrays

RNG = np.random.default_rng(7)
HONEST = RNG.normal(size=(6, 40))


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


# ------------------------------------------------------------------------- MinMax, MinSum

def np_perturbation(g: np.ndarray, kind: str) -> np.ndarray:
    mean = g.mean(0)
    return {"unit_vec": -mean / np.linalg.norm(mean), "std": -g.std(0), "sign": -np.sign(mean)}[kind]


def closed_form_gamma(g: np.ndarray, p: np.ndarray, kind: str) -> float:
    """The largest gamma from the quadratics ||mean - g_i + gamma p||^2 (an independent route to
    what the bisection finds)."""
    mean = g.mean(0)
    d = mean - g
    pair = np.array([[np.sum((a - b) ** 2) for b in g] for a in g])
    a = p @ p
    if kind == "minsum":  # sum_i ||d_i + gamma p||^2 = S0 + n gamma^2 |p|^2, as sum_i d_i = 0
        return math.sqrt((pair.sum(1).max() - np.sum(d * d)) / (len(g) * a))
    bound = pair.max()
    roots = [(-(di @ p) + math.sqrt((di @ p) ** 2 - a * (di @ di - bound))) / a for di in d]
    return min(roots)


def test_hand_example_two_updates():
    # honest (0, 0) and (2, 0): mean (1, 0), unit_vec p = (-1, 0). MinMax: max((1-g)^2, (1+g)^2) <= 4
    # -> g = 1; MinSum: (1-g)^2 + (1+g)^2 = 2 + 2 g^2 <= 4 -> g = 1. Either way the update is (0, 0).
    honest = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    for kind in ("minmax", "minsum"):
        update, gamma = agr_agnostic_update(honest, kind, "unit_vec")
        assert gamma == pytest.approx(1.0, rel=1e-4)
        assert torch.allclose(update, torch.zeros(2), atol=1e-4)
    # 0, 1, 5 on a line: mean 2, p = -1, update 2 - g; the farthest honest one is 5, and the largest
    # honest distance 5: MinMax (3 + g)^2 <= 25 -> g = 2
    honest = torch.tensor([[0.0], [1.0], [5.0]])
    _, gamma = agr_agnostic_update(honest, "minmax", "unit_vec")
    assert gamma == pytest.approx(2.0, rel=1e-4)
    _, gamma = agr_agnostic_update(honest, "minsum", "unit_vec")
    # S0 = 4 + 1 + 9 = 14; sums of squared distances: 1 + 25, 1 + 16, 25 + 16 -> max 41; 14 + 3 g^2 <= 41
    assert gamma == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize("kind", ["minmax", "minsum"])
@pytest.mark.parametrize("pert", ["unit_vec", "std", "sign"])
def test_gamma_equals_closed_form_and_is_the_edge(kind, pert):
    g = torch.from_numpy(HONEST)
    p = perturbation(g, pert)
    assert np.allclose(p.numpy(), np_perturbation(HONEST, pert))
    gamma = agr_agnostic_gamma(g, p, kind)
    want = closed_form_gamma(HONEST, p.numpy(), kind)
    assert gamma == pytest.approx(want, rel=1e-4)
    pair = np.array([[np.sum((a - b) ** 2) for b in HONEST] for a in HONEST])

    def ok(gm: float) -> bool:
        dist = np.sum((HONEST.mean(0) + gm * p.numpy() - HONEST) ** 2, axis=1)
        return dist.max() <= pair.max() if kind == "minmax" else dist.sum() <= pair.sum(1).max()

    assert ok(gamma) and not ok(gamma * 1.001)


def test_perturbation_scale_does_not_change_the_update():
    g = torch.from_numpy(HONEST)
    p = perturbation(g, "std")
    for kind in ("minmax", "minsum"):
        u1 = g.mean(0) + agr_agnostic_gamma(g, p, kind) * p
        u2 = g.mean(0) + agr_agnostic_gamma(g, 7.0 * p, kind) * 7.0 * p
        assert torch.allclose(u1, u2, atol=1e-5)


def test_max_gamma_brackets_beyond_the_initial_guess():
    assert max_gamma(lambda x: x <= 1000.0, gamma_init=1.0) == pytest.approx(1000.0, rel=1e-5)
    assert max_gamma(lambda x: x <= 1e-4, gamma_init=1.0) == pytest.approx(1e-4, rel=1e-5)
    assert max_gamma(lambda x: True) > 1e30  # never infeasible: the last feasible bracket end


# ------------------------------------------------------------------------------------ Fang

def test_fang_trim_draws_lie_in_the_paper_intervals():
    # mean (2, -2, 0.5, 0): s = (+1, -1, +1, 0)
    honest = torch.tensor([[1.0, -1.0, 2.0, 1.0], [3.0, -3.0, -1.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    out = fang_trim_updates(honest, 2000, b=2.0, generator=gen)
    # s=+1, min 1 > 0: [min/b, min] = [0.5, 1]; s=-1, max -1 <= 0: [max, max/b] = [-1, -0.5];
    # s=+1, min -1 <= 0: [b*min, min] = [-2, -1]; s=0: the mean, 0
    for j, (lo, hi) in enumerate([(0.5, 1.0), (-1.0, -0.5), (-2.0, -1.0)]):
        col = out[:, j]
        assert col.min() >= lo - 1e-6 and col.max() <= hi + 1e-6
        assert col.min() < lo + 0.01 and col.max() > hi - 0.01  # uniform over the whole interval
        assert abs(float(col.mean()) - (lo + hi) / 2) < 0.02
    assert torch.all(out[:, 3] == 0)
    assert not torch.equal(out[0], out[1])  # one draw per malicious client
    # s = -1 with max > 0: [max, b * max]
    out = fang_trim_updates(torch.tensor([[-1.0], [-4.0], [0.5]]), 500, b=3.0, generator=gen)
    assert out.min() >= 0.5 - 1e-6 and out.max() <= 1.5 + 1e-6


def np_krum_pick(x: np.ndarray, f: int) -> int:
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:max(1, n - f - 2)]))
    return int(np.argmin(scores))


def test_krum_selects_matches_a_loop():
    for seed in range(20):
        x = np.random.default_rng(seed).normal(size=(9, 5))
        assert krum_selects(torch.from_numpy(x), 2) == np_krum_pick(x, 2)


def test_fang_krum_lambda_max_is_the_paper_bound():
    g, c = HONEST, 3
    k, d = g.shape
    n = k + c
    dist = np.array([[np.linalg.norm(a - b) for b in g] for a in g])
    sums = [sorted(np.delete(dist[i], i))[:n - c - 2] for i in range(k)]
    want = min(map(sum, sums)) / ((n - 2 * c - 1) * math.sqrt(d)) + max(np.linalg.norm(g, axis=1)) / math.sqrt(d)
    assert fang_krum_lambda_max(torch.from_numpy(g), c) == pytest.approx(want, rel=1e-9)


def test_fang_krum_update_is_the_first_halving_krum_selects():
    g = torch.from_numpy(HONEST)
    c = 3
    crafted, lam = fang_krum_update(g, c)
    s = np.sign(HONEST.mean(0))
    assert np.allclose(crafted.numpy(), -lam * s)
    lam_max = fang_krum_lambda_max(g, c)
    halvings = math.log2(lam_max / lam)
    assert halvings == pytest.approx(round(halvings))
    stacked = np.vstack([HONEST, np.repeat((-lam * s)[None], c, 0)])
    assert np_krum_pick(stacked, c) >= len(HONEST)  # Krum picks a malicious copy
    if lam < lam_max:  # the previous, twice larger lambda was not selected
        bigger = np.vstack([HONEST, np.repeat((-2 * lam * s)[None], c, 0)])
        assert np_krum_pick(bigger, c) < len(HONEST)


# ------------------------------------------------------------------------------ the adapter

GLOBAL = np.linspace(-1, 1, 16).astype(np.float32)
UPDATES = np.random.default_rng(3).normal(size=(7, 16)).astype(np.float32)
MALICIOUS = {1, 4}


def replies():
    return partition_replies(GLOBAL, UPDATES)


def crafted_by(kind, **settings):
    spy = Spy()
    w = OmniscientAttack(spy, kind, MALICIOUS, None, settings=OmniscientSettings(**settings), notes=RoundNotes())
    w.global_arrays = model_arrays(GLOBAL)
    w.aggregate_train(3, replies())
    seen = {int(m.content["metrics"]["partition-id"]): flat(m.content["arrays"]) - GLOBAL for m in spy.seen}
    for pid in range(len(UPDATES)):
        if pid not in MALICIOUS:
            assert np.allclose(seen[pid], UPDATES[pid], atol=1e-6)  # honest replies untouched
    return seen, w.notes.round


@pytest.mark.parametrize("kind", ["minmax", "minsum"])
def test_adapter_writes_the_agr_agnostic_update(kind):
    seen, notes = crafted_by(kind, perturbation="sign")
    honest = torch.from_numpy(UPDATES[[0, 2, 3, 5, 6]])
    want, gamma = agr_agnostic_update(honest, kind, "sign")
    assert notes["attack_gamma"] == pytest.approx(gamma) and notes["crafted_replies"] == 2
    for pid in MALICIOUS:
        assert np.allclose(seen[pid], want.numpy(), atol=1e-5)


def test_adapter_fang_trimmed_mean_one_draw_each_and_seeded():
    seen, _ = crafted_by("fang", seed=5)
    again, _ = crafted_by("fang", seed=5)
    assert not np.allclose(seen[1], seen[4])
    assert all(np.array_equal(seen[p], again[p]) for p in MALICIOUS)
    honest = UPDATES[[0, 2, 3, 5, 6]]
    s = np.sign(honest.mean(0))
    for pid in MALICIOUS:  # beyond the honest extreme, against the mean's sign
        assert np.all(np.where(s < 0, seen[pid] >= honest.max(0) - 1e-6, seen[pid] <= honest.min(0) + 1e-6))


def test_adapter_fang_krum_identical_and_param_mask():
    seen, notes = crafted_by("fang", fang_target="krum")
    crafted, lam = fang_krum_update(torch.from_numpy(UPDATES[[0, 2, 3, 5, 6]]), 2)
    assert notes["fang_lambda"] == pytest.approx(lam)
    assert np.allclose(seen[1], crafted.numpy(), atol=1e-6) and np.allclose(seen[4], seen[1])
    mask = torch.ones(16, dtype=torch.bool)
    mask[10:] = False  # as if buffers: they keep the reply's own values, and are not in the statistics
    spy = Spy()
    w = OmniscientAttack(spy, "minmax", MALICIOUS, None, param_mask=mask, notes=RoundNotes())
    w.global_arrays = model_arrays(GLOBAL)
    w.aggregate_train(1, replies())
    got = flat(spy.seen[4].content["arrays"]) - GLOBAL
    want, _ = agr_agnostic_update(torch.from_numpy(UPDATES[[0, 2, 3, 5, 6]][:, :10]), "minmax")
    assert np.allclose(got[:10], want.numpy(), atol=1e-5) and np.allclose(got[10:], UPDATES[4][10:], atol=1e-6)


def test_crafted_updates_without_honest_replies_use_the_malicious_ones():
    u = [torch.ones(3), 3 * torch.ones(3)]
    rows, _ = crafted_updates("minmax", u, [True, True])
    assert rows.shape == (2, 3) and torch.allclose(rows[0], rows[1])


@pytest.mark.parametrize("attack", ["minmax", "minsum", "fang"])
def test_factory_places_the_new_attacks_before_the_defense(attack):
    cfg = compose([f"attack={attack}", "num_clients=6", "num_malicious=2", "defense=median",
                   "attack.perturbation=std", "attack.fang_target=krum"])
    validate(cfg)
    s = build_strategy(cfg, 6, RoundNotes())
    assert isinstance(s, ReplyValidator) and isinstance(s.inner, OmniscientAttack)
    assert s.inner.kind == attack and s.inner.settings.perturbation == "std"
    assert s.inner.settings.fang_target == "krum" and not cfg.attack.honest_after


@pytest.mark.parametrize("override", ["attack.perturbation=x", "attack.fang_target=bulyan", "attack.fang_b=1"])
def test_invalid_knobs_fail(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        validate(compose(["attack=fang", "num_malicious=1", override]))
