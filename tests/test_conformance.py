"""Conformance: every aggregator/defense and every update-space attack against an independent
implementation written here, in numpy float64 and straight from the paper's definition, on
random rounds (several seeds and several n / f / d); where ByzFL defines the same thing, also
against ByzFL (skipped when it is not installed; CI does not install it).

What is checked against what (the reference functions are `ref_*` below):

  defense / attack            driven through                         reference
  --------------------------  -------------------------------------  ---------------------------------
  fedavg, median,             the factory's builders (`DEFENSES`),   weighted mean; per-coordinate
  trimmed_mean                Flower reply Messages                  sorted middle; sorted, cut, mean
  krum, multikrum             idem                                   Blanchard et al. 2017 (k = n-f-2)
  bulyan                      idem                                   El Mhamdi et al. 2018 (iterated Krum)
  clipping (around fedavg)    `NormClipping`                         min(1, C/||u||) u, weighted mean
  cclip                       `CenteredClipping`, two rounds         Karimireddy et al. 2021, Eq. CC
  geomed                      `GeometricMedian`                      optimality condition + scipy minimum
  dnc (around fedavg)         `DnC`                                  NDSS'21 Alg. 3, scores by eigh of X X^T
  flame (around fedavg)       `FLAME`                                own cosine distances, HDBSCAN (sklearn)
                                                                     with the paper's sizes, median clip
  fltrust                     `FLTrust` (its g_0 given)              Cao et al. 2021, Eq. 4-6
  fldetector (around fedavg)  `FLDetector`, 7 rounds                 explicit BFGS matrix recursion,
                                                                     brute-force k-means, gap statistic
  alie, ipm                   `crafted_updates`, `OmniscientAttack`  Baruch et al. 2019 (z_max), Xie 2020
  minmax, minsum              `crafted_updates`                      closed-form largest gamma
  fang (trimmed mean, krum)   `crafted_updates`, `fang_*`            Fang et al. 2020, Sec. 4
  sign_flip, scaling,         the registered client crafts           -u, s u, N(0, sigma^2) (KS test)
  gaussian                    (`ATTACKS`) on an `AttackRound`

The ByzFL checks (byzfl 0.0.11, `pip install --no-deps byzfl`) import only its `aggregators` and
`attacks` subpackages (its package `__init__` imports torchvision): Median, TrMean, Krum,
MultiKrum, GeometricMedian, CenteredClipping, Clipping (pre-aggregator), ALIE, IPM, SignFlipping,
each mapped onto fedguard's parameters where the definitions differ (see `test_byzfl_*`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import sys
import types

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import Bulyan as FlowerBulyan
from flwr.serverapp.strategy import FedAvg
from omegaconf import OmegaConf
from scipy import optimize, stats
from sklearn.cluster import HDBSCAN
from torch import nn

from fedguard.attacks import ATTACKS
from fedguard.attacks.agr_agnostic import agr_agnostic_update
from fedguard.attacks.craft import AttackRound
from fedguard.attacks.fang import fang_krum_update, fang_trim_updates
from fedguard.attacks.omniscient import OmniscientSettings, alie_z, crafted_updates
from fedguard.models import model_to_arrays, param_mask
from strategies.base import RoundNotes
from strategies.bulyan import Bulyan, bulyan_select
from strategies.cclip import CenteredClipping
from strategies.clipping import NormClipping
from strategies.dnc import DnC
from strategies.factory import DEFENSES, BuildContext
from strategies.flame import FLAME
from strategies.fldetector import FLDetector
from strategies.fltrust import FLTrust
from strategies.geomed import GeometricMedian
from strategies.krum import MultiKrum, multikrum_select
from strategies.omniscient import OmniscientAttack
from tests.update_replies import records, reply, run_round

# (n, f, d): n >= 4f + 3 but for (10, 2), Bulyan's keep-the-previous-model case
SHAPES = [(7, 1, 5), (10, 2, 50), (11, 2, 50), (15, 3, 20), (20, 4, 30)]
SEEDS = range(6)
CASES = [(n, f, d, s) for n, f, d in SHAPES for s in SEEDS]
TOL = dict(rtol=1e-5, atol=1e-5)  # the strategies return float32 models


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ================================================================ a round's inputs

def round_inputs(n: int, f: int, d: int, seed: int):
    """(global model float32 [d], client models float32 [n, d], num-examples [n]): honest
    updates around a common direction, the first f shifted by a common random offset (an
    attacker's kind of outlier, of random size)."""
    rng = np.random.default_rng([n, f, d, seed])
    glob = rng.normal(size=d).astype(np.float32)
    updates = rng.normal(size=d) + rng.normal(size=(n, d))
    updates[:f] += rng.normal(scale=rng.uniform(0.5, 3.0), size=d)
    return glob, (glob + updates).astype(np.float32), rng.integers(1, 50, size=n)


def as_updates(glob, models) -> np.ndarray:
    """What the clients sent, as float64 updates (exact: float32 values in float64)."""
    return models.astype(np.float64) - glob.astype(np.float64)


def registered(name: str, n: int, f: int, trim_beta: float | None = 0.2, multikrum_select: int | None = None):
    cfg = OmegaConf.create({"num_malicious": f, "defense": {
        "name": name, "trim_beta": trim_beta, "assumed_malicious": None, "multikrum_select": multikrum_select}})
    return DEFENSES.get(name).build(BuildContext(cfg, n))


# ================================================================ references: aggregators

def ref_mean(U, w=None) -> np.ndarray:
    w = np.ones(len(U)) if w is None else np.asarray(w, dtype=np.float64)
    return sum(wi * u for wi, u in zip(w, U)) / w.sum()


def ref_median(U) -> np.ndarray:
    s = np.sort(U, axis=0)
    n = len(U)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def ref_trimmed(U, cut: int) -> np.ndarray:
    s = np.sort(U, axis=0)
    return s[cut:len(U) - cut].mean(axis=0)


def ref_sq_dists(U) -> np.ndarray:
    n = len(U)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            diff = U[i] - U[j]
            D[i, j] = diff @ diff
    return D


def ref_krum_scores(U, f: int, k: int | None = None) -> list[float]:
    """Blanchard et al.: the sum of squared distances to the k = n - f - 2 nearest others."""
    n = len(U)
    k = max(1, n - f - 2) if k is None else k
    D = ref_sq_dists(U)
    return [sum(sorted(D[i, j] for j in range(n) if j != i)[:k]) for i in range(n)]


def ref_krum_order(U, f: int, k: int | None = None) -> list[int]:
    scores = ref_krum_scores(U, f, k)
    return sorted(range(len(U)), key=lambda i: (scores[i], i))


def ref_multikrum(U, w, f: int, m: int) -> np.ndarray:
    best = ref_krum_order(U, f)[:m]
    return ref_mean(U[best], np.asarray(w)[best])


def ref_bulyan(U, f: int) -> np.ndarray:
    remaining, chosen = list(range(len(U))), []
    while len(chosen) < len(U) - 2 * f:  # Krum on what is left, one pick at a time
        pick = remaining[ref_krum_order(U[remaining], f)[0]]
        chosen.append(pick)
        remaining.remove(pick)
    S = U[chosen]
    beta = len(chosen) - 2 * f
    out = np.empty(U.shape[1])
    for j in range(U.shape[1]):
        med = ref_median(S[:, [j]])[0]
        out[j] = np.mean(sorted(S[:, j], key=lambda x: abs(x - med))[:beta])
    return out


def ref_clip(U, bound: float) -> np.ndarray:
    return np.array([u * min(1.0, bound / np.sqrt(u @ u)) for u in U])


def ref_cclip(U, center, tau: float | None, iters: int) -> np.ndarray:
    """Karimireddy et al.: v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||)."""
    v = np.array(center, dtype=np.float64)
    for _ in range(iters):
        dist = [np.sqrt((u - v) @ (u - v)) for u in U]
        t = float(np.median(dist)) if tau is None else tau
        v = v + sum((u - v) * min(1.0, t / r) for u, r in zip(U, dist)) / len(U)
    return v


def geomed_objective(U, w, v) -> float:
    a = np.asarray(w, dtype=np.float64) / np.sum(w)
    return float(sum(ai * np.sqrt((v - u) @ (v - u)) for ai, u in zip(a, U)))


def geomed_gradient(U, w, v) -> np.ndarray:
    a = np.asarray(w, dtype=np.float64) / np.sum(w)
    return sum(ai * (v - u) / np.sqrt((v - u) @ (v - u)) for ai, u in zip(a, U))


def ref_geomed(U, w) -> np.ndarray:
    """argmin_v sum_i alpha_i ||v - u_i|| by a general-purpose minimiser (BFGS), not Weiszfeld."""
    res = optimize.minimize(lambda v: geomed_objective(U, w, v), ref_median(U),
                            jac=lambda v: geomed_gradient(U, w, v), method="BFGS", options={"gtol": 1e-12})
    return res.x


def ref_dnc_kept(U, removed: int, subsets) -> set[int]:
    """Shejwalkar & Houmansadr Alg. 3. The top right singular vector v of the centred X gives
    <x_i, v>^2 = lambda_max a_i^2, with (lambda_max, a) the top eigenpair of X X^T (n x n)."""
    n = len(U)
    good = set(range(n))
    for coords in subsets:
        X = U[:, coords] - U[:, coords].mean(axis=0)
        lam, vecs = np.linalg.eigh(X @ X.T)
        scores = lam[-1] * vecs[:, -1] ** 2
        good &= set(sorted(range(n), key=lambda i: (scores[i], i))[:n - removed])
    return good


def ref_cosine_distances(U) -> np.ndarray:
    n = len(U)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = 1.0 - (U[i] @ U[j]) / np.sqrt((U[i] @ U[i]) * (U[j] @ U[j]))
    return out


def ref_flame_admitted(U) -> np.ndarray:
    """FLAME step 1: HDBSCAN (sklearn's; min cluster size n/2 + 1, one cluster allowed) on the
    cosine distances; the largest cluster is admitted."""
    n = len(U)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", copy=True,
                     allow_single_cluster=True).fit(ref_cosine_distances(U)).labels_
    if (labels < 0).all():
        return np.ones(n, dtype=bool)
    return labels == np.bincount(labels[labels >= 0]).argmax()


