"""mddsc at scale: what the history's storage precision and spilling cost and change, and what
chunked candidate scoring costs.

    python benchmarks/history_precision.py [--models resnet18,cnn] [--snapshots 10] [--candidates 20]
                                           [--val 64] [--score-k 100,200] [--score-chunks none,25]
                                           [--score-val 32] [--out benchmarks/results]

Single-threaded CPU (torch.set_num_threads(1)); about two minutes in all.

1. Trajectory: for each model (resnet18 on 3x32x32, cnn on 1x28x28, 10 classes), K global
   models 0..K-1: the initial model, then a few SGD steps (batch 32, lr 0.05) on synthetic
   class-conditional images between snapshots (BatchNorm running statistics move too).
2. Storage: the K snapshots pushed into a `ModelHistory` (size K) in float32 / float16 /
   bfloat16, in memory and spilled to a temporary directory (the filesystem type is reported:
   on tmpfs "disk" is RAM). Reported: `nbytes` (tensors held in memory), `disk_bytes` (spill
   files), time to push the K snapshots (median of 3 fresh histories), time to fetch the lag-1
   reference and all K snapshots (median of 5; spilled files are read from a warm page cache, a
   cold disk read is slower; a float32 in-memory reference is the stored tensor itself, no copy).
   Wall-clock times on a shared machine: expect +-30% noise.
3. Effect on MD: 20 candidates = the last global model itself plus, on its parameters only
   (BatchNorm buffers are the global's), 15 honest-like updates (the last global step d scaled
   by 1 + 0.2 N(0,1), plus Gaussian noise of half its norm) and 4 boosted ones (3d, 3d, 5d, 5d,
   plus the same noise: the "malicious" ones, indices 16..19; a sign-flipped -4d scored below
   the honest ones against the lag-1 reference in a trial, MD being one-sided, so it would not
   exercise the flag decision). Each candidate's mean MD over `--val`
   synthetic samples against the lag-1 reference read back from each precision. The candidates'
   logits do not depend on the history's precision, so they are computed once and the score is
   `md_per_sample(reference logits, candidate logits)` (the function `batched_md` applies).
   Reported vs float32: max absolute and relative score difference, whether the ranking
   changes, and whether the flags of mddsc's robust threshold (`MDDSC.threshold`, rule robust,
   k=3, min_log_spread=0.1, no accepted-score window yet) change. Spilled references are
   checked bit-identical to in-memory ones of the same dtype.
4. Chunked scoring: `batched_md` (what `MDDSC.scores` calls) of 100 and 200 cnn candidates on
   `--score-val` samples, `chunk_size` None vs 25, each configuration in a fresh subprocess.
   Time: median of 3 calls after a warm-up. Peak memory: the kernel's resident-set high-water
   mark (VmHWM, reset through /proc/self/clear_refs right before the calls) minus the resident
   set just before them, i.e. the extra resident memory the scoring call needs (activations,
   vmap's expanded inputs, allocator slack); the `[K, P]` stacked candidates, already resident,
   are not in it (reported separately). torch's CPU allocations are invisible to tracemalloc,
   hence RSS. Where clear_refs is unavailable it falls back to ru_maxrss of the fresh process
   minus the pre-call RSS (an upper bound that may include set-up).

Writes OUT/history_precision.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedguard.defense.history import ModelHistory  # noqa: E402
from fedguard.defense.thresholds import robust_threshold  # noqa: E402
from fedguard.defense.md import batched_md, md_per_sample, unflatten_state  # noqa: E402
from fedguard.models import build_model, exchanged_state  # noqa: E402
from fedguard.training import sgd_steps  # noqa: E402

SHAPES = {"resnet18": (3, 32, 32), "cnn": (1, 28, 28)}
STEPS_BETWEEN = {"resnet18": 2, "cnn": 5}  # SGD steps between consecutive global models
DTYPES = ("float32", "float16", "bfloat16")
NUM_CLASSES = 10
MALICIOUS = (16, 17, 18, 19)


# ---------------------------------------------------------------------------- helpers
def flat_of(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1).float() for v in exchanged_state(model).values()])


def param_mask(model: torch.nn.Module) -> torch.Tensor:
    """True at the positions of the flat vector that are parameters (not BatchNorm buffers)."""
    params = {name for name, _ in model.named_parameters()}
    return torch.cat([torch.full((v.numel(),), name in params) for name, v in exchanged_state(model).items()])


class Synthetic:
    """Class-conditional images: a fixed random mean image per class plus unit noise."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0):
        self.g = torch.Generator().manual_seed(seed)
        self.means = torch.randn(NUM_CLASSES, *shape, generator=self.g)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, NUM_CLASSES, (n,), generator=self.g)
        return self.means[y] + torch.randn(n, *self.means.shape[1:], generator=self.g), y


