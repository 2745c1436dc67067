"""Model history ring buffer and threshold rules."""

from __future__ import annotations

import io

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


DTYPES = ["float32", "float16", "bfloat16"]


def rss() -> int:
    """Resident bytes after handing the allocator's free memory back to the OS (glibc's
    malloc_trim), so that the number follows live allocations, not the allocator's cache."""
    import ctypes
    import ctypes.util

    import psutil

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("dtype", DTYPES)
def test_spilled_references_are_bit_identical_to_in_memory(dtype, tmp_path):
    mem = ModelHistory(size=3, stride=2, dtype=dtype)
    disk = ModelHistory(size=3, stride=2, dtype=dtype, spill=True, spill_dir=tmp_path / "h")
    g = torch.Generator().manual_seed(0)
    for r in range(10):
        x = torch.randn(1000, generator=g) * 10.0 ** (r - 4)  # magnitudes from 1e-4 to 1e5 (float16 overflows)
        assert mem.push(r, x) == disk.push(r, x)
    assert disk.rounds == mem.rounds == [4, 6, 8]
    for mode, k in (("all", 0), ("lag", 1), ("oldest", 0)):
        for a, b in zip(disk.reference(mode, k), mem.reference(mode, k), strict=True):
            assert a.round == b.round and a.params.dtype == torch.float32
            assert torch.equal(a.params.view(torch.int32), b.params.view(torch.int32))  # bitwise (incl. inf)


def test_spill_deletes_evicted_files_and_holds_no_tensors(tmp_path):
    h = ModelHistory(size=3, dtype="float16", spill=True, spill_dir=tmp_path)
    for r in range(7):
        h.push(r, torch.randn(5000))
        assert len(list(tmp_path.iterdir())) == min(r + 1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"snapshot_r{r:09d}.pt" for r in (4, 5, 6)]
    assert h.nbytes == 0 and 3 * 5000 * 2 <= h.disk_bytes < 3 * 5000 * 2 + 3 * 4096
    assert not any(isinstance(item, torch.Tensor) for _, item in h._items)
    h.close()
    assert list(tmp_path.iterdir()) == [] and len(h) == 0


def test_spill_without_directory_uses_a_temporary_one_removed_with_the_history():
    import gc

    h = ModelHistory(size=2, spill=True)
    h.push(0, torch.ones(10))
    tmp = h.spill_dir
    assert tmp is not None and len(list(tmp.iterdir())) == 1
    del h
    gc.collect()
    assert not tmp.exists()


def test_spill_memory_stays_flat(tmp_path):
    """8 snapshots of 16 MB each: 128 MB in memory, only transient copies when spilled."""
    n = 4 * 2**20
    x = torch.randn(n)
    h = ModelHistory(size=8, spill=True, spill_dir=tmp_path)
    h.push(0, x)  # warm up torch.save
    before = rss()
    for r in range(1, 9):
        h.push(r, x + r)
    grown = rss() - before
    assert h.nbytes == 0 and h.disk_bytes >= 8 * n * 4
    assert grown < 48 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB while spilling 128 MiB of snapshots"