def ref_fltrust(U, g0, params) -> np.ndarray:
    """Cao et al.: TS_i = ReLU(cos(g_i, g0)), g_i rescaled to ||g0||, the TS-weighted mean (on
    the parameters; fedguard's choice on buffers: the TS-weighted mean of the unscaled updates)."""
    P, g0p = U[:, params], g0[params]
    ts = [max(0.0, (p @ g0p) / np.sqrt((p @ p) * (g0p @ g0p))) for p in P]
    out = np.zeros(U.shape[1])
    for t, u, p in zip(ts, U, P):
        out[params] += t * p * np.sqrt(g0p @ g0p) / np.sqrt(p @ p)
        out[~params] += t * u[~params]
    return out / sum(ts)


# ================================================================ references: FLDetector

def ref_bfgs_matrix(S, Y) -> np.ndarray:
    """The BFGS Hessian approximation built pair by pair (oldest first) from B_0 = sigma I,
    sigma = y.s / s.s of the newest pair: B <- B - B s s^T B / s^T B s + y y^T / y^T s."""
    d = S.shape[1]
    B = (Y[-1] @ S[-1]) / (S[-1] @ S[-1]) * np.eye(d)
    for s, y in zip(S, Y):
        Bs = B @ s
        B = B - np.outer(Bs, Bs) / (s @ Bs) + np.outer(y, y) / (y @ s)
    return B


def ref_kmeans_costs(x, kmax: int) -> list[float]:
    """Optimal 1-D k-means SSE, k = 1..kmax, by trying every split of the sorted points into
    runs (all 2^(n-1) sets of cut positions)."""
    xs = np.sort(x)
    n = len(xs)
    run = {(i, j): float(((xs[i:j] - xs[i:j].mean()) ** 2).sum()) for i in range(n) for j in range(i + 1, n + 1)}
    best = [np.inf] * (n + 1)
    for r in range(n):
        for cuts in itertools.combinations(range(1, n), r):
            bounds = (0, *cuts, n)
            best[r + 1] = min(best[r + 1], sum(run[a, b] for a, b in zip(bounds, bounds[1:])))
    return best[1:kmax + 1]