def trajectory(name: str, k: int, data: Synthetic) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(name, SHAPES[name], NUM_CLASSES)
    snaps = [flat_of(model)]
    for _ in range(k - 1):
        sgd_steps(model, [data.batch(32) for _ in range(STEPS_BETWEEN[name])], 0.05, 0.0, torch.device("cpu"))
        snaps.append(flat_of(model))
    return model.eval(), snaps


def fs_type(path: Path) -> str:
    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (best is None or len(part.mountpoint) > len(best.mountpoint)):
            best = part
    return f"{best.fstype} ({best.mountpoint})" if best else "unknown"


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def robust_flags(scores: np.ndarray, server_round: int) -> tuple[float, list[int]]:
    """mddsc's own robust rule (`thresholds.robust_threshold`), first round of its window."""
    tau = robust_threshold(scores, (), k=3.0, min_log_spread=0.1)
    return tau, [int(i) for i in np.flatnonzero(scores > tau)]


# ---------------------------------------------------------------------------- storage and precision
def storage_rows(name: str, snaps: list[torch.Tensor], spill_root: Path) -> tuple[list[dict], dict]:
    rows, refs = [], {}
    for dtype in DTYPES:
        for spill in (False, True):
            def fresh(dtype=dtype, spill=spill) -> ModelHistory:
                return ModelHistory(len(snaps), 1, dtype, spill=spill,
                                    spill_dir=spill_root / f"{name}-{dtype}" if spill else None)

            push_times = []
            for _ in range(3):  # a fresh history each time (a spilling one clears its directory)
                h = fresh()
                t0 = time.perf_counter()
                for r, snap in enumerate(snaps):
                    h.push(r, snap)
                push_times.append(time.perf_counter() - t0)
                if len(push_times) < 3:
                    h.close()
            push_s = float(np.median(push_times))
            lag_s, lag = timed(lambda h=h: h.reference("lag", 1), repeats=5)
            all_s, _ = timed(lambda h=h: h.reference("all"), repeats=5)
            rows.append({"model": name, "dtype": dtype, "spill": spill, "params": snaps[0].numel(),
                         "memory_bytes": h.nbytes, "disk_bytes": h.disk_bytes, "push_k_s": push_s,
                         "fetch_lag1_s": lag_s, "fetch_all_s": all_s})
            refs[(dtype, spill)] = lag[0].params
            h.close()
    identical = {d: bool(torch.equal(refs[(d, True)].view(torch.int32), refs[(d, False)].view(torch.int32)))
                 for d in DTYPES}
    return rows, {"spill_bit_identical": identical, "references": {d: refs[(d, False)] for d in DTYPES}}


