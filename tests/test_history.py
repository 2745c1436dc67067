"""Model history ring buffer and threshold rules."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from fedguard.defense.history import ModelHistory
from fedguard.defense.thresholds import robust_threshold, schedule_threshold


def vec(r: int, n: int = 6) -> torch.Tensor:
    return torch.full((n,), float(r))


def test_ring_evicts_oldest_first():
    h = ModelHistory(size=3)
    for r in range(5):
        assert h.push(r, vec(r))
    assert h.rounds == [2, 3, 4] and len(h) == 3
    assert [s.params[0].item() for s in h.reference("all")] == [2.0, 3.0, 4.0]


def test_push_copies_input():
    h = ModelHistory(size=2)
    v = vec(1)
    h.push(1, v)
    v += 100
    assert h.reference("lag", 0)[0].params[0].item() == 1.0


def test_stride_keeps_every_stride_rounds_and_the_first():
    h = ModelHistory(size=10, stride=3)
    stored = [r for r in range(1, 11) if h.push(r, vec(r))]
    assert stored == [1, 3, 6, 9] and h.rounds == [1, 3, 6, 9]


def test_rounds_must_increase():
    h = ModelHistory(size=2)
    h.push(4, vec(4))
    with pytest.raises(ValueError):
        h.push(4, vec(4))


def test_reference_modes():
    h = ModelHistory(size=4)
    with pytest.raises(LookupError):
        h.reference("lag", 0)
    for r in (10, 11, 12, 13, 14):
        h.push(r, vec(r))
    assert [s.round for s in h.reference("lag", 0)] == [14]
    assert [s.round for s in h.reference("lag", 2)] == [12]
    assert [s.round for s in h.reference("lag", 99)] == [11]  # clamped to oldest
    assert [s.round for s in h.reference("oldest")] == [11]
    assert [s.round for s in h.reference("all")] == [11, 12, 13, 14]
    with pytest.raises(ValueError):
        h.reference("newest")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype, width", [(torch.float32, 4), ("float16", 2), (torch.bfloat16, 2)])
def test_nbytes_and_reduced_precision(dtype, width):
    h = ModelHistory(size=3, dtype=dtype)
    x = torch.randn(1000)
    for r in range(5):
        h.push(r, x + r)
    assert h.nbytes == 3 * 1000 * width
    ref = h.reference("lag", 0)[0].params
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref, x + 4, rtol=1e-2 if width == 2 else 0, atol=5e-2 if width == 2 else 0)


def test_state_dict_round_trip_through_torch_save():
    h = ModelHistory(size=3, stride=2, dtype="float16")
    for r in range(9):
        h.push(r, torch.randn(50))
    buf = io.BytesIO()
    torch.save(h.state_dict(), buf)
    buf.seek(0)
    g = ModelHistory(size=3, stride=2, dtype="float16")
    g.load_state_dict(torch.load(buf))
    assert g.rounds == h.rounds == [4, 6, 8]
    for a, b in zip(g.reference("all"), h.reference("all")):
        assert a.round == b.round and torch.equal(a.params, b.params)
    assert g.nbytes == h.nbytes
    assert not g.push(9, torch.zeros(50)) and g.push(10, torch.zeros(50)) and g.rounds == [6, 8, 10]


def test_invalid_settings():
    with pytest.raises(ValueError):
        ModelHistory(size=0)
    with pytest.raises(ValueError):
        ModelHistory(size=2, dtype="float64")


def test_schedule_threshold():
    assert schedule_threshold(0) == 0.5
    assert schedule_threshold(10) == pytest.approx(0.7)
    assert schedule_threshold(3, tau0=1.0, slope=0.5) == 2.5


def test_robust_threshold_flags_planted_outlier_only():
    rng = np.random.default_rng(0)
    inliers = 0.05 + 0.005 * rng.standard_normal(9)
    scores = np.append(inliers, 0.5)
    history = 0.05 + 0.005 * rng.standard_normal(20)
    thr = robust_threshold(scores, history, k=3.0)
    assert np.all(inliers <= thr) and scores[-1] > thr
    # without history too, and with a minority (3 of 10) of outliers
    scores3 = np.concatenate([inliers[:7], [0.4, 0.5, 0.6]])
    thr3 = robust_threshold(scores3, (), k=3.0)
    assert np.all(inliers[:7] <= thr3) and np.all(scores3[7:] > thr3)


def test_robust_threshold_rule_and_edges():
    pool = [1.0, 2.0, 3.0, 4.0, 100.0]  # median 3, MAD 1
    assert robust_threshold(pool[:3], pool[3:], k=2.0) == pytest.approx(3 + 2 * 1.4826)
    assert robust_threshold([1.0, 2.0], [], min_history=5) == math.inf
    assert robust_threshold([1.0, 2.0], [], min_history=5, fallback=0.7) == 0.7
    equal = robust_threshold([0.2] * 6, [], k=3.0, rel_floor=0.01)  # MAD = 0: relative floor
    assert equal == pytest.approx(0.2 + 3 * 0.002)
    assert robust_threshold([1.0, 2.0, 3.0, np.nan, np.inf, 4.0, 5.0], []) == pytest.approx(3 + 3 * 1.4826)


def test_batched_scale_correction_matches_scalar_bisection():
    import torch

    from fedguard.defense.correction import batched_scale_correction, scale_correction

    # md(alpha) = c * alpha^2 + m0 per update (the small-update shape of KL), some infeasible at 0
    c = torch.tensor([0.5, 4.0, 100.0, 1.0])
    m0 = torch.tensor([0.0, 0.0, 0.0, 2.0])
    tau = 1.0
    batched = batched_scale_correction(lambda a: c * a**2 + m0, tau, 4)
    scalar = [scale_correction(lambda a, i=i: float(c[i] * a**2 + m0[i]), tau) for i in range(4)]
    assert torch.allclose(batched, torch.tensor(scalar), atol=1e-6)
    assert batched[0] == 1.0 and batched[3] == 0.0
    assert abs(float(batched[1]) - 0.5) < 1e-5 and abs(float(batched[2]) - 0.1) < 1e-5