def ref_gap_k(x, rng, refs: int = 20, kmax: int = 10) -> int:
    """Tibshirani et al.'s gap statistic: the smallest k with Gap(k) >= Gap(k+1) - s_{k+1},
    uniform reference sets over the range of x (drawn in the strategy's order from `rng`)."""
    kmax = min(kmax, len(x) - 1)
    lo, hi = x.min(), x.max()
    log_w = np.log(ref_kmeans_costs(x, kmax))
    ref = np.log([ref_kmeans_costs(rng.uniform(lo, hi, len(x)), kmax) for _ in range(refs)])
    gap = ref.mean(axis=0) - log_w
    s = ref.std(axis=0) * np.sqrt(1 + 1 / refs)
    return next((k + 1 for k in range(kmax - 1) if gap[k] >= gap[k + 1] - s[k + 1]), kmax)


def ref_upper_two_means(x) -> set[int]:
    """The upper group of the best split of the sorted scores into two runs."""
    order = np.argsort(x)
    costs = [((x[order[:c]] - x[order[:c]].mean()) ** 2).sum() + ((x[order[c:]] - x[order[c:]].mean()) ** 2).sum()
             for c in range(1, len(x))]
    return set(order[int(np.argmin(costs)) + 1:].tolist())


# ================================================================ references: attacks

def ref_alie_z(n: int, f: int) -> float:
    """Baruch et al., Alg. 1: s = floor(n/2 + 1) - f, z_max = max z with Phi(z) < (n - s) / n."""
    s = n // 2 + 1 - f
    return float(stats.norm.ppf((n - s) / n))


def ref_alie(H, z: float) -> np.ndarray:
    mu = H.mean(axis=0)
    sigma = np.sqrt(((H - mu) ** 2).mean(axis=0))  # population std
    return mu - z * sigma


def ref_perturbation(H, kind: str) -> np.ndarray:
    mu = H.mean(axis=0)
    return {"unit_vec": -mu / np.sqrt(mu @ mu), "std": -H.std(axis=0), "sign": -np.sign(mu)}[kind]


def ref_agr_gamma(H, p, kind: str) -> float:
    """The largest gamma of Shejwalkar & Houmansadr's conditions, in closed form: with
    d_i = mean - g_i, ||mean + gamma p - g_i||^2 = |d_i|^2 + 2 gamma d_i.p + gamma^2 |p|^2."""
    D = ref_sq_dists(H)
    d = H.mean(axis=0) - H
    a, b, c = (d * d).sum(axis=1), d @ p, p @ p
    if kind == "minmax":  # every benign distance within the largest benign pair's
        bound = D.max()
        return min((-bi + np.sqrt(bi * bi - c * (ai - bound))) / c for ai, bi in zip(a, b))
    # minsum: k c gamma^2 + 2 gamma sum_i d_i.p + sum_i |d_i|^2 <= max_i sum_j D_ij, sum_i d_i = 0
    return float(np.sqrt((D.sum(axis=1).max() - a.sum()) / (len(H) * c)))