def candidates(model: torch.nn.Module, snaps: list[torch.Tensor], n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    last, step = snaps[-1], snaps[-1] - snaps[-2]
    mask = param_mask(model).float()
    step = step * mask
    unit = step.norm()

    def noise(rel: float) -> torch.Tensor:
        z = torch.randn(last.numel(), generator=g) * mask
        return z * (rel * unit / z.norm())

    rows = [last]
    for i in range(1, n):
        if i in MALICIOUS:
            boost = 3.0 if i in MALICIOUS[:2] else 5.0
            rows.append(last + boost * step + noise(0.5))
        else:
            rows.append(last + step * (1 + 0.2 * float(torch.randn((), generator=g))) + noise(0.5))
    return torch.stack(rows)


def precision_rows(name: str, model: torch.nn.Module, snaps: list[torch.Tensor], refs: dict,
                   n_candidates: int, n_val: int, data: Synthetic) -> list[dict]:
    x, _ = data.batch(n_val)
    stacked = candidates(model, snaps, n_candidates)
    with torch.no_grad():
        logits_c = [torch.func.functional_call(model, unflatten_state(model, c), (x,)) for c in stacked]
        scores = {}
        for dtype, ref in refs.items():
            logits_h = torch.func.functional_call(model, unflatten_state(model, ref), (x,))
            scores[dtype] = np.array([float(md_per_sample(logits_h, lc).mean()) for lc in logits_c])
    # the shortcut is exactly batched_md's math: check on a few candidates
    check = batched_md(model, refs["float32"], stacked[:3], x).mean(dim=1).numpy()
    assert np.allclose(check, scores["float32"][:3], rtol=1e-4, atol=1e-7), (check, scores["float32"][:3])
    base = scores["float32"]
    _, flags32 = robust_flags(base, len(snaps))
    rows = []
    for dtype in DTYPES:
        s = scores[dtype]
        tau, flags = robust_flags(s, len(snaps))
        rows.append({"model": name, "dtype": dtype, "candidates": n_candidates, "val_samples": n_val,
                     "max_abs_diff": float(np.max(np.abs(s - base))),
                     "max_rel_diff": float(np.max(np.abs(s - base) / np.maximum(base, 1e-12))),
                     "ranking_changed": bool(not np.array_equal(np.argsort(s), np.argsort(base))),
                     "flags_changed": flags != flags32, "flagged": flags, "threshold": tau,
                     "score_min": float(s.min()), "score_median": float(np.median(s)), "score_max": float(s.max()),
                     "malicious": list(MALICIOUS), "scores": [float(v) for v in s]})
    return rows


# ---------------------------------------------------------------------------- chunked scoring
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def score_worker(k: int, chunk: int | None, n_val: int, repeats: int) -> dict:
    """Runs in a fresh process: time and peak extra RSS of batched_md over k cnn candidates."""
    import ctypes
    import ctypes.util
    import resource

    torch.set_num_threads(1)
    data = Synthetic(SHAPES["cnn"])
    torch.manual_seed(0)
    model = build_model("cnn", SHAPES["cnn"], NUM_CLASSES).eval()
    base = flat_of(model)
    g = torch.Generator().manual_seed(2)
    stacked = base + 0.01 * torch.randn(k, base.numel(), generator=g)
    x, _ = data.batch(n_val)
    batched_md(model, base, stacked[:2], x, chunk_size=chunk)  # warm-up (kernels, thread pool)
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after /proc/self/clear_refs reset, minus pre-call VmRSS"
    except OSError:
        method = None
    rss0 = _status_kib("VmRSS") if method else psutil.Process().memory_info().rss // 1024
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = batched_md(model, base, stacked, x, chunk_size=chunk)
        times.append(time.perf_counter() - t0)
        del out
    if method:
        peak_kib = _status_kib("VmHWM") - rss0
    else:
        method = "ru_maxrss of the fresh process minus pre-call RSS (upper bound, may include set-up)"
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    return {"candidates": k, "chunk": chunk, "val_samples": n_val, "params": base.numel(),
            "stacked_mib": stacked.numel() * 4 / 2**20, "time_s": float(np.median(times)),
            "time_per_candidate_ms": 1e3 * float(np.median(times)) / k,
            "peak_extra_rss_mib": peak_kib / 1024, "memory_method": method}


def scoring_rows(ks: list[int], chunks: list[int | None], n_val: int, repeats: int) -> list[dict]:
    rows = []
    for k in ks:
        for chunk in chunks:
            cmd = [sys.executable, __file__, "--_worker", json.dumps([k, chunk, n_val, repeats])]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"scoring worker k={k} chunk={chunk} failed:\n{out.stderr[-2000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  scoring k={k} chunk={chunk}: {row['time_s']:.2f} s, "
                  f"+{row['peak_extra_rss_mib']:.0f} MiB", flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- report
def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def tables(result: dict) -> str:
    out = [f"### History storage (K = {result['snapshots']} snapshots; spill dir on {result['spill_fs']})", "",
           "| model | params | dtype | spill | memory MiB | disk MiB | push K s | fetch lag-1 s | fetch all s |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in result["storage"]:
        out.append(f"| {r['model']} | {r['params']:,} | {r['dtype']} | {'yes' if r['spill'] else 'no'} | "
                   f"{mib(r['memory_bytes'])} | {mib(r['disk_bytes'])} | {r['push_k_s']:.3f} | "
                   f"{r['fetch_lag1_s']:.4f} | {r['fetch_all_s']:.3f} |")
    out += ["", "Spilled references bit-identical to in-memory ones: " + ", ".join(
        f"{m}: {all(v.values())}" for m, v in result["spill_bit_identical"].items()), ""]
    out += ["### MD against the lag-1 reference stored in each precision (vs float32)", "",
            "| model | dtype | max abs diff | max rel diff | ranking changed | flags changed | flagged | score range (median) |",
            "|---|---|---:|---:|---|---|---|---|"]
    for r in result["precision"]:
        out.append(f"| {r['model']} | {r['dtype']} | {r['max_abs_diff']:.2e} | {r['max_rel_diff']:.2e} | "
                   f"{'yes' if r['ranking_changed'] else 'no'} | {'yes' if r['flags_changed'] else 'no'} | "
                   f"{r['flagged']} | {r['score_min']:.3g}..{r['score_max']:.3g} ({r['score_median']:.3g}) |")
    out += ["", f"(malicious candidates: {list(MALICIOUS)}; robust threshold of mddsc, k=3)", ""]
    out += [f"### Batched cnn scoring (`batched_md`, {result['score_val']} validation samples)", "",
            "| candidates | score_chunk | time s | ms / candidate | peak extra RSS MiB | stacked candidates MiB |",
            "|---:|---|---:|---:|---:|---:|"]
    for r in result["scoring"]:
        out.append(f"| {r['candidates']} | {r['chunk'] if r['chunk'] is not None else 'null'} | {r['time_s']:.2f} | "
                   f"{r['time_per_candidate_ms']:.1f} | {r['peak_extra_rss_mib']:.0f} | {r['stacked_mib']:.1f} |")
    if result["scoring"]:
        out += ["", "Peak extra RSS: " + result["scoring"][0]["memory_method"] + "."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,cnn")
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--val", type=int, default=64, help="samples for the precision comparison")
    parser.add_argument("--score-k", default="100,200")
    parser.add_argument("--score-chunks", default="none,25")
    parser.add_argument("--score-val", type=int, default=32,
                        help="samples per scoring call (mddsc's default val_batch is 256; peak memory grows with it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spill-dir", default=None, help="parent of the spill directories (default: system temp)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args._worker:
        print(json.dumps(score_worker(*json.loads(args._worker))))
        return
    if args.candidates < max(MALICIOUS) + 1:
        parser.error(f"--candidates must be >= {max(MALICIOUS) + 1}")

    started = time.perf_counter()
    spill_root = Path(tempfile.mkdtemp(prefix="history-precision-", dir=args.spill_dir))
    result = {"snapshots": args.snapshots, "spill_fs": fs_type(spill_root), "score_val": args.score_val,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()},
              "storage": [], "precision": [], "spill_bit_identical": {}, "scoring": []}
    try:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            data = Synthetic(SHAPES[name])
            model, snaps = trajectory(name, args.snapshots, data)
            print(f"{name}: trajectory of {len(snaps)} models ({snaps[0].numel():,} values) "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
            rows, extra = storage_rows(name, snaps, spill_root)
            result["storage"] += rows
            result["spill_bit_identical"][name] = extra["spill_bit_identical"]
            result["precision"] += precision_rows(name, model, snaps, extra["references"], args.candidates,
                                                  args.val, data)
            print(f"{name}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        for leftover in spill_root.glob("*/*"):
            leftover.unlink()
        for d in spill_root.glob("*"):
            d.rmdir()
        spill_root.rmdir()
    chunks = [None if c.strip().lower() in ("none", "null") else int(c) for c in args.score_chunks.split(",")]
    result["scoring"] = scoring_rows([int(k) for k in args.score_k.split(",")], chunks, args.score_val,
                                     args.repeats)
    result["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history_precision.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(tables(result))
    print(f"\nwrote {out / 'history_precision.json'} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