def test_spilled_state_dict_round_trip_and_stale_files(tmp_path):
    h = ModelHistory(size=3, stride=2, dtype="bfloat16", spill=True, spill_dir=tmp_path / "a")
    for r in range(9):
        h.push(r, torch.randn(50))
    state = h.state_dict()
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in state["snapshots"])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    # a resumed run: the directory still holds the killed run's files, which a new history clears
    h._finalizer.detach()  # killed: its files are not cleaned up
    (tmp_path / "a" / "snapshot_r000000099.pt.tmp").write_bytes(b"torn")
    g = ModelHistory(size=3, stride=2, dtype="bfloat16", spill=True, spill_dir=tmp_path / "a")
    assert list((tmp_path / "a").iterdir()) == []
    g.load_state_dict(loaded)
    assert g.rounds == [4, 6, 8] and g.nbytes == 0 and len(list((tmp_path / "a").iterdir())) == 3
    mem = ModelHistory(size=3, stride=2, dtype="bfloat16")
    mem.load_state_dict(loaded)
    for a, b in zip(g.reference("all"), mem.reference("all"), strict=True):
        assert a.round == b.round and torch.equal(a.params, b.params)
    g.load_state_dict(mem.state_dict())  # re-spilling over its own files
    assert len(list((tmp_path / "a").iterdir())) == 3 and g.rounds == [4, 6, 8]
    assert not g.push(9, torch.zeros(50)) and g.push(10, torch.zeros(50)) and g.rounds == [6, 8, 10]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"snapshot_r{r:09d}.pt" for r in (6, 8, 10)]


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
    inliers = 0.05 * np.exp(0.1 * rng.standard_normal(9))  # log-normal honest scores
    scores = np.append(inliers, 0.5)
    past = [(0.05, list(0.05 * np.exp(0.1 * rng.standard_normal(20))))]
    thr = robust_threshold(scores, past, k=2.5)
    assert np.all(inliers <= thr) and scores[-1] > thr
    # without history too, and with a minority (3 of 10) of outliers
    scores3 = np.concatenate([inliers[:7], [0.4, 0.5, 0.6]])
    thr3 = robust_threshold(scores3, (), k=2.5)
    assert np.all(inliers[:7] <= thr3) and np.all(scores3[7:] > thr3)


def test_robust_threshold_by_hand():
    # logs 0, 1, 2, 3, 4 (median 2, MAD 1): exp(2 + 2 * 1.4826)
    scores = np.exp([0.0, 1.0, 2.0])
    assert robust_threshold(scores, [], k=2.0) == pytest.approx(np.exp(1 + 2 * 1.4826))
    # a past round at twice this round's median is rescaled to this round's level:
    # e^3 and e^4 accepted at median 2 * e^1 count as e^3 / 2 and e^4 / 2
    past = [(2 * np.exp(1.0), [np.exp(3.0), np.exp(4.0)])]
    pooled = np.log(np.concatenate([scores, np.exp([3.0, 4.0]) / 2]))
    med = np.median(pooled)
    expected = np.exp(med + 2.0 * 1.4826 * np.median(np.abs(pooled - med)))
    assert robust_threshold(scores, past, k=2.0) == pytest.approx(expected)
    # rounds with a non-positive median are left out
    assert robust_threshold(scores, [(0.0, [1e6])], k=2.0) == pytest.approx(np.exp(1 + 2 * 1.4826))
    # equal scores (MAD 0): the spread floor, e^(k * 0.1) x the median
    assert robust_threshold(np.full(6, 0.2), [], k=3.0, min_log_spread=0.1) == pytest.approx(0.2 * np.exp(0.3))
    # an MD of 0 stays finite (clipped at 1e-12 before the log)
    assert np.isfinite(robust_threshold(np.array([0.0, 0.0, 1.0]), []))


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


def test_batched_scale_correction_with_known_ends_matches_and_saves_two_calls():
    import torch

    from fedguard.defense.correction import batched_scale_correction

    c = torch.tensor([0.5, 4.0, 100.0, 1.0])
    m0 = torch.tensor([0.0, 0.0, 0.0, 2.0])
    calls = []

    def md(a):
        calls.append(a.clone())
        return c * a**2 + m0

    plain = batched_scale_correction(md, 1.0, 4, iters=8)
    assert len(calls) == 8 + 2
    calls.clear()
    known = batched_scale_correction(md, 1.0, 4, iters=8, md_one=c + m0, md_zero=m0)
    assert len(calls) == 8  # neither alpha = 1 nor alpha = 0 is evaluated again
    assert torch.equal(plain, known)
    # 8 steps: within 2**-8 below the edge sqrt(tau / c), and always feasible
    edge = torch.sqrt(1.0 / c[1:3])
    assert torch.all(known[1:3] <= edge) and torch.all(edge - known[1:3] < 2**-8)