def ref_fang_interval(H, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Fang et al., full knowledge, trimmed mean / median: per coordinate the interval the
    malicious values are drawn from (near end = the benign extreme), s_j = sign(benign mean)."""
    s = np.sign(H.mean(axis=0))
    mx, mn = H.max(axis=0), H.min(axis=0)
    near = np.where(s < 0, mx, mn)
    far = np.where(s < 0, np.where(mx > 0, b * mx, mx / b), np.where(mn > 0, mn / b, b * mn))
    return near, far


def ref_fang_krum(H, c: int, threshold: float = 1e-5) -> tuple[np.ndarray, float]:
    """Fang et al., full knowledge, Krum: lambda from the paper's upper bound, halved until Krum
    (with c attackers among n = k + c) picks -lambda s."""
    k, d = H.shape
    n = k + c
    s = np.sign(H.mean(axis=0))
    D = np.sqrt(ref_sq_dists(H))
    near = min(sum(sorted(D[i, j] for j in range(k) if j != i)[:n - c - 2]) for i in range(k))
    lam = near / ((n - 2 * c - 1) * np.sqrt(d)) + max(np.sqrt(h @ h) for h in H) / np.sqrt(d)
    while True:
        crafted = -lam * s
        stacked = np.vstack([H, np.tile(crafted, (c, 1))])
        if ref_krum_order(stacked, c)[0] >= k or lam / 2 < threshold:
            return crafted, lam
        lam /= 2


def honest_rows(n, f, d, seed):
    """(all updates [n, d] float64, malicious flags): the last f rows are the attacker's."""
    rng = np.random.default_rng([7, n, f, d, seed])
    U = rng.normal(size=d) + rng.normal(scale=rng.uniform(0.3, 2.0), size=(n, d))
    return U, [i >= n - f for i in range(n)]


# ================================================================ aggregators (factory-built)

@pytest.mark.parametrize("name", ["fedavg", "median", "trimmed_mean", "krum", "multikrum", "bulyan"])
def test_aggregator_matches_reference(name):
    for n, f, d, seed in CASES:
        glob, models, examples = round_inputs(n, f, d, seed)
        U, g = as_updates(glob, models), glob.astype(np.float64)
        if name == "bulyan" and n < 4 * f + 3:  # see test_bulyan_keeps_the_previous_model_below_4f_plus_3
            continue
        expected = {
            "fedavg": lambda: ref_mean(U, examples),
            "median": lambda: ref_median(U),
            "trimmed_mean": lambda: ref_trimmed(U, int(0.2 * n)),
            "krum": lambda: U[ref_krum_order(U, f)[0]],
            "multikrum": lambda: ref_multikrum(U, examples, f, n - f),  # m = n - f (the factory's default)
            "bulyan": lambda: ref_bulyan(U, f),
        }[name]()
        got = run_round(registered(name, n, f), glob, models, examples)
        np.testing.assert_allclose(got, g + expected, **TOL, err_msg=f"{name}, n={n} f={f} d={d} seed={seed}")


def test_trimmed_mean_without_beta_cuts_exactly_f_at_each_end():
    """trim_beta null: beta follows the f the defense assumes (Yin et al.'s beta = f / n)."""
    for n, f, d, seed in CASES:
        glob, models, examples = round_inputs(n, f, d, seed)
        got = run_round(registered("trimmed_mean", n, f, trim_beta=None), glob, models, examples)
        np.testing.assert_allclose(got, glob + ref_trimmed(as_updates(glob, models), f), **TOL)


@pytest.mark.parametrize("m", [1, 3, 5])
def test_multikrum_select_knob_is_honoured(m):
    for n, f, d, seed in CASES[::3]:
        glob, models, examples = round_inputs(n, f, d, seed)
        got = run_round(registered("multikrum", n, f, multikrum_select=m), glob, models, examples)
        np.testing.assert_allclose(got, glob + ref_multikrum(as_updates(glob, models), examples, f, m), **TOL)


def test_krum_scores_use_the_updates_in_float64():
    """A large common global model: Flower's |x|^2 + |y|^2 - 2 x.y over float32 weights loses the
    differences; the update-space float64 distances still see them."""
    rng = np.random.default_rng(0)
    glob = (1e3 + rng.normal(size=50)).astype(np.float32)
    ups = rng.normal(scale=1e-3, size=(10, 50))
    ups[0] *= 30  # an outlier Krum must not pick
    models = (glob + ups).astype(np.float32)
    exact = as_updates(glob, models)
    got = run_round(registered("krum", 10, 2), glob, models, np.ones(10))
    np.testing.assert_allclose(got, glob + exact[ref_krum_order(exact, 2)[0]], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- Bulyan: iterated, not one-shot

ONE_SHOT = (11, 2, 50, 1)  # a round where Flower's one-shot MultiKrum selection differs (found below)


def one_shot_differs(case) -> bool:
    n, f, d, seed = case
    glob, models, _ = round_inputs(n, f, d, seed)
    U = as_updates(glob, models)
    return set(multikrum_select(U, f, n - 2 * f).tolist()) != set(bulyan_select(U, f))


def test_one_shot_and_iterated_selection_differ_on_the_chosen_round():
    assert one_shot_differs(ONE_SHOT)
    assert sum(one_shot_differs(c) for c in CASES if c[0] >= 4 * c[1] + 3) > 0


@pytest.mark.parametrize("make", [
    lambda f: Bulyan(f),
    pytest.param(lambda f: FlowerBulyan(num_malicious_nodes=f, fraction_evaluate=0.0), marks=pytest.mark.xfail(
        strict=True, reason="Flower 1.41's one-shot MultiKrum selection is not Bulyan's iterated Krum"))],
    ids=["fedguard", "flower"])
def test_bulyan_follows_the_paper_on_a_round_where_one_shot_differs(make):
    n, f, d, seed = ONE_SHOT
    glob, models, examples = round_inputs(n, f, d, seed)
    got = run_round(make(f), glob, models, examples)
    np.testing.assert_allclose(got, glob + ref_bulyan(as_updates(glob, models), f), **TOL)


def test_bulyan_keeps_the_previous_model_below_4f_plus_3():
    glob, models, examples = round_inputs(10, 2, 50, 0)
    strategy = Bulyan(2)
    strategy.global_arrays = records(glob)
    replies = [reply(i + 1, m, e) for i, (m, e) in enumerate(zip(models, examples))]
    assert strategy.aggregate_train(1, replies) == (None, None)


# ================================================================ defenses on updates

@pytest.mark.parametrize("fixed", [True, False])
def test_norm_clipping_around_fedavg(fixed):
    for n, f, d, seed in CASES[::2]:
        glob, models, examples = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        norms = np.sqrt((U * U).sum(axis=1))
        bound = 0.7 * float(np.median(norms)) if fixed else 1.3 * float(np.median(norms))
        strategy = NormClipping(FedAvg(), clip_norm=bound) if fixed else NormClipping(FedAvg(), multiplier=1.3)
        got = run_round(strategy, glob, models, examples)
        np.testing.assert_allclose(got, glob + ref_mean(ref_clip(U, bound), examples), **TOL)


@pytest.mark.parametrize("tau,iters", [(1.0, 1), (3.0, 3), (None, 1), (None, 4)])
def test_centered_clipping_over_two_rounds(tau, iters):
    """Round 1 starts from 0, round 2 from round 1's aggregate update (init="previous")."""
    for n, f, d, seed in CASES[::3]:
        strategy = CenteredClipping(tau=tau, iters=iters, init="previous")
        center = np.zeros(d)
        for rnd in (1, 2):
            glob, models, examples = round_inputs(n, f, d, 100 * seed + rnd)
            U = as_updates(glob, models)
            expected = ref_cclip(U, center, tau, iters)
            got = run_round(strategy, glob, models, examples, server_round=rnd)
            np.testing.assert_allclose(got, glob + expected, **TOL, err_msg=f"round {rnd}, n={n} seed={seed}")
            center = expected


def test_centered_clipping_zero_init_ignores_the_previous_round():
    glob, models, examples = round_inputs(11, 2, 50, 0)
    strategy = CenteredClipping(tau=2.0, iters=2, init="zero")
    run_round(strategy, glob, models, examples, server_round=1)
    glob2, models2, examples2 = round_inputs(11, 2, 50, 1)
    got = run_round(strategy, glob2, models2, examples2, server_round=2)
    np.testing.assert_allclose(got, glob2 + ref_cclip(as_updates(glob2, models2), np.zeros(50), 2.0, 2), **TOL)


def test_geometric_median_is_the_weighted_minimiser():
    """Tight settings: the first-order condition sum_i alpha_i (v - u_i) / ||v - u_i|| = 0 holds
    and v is the minimiser a general-purpose optimiser finds. Default settings (tol 1e-6, 100
    iterations): the objective is within 1e-5 of the minimum."""
    for n, f, d, seed in CASES[::2]:
        glob, models, examples = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        v = run_round(GeometricMedian(nu=1e-12, iters=5000, tol=0.0), glob, models, examples) - glob
        ref = ref_geomed(U, examples)
        scale = np.sqrt((U * U).sum(axis=1)).mean()
        assert np.sqrt((geomed_gradient(U, examples, ref) ** 2).sum()) < 1e-6
        np.testing.assert_allclose(v, ref, rtol=0, atol=1e-5 * scale)
        default = run_round(GeometricMedian(), glob, models, examples) - glob
        assert geomed_objective(U, examples, default) <= geomed_objective(U, examples, ref) * (1 + 1e-5)


@pytest.mark.parametrize("subsample,iters,frac", [(10000, 1, 1.0), (20, 3, 1.0), (15, 5, 1.5)])
def test_dnc_keeps_the_reference_set_and_averages_it(subsample, iters, frac):
    for n, f, d, seed in CASES[::2]:
        glob, models, examples = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        notes = RoundNotes()
        strategy = DnC(FedAvg(), num_malicious=f, iters=iters, subsample=subsample, filter_frac=frac, seed=seed,
                       notes=notes)
        got = run_round(strategy, glob, models, examples, server_round=3)
        subsets = strategy.subsets(3, d)  # the coordinates are the strategy's (seeded) draw
        assert all(len(c) == min(d, subsample) and len(set(c.tolist())) == len(c) for c in subsets)
        kept = sorted(ref_dnc_kept(U, int(np.floor(frac * f)), subsets))
        assert [not notes.clients[i + 1]["flagged"] for i in range(n)] == [i in kept for i in range(n)]
        np.testing.assert_allclose(got, glob + ref_mean(U[kept], examples[kept]), **TOL)


def flame_round(n, d, seed, attackers):
    """Honest updates around one direction with norms 0.5..2, attackers around the opposite one."""
    rng = np.random.default_rng([n, d, seed])
    direction = rng.normal(size=d)
    honest = (direction + 0.3 * rng.normal(size=(n - attackers, d))) * rng.uniform(0.5, 2.0, size=(n - attackers, 1))
    bad = -direction + 0.3 * rng.normal(size=(attackers, d))
    glob = rng.normal(size=d).astype(np.float32)
    return glob, (glob + np.vstack([honest, bad])).astype(np.float32), rng.integers(1, 50, size=n)


@pytest.mark.parametrize("n,attackers,d", [(10, 3, 30), (15, 4, 20), (20, 0, 50), (11, 5, 40)])
def test_flame_admits_clips_and_averages_as_the_reference(n, attackers, d):
    for seed in range(4):
        glob, models, examples = flame_round(n, d, seed, attackers)
        U = as_updates(glob, models)
        admitted = ref_flame_admitted(U)
        assert not admitted[n - attackers:].any()
        S = float(np.median(np.sqrt((U * U).sum(axis=1))))  # over all n replies
        notes = RoundNotes()
        got = run_round(FLAME(FedAvg(), noise=0.0, notes=notes), glob, models, examples)
        assert [not notes.clients[i + 1]["flagged"] for i in range(n)] == admitted.tolist()
        expected = ref_mean(ref_clip(U[admitted], S), examples[admitted])
        np.testing.assert_allclose(got, glob + expected, **TOL, err_msg=f"n={n} seed={seed}")


def test_flame_noise_is_gaussian_with_std_lambda_times_median_norm():
    n, d, lam = 10, 20000, 0.01
    glob, models, examples = flame_round(n, d, 0, 3)
    U = as_updates(glob, models)
    S = float(np.median(np.sqrt((U * U).sum(axis=1))))
    clean = run_round(FLAME(FedAvg(), noise=0.0), glob, models, examples)
    noisy = run_round(FLAME(FedAvg(), noise=lam, seed=3), glob, models, examples)
    noise = (noisy - clean) / (lam * S)
    assert stats.kstest(noise, "norm").pvalue > 1e-3
    assert abs(noise.std() - 1.0) < 0.03


class GivenServerUpdate(FLTrust):
    """FLTrust with the server's update g_0 given (the aggregation rule alone, not the root training)."""

    def __init__(self, model, g0):
        super().__init__(model, np.zeros((4, 3), np.float32), np.zeros(4, np.int64), lr=0.1, momentum=0.0,
                         local_steps=1, batch_size=2)
        self.g0 = g0

    def server_update(self) -> np.ndarray:
        return self.g0


def test_fltrust_aggregate_matches_the_paper_parameters_and_buffers():
    """A model with BatchNorm: trust and rescaling on the parameters, buffers unscaled."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    like = model_to_arrays(model)
    params = param_mask(model).numpy()
    d = len(params)
    assert 0 < (~params).sum() < d
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n = 5 + seed
        g0 = rng.normal(size=d)
        U = 0.5 * g0 + rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1))
        U[: seed % 3 + 1] = -U[: seed % 3 + 1]  # a few updates against the server's: no trust
        glob = rng.normal(size=d).astype(np.float32)
        models = (glob + U).astype(np.float32)
        notes = RoundNotes()
        strategy = GivenServerUpdate(model, g0)
        strategy.notes = notes
        got = run_round(strategy, glob, models, like=like)
        np.testing.assert_allclose(got, glob + ref_fltrust(as_updates(glob, models), g0, params), **TOL)
        assert any(notes.clients[i + 1]["flagged"] for i in range(n))


# ================================================================ FLDetector

def fld_simulation(seed: int, rounds: int = 7, window: int = 3, start: int = 3, n: int = 10, d: int = 6):
    """Clients on a quadratic: honest u = -(A w - b) + small noise, the last client sends the
    sign-flipped one plus noise. Drives `FLDetector(FedAvg())` round by round and recomputes
    every client's suspicious score and the flagged set from the paper's definitions, from the
    global models the strategy produced."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    # eigenvalues above 1/4: s.y > 0 also across the round the flipper is first left out
    A = Q @ np.diag(rng.uniform(0.3, 0.6, size=d)) @ Q.T
    b = rng.normal(size=d)
    notes = RoundNotes()
    strategy = FLDetector(FedAvg(), window=window, start=start, seed=seed, notes=notes)
    W = [rng.normal(size=d).astype(np.float32).astype(np.float64)]  # W[t]: global model after round t
    last: dict[int, np.ndarray] = {}
    dists: dict[int, list[tuple[int, float]]] = {i: [] for i in range(1, n + 1)}
    checked = 0
    for r in range(1, rounds + 1):
        w = W[r - 1]
        U = np.array([-(A @ w - b) + 1e-3 * rng.normal(size=d) for _ in range(n)])
        U[-1] = (A @ w - b) + 0.05 * rng.normal(size=d)
        glob = w.astype(np.float32)
        models = (glob + U).astype(np.float32)
        notes.reset()
        got = run_round(strategy, glob, models, server_round=r)
        U = as_updates(glob, models)
        # reference: pairs from the last window + 2 global models W[r-1-(window+1)] .. W[r-1]
        ks = range(max(0, r - 1 - (window + 1)), r)
        pairs = [(W[k] - W[k - 1], (W[k] - W[k + 1]) - (W[k - 1] - W[k])) for k in ks if k - 1 in ks and k + 1 in ks]
        if pairs and r >= 2:
            S, Y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            assert all(s @ y > 0 for s, y in pairs)  # BFGS's curvature condition on this data
            B = ref_bfgs_matrix(S, Y)
            raw = {i: np.sqrt(((last[i] - B @ (W[r - 1] - W[r - 2]) - U[i - 1]) ** 2).sum()) for i in last}
            total = sum(raw.values())
            for i, v in raw.items():
                dists[i].append((r, v / total))
        scores = {i: np.mean([v for rr, v in dists[i] if rr > r - window]) for i in dists
                  if any(rr > r - window for rr, _ in dists[i])}
        flagged: set[int] = set()
        if r >= start and scores:
            x = np.array(list(scores.values()))
            if ref_gap_k(x, np.random.default_rng([seed, r])) > 1:
                flagged = {list(scores)[j] for j in ref_upper_two_means(x)}
        for i in range(1, n + 1):
            got_score = notes.clients[i]["fld_score"]
            if i in scores:
                assert got_score == pytest.approx(scores[i], rel=1e-4), (r, i)
                checked += 1
            else:
                assert got_score is None
        assert {i for i in range(1, n + 1) if notes.clients[i]["flagged"]} == flagged, r
        kept = [i - 1 for i in range(1, n + 1) if i not in flagged]
        np.testing.assert_allclose(got, glob + ref_mean(U[kept]), **TOL)
        last = {i: U[i - 1] for i in range(1, n + 1)}
        W.append(got)
    return checked, flagged


@pytest.mark.parametrize("seed", range(3))
def test_fldetector_scores_and_flags_follow_the_paper(seed):
    checked, flagged = fld_simulation(seed)
    assert checked >= 40 and flagged == {10}  # scores compared, and the sign flipper caught by the end


def test_fldetector_pieces():
    """The pieces alone, on inputs where the paper's assumptions hold: B v from the compact form
    equals the explicit recursion; the DP k-means costs equal the brute force."""
    from strategies.fldetector import kmeans_1d_costs, lbfgs_hvp, upper_of_two_means

    for seed in range(10):
        rng = np.random.default_rng(seed)
        d, m = 8, 1 + seed % 4
        A = rng.normal(size=(d, d))
        A = A @ A.T + 0.1 * np.eye(d)
        S = rng.normal(size=(m, d))
        Y = S @ A  # y = A s: s.y > 0
        v = rng.normal(size=d)
        np.testing.assert_allclose(lbfgs_hvp(S, Y, v), ref_bfgs_matrix(S, Y) @ v, rtol=1e-8, atol=1e-8)
        x = rng.exponential(size=7 + seed % 3)
        np.testing.assert_allclose(kmeans_1d_costs(x, 5), ref_kmeans_costs(x, 5),
                                   rtol=1e-9, atol=1e-12)
        assert set(np.flatnonzero(upper_of_two_means(x)).tolist()) == ref_upper_two_means(x)


# ================================================================ omniscient attacks

def t64(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def test_alie_z_is_the_papers_z_max():
    for n in range(3, 60):
        for f in range(1, n // 2):
            assert alie_z(n, f) == pytest.approx(ref_alie_z(n, f), abs=1e-9), (n, f)


@pytest.mark.parametrize("z", [None, 0.7, 2.5])
def test_alie_and_ipm_crafted_updates(z):
    for n, f, d, seed in CASES:
        U, flags = honest_rows(n, f, d, seed)
        H = U[:n - f]
        crafted, notes = crafted_updates("alie", list(t64(U)), flags, OmniscientSettings(z=z))
        zz = ref_alie_z(n, f) if z is None else z
        assert notes["alie_z"] == pytest.approx(zz, abs=1e-9)
        assert crafted.shape == (f, d)
        np.testing.assert_allclose(crafted.numpy(), np.tile(ref_alie(H, zz), (f, 1)), rtol=1e-12, atol=1e-12)
        eps = 0.5 if z is None else z
        crafted, _ = crafted_updates("ipm", list(t64(U)), flags, OmniscientSettings(eps=eps))
        np.testing.assert_allclose(crafted.numpy(), np.tile(-eps * H.mean(axis=0), (f, 1)), rtol=1e-12, atol=1e-12)


class Capture:
    """An inner strategy that keeps the replies it gets."""

    def aggregate_train(self, server_round, replies):
        self.replies = list(replies)
        return None, None


@pytest.mark.parametrize("kind", ["alie", "ipm", "minmax", "minsum"])
def test_omniscient_adapter_overwrites_only_the_malicious_replies(kind):
    for n, f, d, seed in CASES[::5]:
        U, flags = honest_rows(n, f, d, seed)
        glob = np.random.default_rng(seed).normal(size=d).astype(np.float32)
        models = (glob + U).astype(np.float32)
        sent = as_updates(glob, models)
        replies = [reply(i + 1, m) for i, m in enumerate(models)]
        for pid, msg in enumerate(replies):
            msg.content["metrics"]["partition-id"] = pid
        inner = Capture()
        strategy = OmniscientAttack(inner, kind, malicious=[i for i in range(n) if flags[i]])
        strategy.global_arrays = records(glob)
        strategy.aggregate_train(1, replies)
        got = np.array([np.concatenate([a.numpy().ravel() for a in m.content["arrays"].values()])
                        for m in inner.replies], dtype=np.float64) - glob
        H = sent[:n - f]
        if kind == "alie":
            expected = ref_alie(H, ref_alie_z(n, f))
        elif kind == "ipm":
            expected = -0.5 * H.mean(axis=0)
        else:
            p = ref_perturbation(H, "unit_vec")
            expected = H.mean(axis=0) + ref_agr_gamma(H, p, kind) * p
        np.testing.assert_allclose(got[:n - f], H, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[n - f:], np.tile(expected, (f, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["minmax", "minsum"])
@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_agr_agnostic_gamma_is_the_largest_feasible(kind, perturbation):
    for n, f, d, seed in CASES:
        U, _ = honest_rows(n, f, d, seed)
        H = U[:n - f]
        crafted, gamma = agr_agnostic_update(t64(H), kind, perturbation)
        p = ref_perturbation(H, perturbation)
        best = ref_agr_gamma(H, p, kind)
        assert best * (1 - 2e-5) <= gamma <= best * (1 + 1e-12), (n, f, d, seed)
        np.testing.assert_allclose(crafted.numpy(), H.mean(axis=0) + gamma * p, rtol=1e-12, atol=1e-12)
        # the paper's condition holds at the crafted update
        dist = ((crafted.numpy() - H) ** 2).sum(axis=1)
        D = ref_sq_dists(H)
        if kind == "minmax":
            assert dist.max() <= D.max() * (1 + 1e-9)
        else:
            assert dist.sum() <= D.sum(axis=1).max() * (1 + 1e-9)


@pytest.mark.parametrize("b", [1.5, 2.0, 4.0])
def test_fang_trimmed_mean_draws_from_the_papers_intervals(b):
    for n, f, d, seed in CASES:
        U, _ = honest_rows(n, f, d, seed)
        H = U[:n - f]
        H[:, :2] = np.abs(H[:, :2]) + 0.1  # coordinates of every sign case: all > 0 ...
        H[:, 2:4] = -np.abs(H[:, 2:4]) - 0.1  # ... all < 0
        gen = torch.Generator().manual_seed(seed)
        got = fang_trim_updates(t64(H), f, b, gen).numpy()
        u = torch.rand((f, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        near, far = ref_fang_interval(H, b)
        np.testing.assert_allclose(got, near + u * (far - near), rtol=1e-12, atol=1e-12)
        lo, hi = np.minimum(near, far), np.maximum(near, far)
        assert ((got >= lo - 1e-12) & (got <= hi + 1e-12)).all()
        s = np.sign(H.mean(axis=0))  # against the benign direction: beyond the benign extremes
        assert (got[:, s < 0] >= H.max(axis=0)[s < 0] - 1e-12).all()
        assert (got[:, s > 0] <= H.min(axis=0)[s > 0] + 1e-12).all()


def test_fang_trimmed_mean_through_crafted_updates_is_one_draw_per_malicious_reply():
    U, flags = honest_rows(11, 3, 40, 0)
    got, _ = crafted_updates("fang", list(t64(U)), flags, OmniscientSettings(fang_target="trimmed_mean"), 4)
    near, far = ref_fang_interval(U[:8], 2.0)
    lo, hi = np.minimum(near, far), np.maximum(near, far)
    assert got.shape == (3, 40) and ((got.numpy() >= lo - 1e-12) & (got.numpy() <= hi + 1e-12)).all()
    assert not np.allclose(got[0].numpy(), got[1].numpy())


def test_fang_krum_lambda_and_update():
    for n, f, d, seed in CASES:
        if n <= 2 * f + 2:
            continue
        U, flags = honest_rows(n, f, d, seed)
        H = U[:n - f]
        crafted, lam = fang_krum_update(t64(H), f)
        ref, ref_lam = ref_fang_krum(H, f)
        assert lam == pytest.approx(ref_lam, rel=1e-9), (n, f, d, seed)
        np.testing.assert_allclose(crafted.numpy(), ref, rtol=1e-12, atol=1e-12)
        via, notes = crafted_updates("fang", list(t64(U)), flags, OmniscientSettings(fang_target="krum"))
        assert notes["fang_lambda"] == pytest.approx(ref_lam, rel=1e-9)
        np.testing.assert_allclose(via.numpy(), np.tile(ref, (f, 1)), rtol=1e-12, atol=1e-12)


# ================================================================ client-side model poisoning

def attack_round(name: str, seed: int, d: int = 40, partition_id: int = 3, server_round: int = 2, **attack):
    rng = np.random.default_rng(seed)
    cfg = OmegaConf.create({"seed": seed, "attack": {"name": name, "scale": 1.0, "noise_std": 0.1, **attack}})
    honest = torch.from_numpy(rng.normal(size=d).astype(np.float32))
    mask = torch.from_numpy(rng.random(d) < 0.8)  # False: BatchNorm-statistics-like coordinates
    return AttackRound(cfg, server_round, None, None, torch.device("cpu"), 10, partition_id, "attack",
                       torch.zeros(d), None, honest, 0.5, mask)


@pytest.mark.parametrize("seed", range(5))
def test_sign_flip_and_scaling(seed):
    r = attack_round("sign_flip", seed)
    h, m = r.honest_update.double().numpy(), r.mask.numpy()
    out = ATTACKS.get("sign_flip")(r)
    assert out.attacking and torch.equal(out.honest_update, r.honest_update)
    np.testing.assert_array_equal(out.update.double().numpy(), np.where(m, -h, h))
    for scale in (-4.0, 0.5, 10.0):
        r = attack_round("scaling", seed, scale=scale)
        h, m = r.honest_update.double().numpy(), r.mask.numpy()
        np.testing.assert_allclose(ATTACKS.get("scaling")(r).update.double().numpy(), np.where(m, scale * h, h),
                                   rtol=1e-6)


def test_gaussian_is_zero_mean_with_the_given_std_on_parameters_only():
    sigma = 0.3
    r = attack_round("gaussian", 0, d=20000, noise_std=sigma)
    out = ATTACKS.get("gaussian")(r).update.double().numpy()
    m = r.mask.numpy()
    assert (out[~m] == 0).all()
    assert stats.kstest(out[m] / sigma, "norm").pvalue > 1e-3
    again = ATTACKS.get("gaussian")(attack_round("gaussian", 0, d=20000, noise_std=sigma)).update
    other = ATTACKS.get("gaussian")(attack_round("gaussian", 0, d=20000, noise_std=sigma, partition_id=4)).update
    assert torch.equal(again, torch.from_numpy(out).float())  # seeded by (seed, round, partition)
    assert abs(np.corrcoef(out[m], other.double().numpy()[m])[0, 1]) < 0.05  # independent across clients


# ================================================================ ByzFL

@pytest.fixture(scope="module")
def byzfl():
    """ByzFL's `aggregators` and `attacks` subpackages, without its package `__init__` (which
    imports torchvision through `fed_framework`): a bare package shell stands in for `byzfl`."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None:
            pytest.importorskip("byzfl")  # skips
        shell = types.ModuleType("byzfl")
        shell.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = shell
    aggregators = pytest.importorskip("byzfl.aggregators")
    attacks = pytest.importorskip("byzfl.attacks")
    return types.SimpleNamespace(agg=aggregators, att=attacks, version=importlib.metadata.version("byzfl"))


def test_byzfl_median_and_trimmed_mean(byzfl):
    """ByzFL's TrMean(f) cuts f at each end: fedguard's trimmed_mean with trim_beta null."""
    for n, f, d, seed in CASES:
        glob, models, examples = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        np.testing.assert_allclose(run_round(registered("median", n, f), glob, models, examples),
                                   glob + byzfl.agg.Median()(U), **TOL)
        np.testing.assert_allclose(run_round(registered("trimmed_mean", n, f, trim_beta=None), glob, models, examples),
                                   glob + byzfl.agg.TrMean(f=f)(U), **TOL)


def test_byzfl_krum_counts_one_neighbour_more(byzfl):
    """ByzFL's Krum(f) scores with the n - f - 1 nearest (Blanchard et al.: n - f - 2): it is
    fedguard's Krum with f + 1 assumed attackers."""
    differs = 0
    for n, f, d, seed in CASES:
        glob, models, examples = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        theirs = byzfl.agg.Krum(f=f)(U)
        np.testing.assert_array_equal(theirs, U[ref_krum_order(U, f, k=n - f - 1)[0]])
        got = run_round(registered("krum", n, f - 1), glob, models, examples)  # k = n - (f-1) - 2
        np.testing.assert_allclose(got, glob + theirs, **TOL)
        differs += not np.array_equal(theirs, U[ref_krum_order(U, f)[0]])
    assert differs > 0  # on these rounds the neighbour count changes Krum's pick (5 of 30)


def test_byzfl_multikrum(byzfl):
    """ByzFL's MultiKrum(f): the plain mean of the n - f best scores with n - f - 1 neighbours;
    fedguard's: the num-examples-weighted mean of m best with n - f - 2. Equal examples,
    fedguard f' = f - 1, m = n - f."""
    for n, f, d, seed in CASES:
        glob, models, _ = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        got = run_round(MultiKrum(f - 1, n - f), glob, models, np.ones(n))
        np.testing.assert_allclose(got, glob + byzfl.agg.MultiKrum(f=f)(U), **TOL)


def test_byzfl_geometric_median(byzfl):
    """ByzFL's smoothed Weiszfeld (from 0, T iterations, unweighted) and fedguard's (from the
    weighted mean, until the objective settles) converge to the same point."""
    for n, f, d, seed in CASES[::2]:
        glob, models, _ = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        theirs = byzfl.agg.GeometricMedian(nu=1e-12, T=3000)(U)
        ours = run_round(GeometricMedian(nu=1e-12, iters=3000, tol=0.0), glob, models, np.ones(n))
        np.testing.assert_allclose(ours, glob + theirs, **TOL)


def test_byzfl_centered_clipping_over_two_rounds(byzfl):
    """ByzFL's CenteredClipping keeps its last output as the next center, as init="previous"."""
    for n, f, d, seed in CASES[::3]:
        theirs = byzfl.agg.CenteredClipping(L=3, tau=2.0)
        ours = CenteredClipping(tau=2.0, iters=3, init="previous")
        for rnd in (1, 2):
            glob, models, examples = round_inputs(n, f, d, 100 * seed + rnd)
            got = run_round(ours, glob, models, examples, server_round=rnd)
            np.testing.assert_allclose(got, glob + theirs(as_updates(glob, models)), **TOL)


def test_byzfl_clipping_then_average(byzfl):
    for n, f, d, seed in CASES[::2]:
        glob, models, _ = round_inputs(n, f, d, seed)
        U = as_updates(glob, models)
        got = run_round(NormClipping(FedAvg(), clip_norm=5.0), glob, models, np.ones(n))
        np.testing.assert_allclose(got, glob + byzfl.agg.Average()(byzfl.agg.Clipping(c=5.0)(U.copy())), **TOL)


def test_byzfl_alie_ipm_and_sign_flipping(byzfl):
    """ByzFL's ALIE(tau) = mean + tau * std (ddof = 1): fedguard's with z = -tau sqrt(k / (k-1));
    IPM(tau) = -tau * mean: fedguard's eps = tau; SignFlipping = -mean of the honest updates:
    fedguard's IPM with eps = 1 (fedguard's sign_flip negates the client's own update)."""
    for n, f, d, seed in CASES:
        U, flags = honest_rows(n, f, d, seed)
        k = n - f
        for tau in (0.5, 1.5):
            ours, _ = crafted_updates("alie", list(t64(U)), flags, OmniscientSettings(z=-tau * np.sqrt(k / (k - 1))))
            np.testing.assert_allclose(ours[0].numpy(), byzfl.att.ALittleIsEnough(tau=tau)(U[:k]), rtol=1e-10,
                                       atol=1e-12)
            ours, _ = crafted_updates("ipm", list(t64(U)), flags, OmniscientSettings(eps=tau))
            np.testing.assert_allclose(ours[0].numpy(), byzfl.att.InnerProductManipulation(tau=tau)(U[:k]),
                                       rtol=1e-12, atol=1e-12)
        ours, _ = crafted_updates("ipm", list(t64(U)), flags, OmniscientSettings(eps=1.0))
        np.testing.assert_allclose(ours[0].numpy(), byzfl.att.SignFlipping()(U[:k]), rtol=1e-12, atol=1e-12)


def test_byzfl_version_is_the_one_these_mappings_were_written_for(byzfl):
    assert byzfl.version == "0.0.11", "the mappings above follow byzfl 0.0.11's definitions; re-read them"
