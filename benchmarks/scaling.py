"""Scaling: round time, client updates per second and peak memory of the whole process tree
against the clients sampled per round and the clients registered, with and without mddsc.

    python benchmarks/scaling.py [--rounds 5] [--sampled 10,50,100,200] [--registered 100,1000,10000]
                                 [--defenses fedavg,mddsc] [--out benchmarks/results]

Every run is `fedguard run dataset=synthetic` in a subprocess with virtual clients
(`backend.num_supernodes` = the sampled count, so the simulation has as many SuperNodes as a
round uses; see fedguard/server_app.py). Sampled sweep: `--base-registered` clients
registered, each defense. Registered sweep: `--base-sampled` clients sampled, fedavg. Round
time is the steady-state mean (`summary.json` timing.round_s_mean: round 1, which includes
actor start-up, is left out); peak RSS is the largest sum of resident memory over the
launcher process and all its descendants (Ray's GCS, raylet and workers), polled every
0.2 s. Writes OUT/scaling.json and OUT/scaling.png, prints a markdown table and the linear
fit of round time against sampled clients.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from fedguard import launch

REPO = Path(__file__).resolve().parents[1]


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of `proc` and all its descendants (processes gone meanwhile count 0)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(run_dir: Path, overrides: list[str]) -> dict:
    """One `fedguard run` with its timing from summary.json and the peak RSS of its tree."""
    start, peak, watched = time.perf_counter(), 0, []

    def sample(job: launch.Launch) -> None:  # every 0.2 s while it runs
        nonlocal peak
        try:
            if not watched:
                watched.append(psutil.Process(job.pid))
            peak = max(peak, tree_rss(watched[0]))
        except psutil.Error:  # the launcher just exited
            pass

    proc, summary = launch.run(overrides, run_dir, poll=sample)
    if proc.returncode != 0:
        raise RuntimeError(f"fedguard run {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    t = summary["timing"]
    return {"round_s": t["round_s_mean"], "first_round_s": t["first_round_s"], "defense_s": t["defense_s"],
            "train_s": t["train_s"], "total_s": t["total_s"], "wall_s": time.perf_counter() - start,
            "peak_rss_mb": peak / 2**20, "final_accuracy": summary["final_accuracy"]}


def one(out: Path, registered: int, sampled: int, defense: str, rounds: int, extra: list[str]) -> dict:
    name = f"{defense}_r{registered}_s{sampled}"
    overrides = ["dataset=synthetic", f"num_clients={registered}", f"fraction_train={sampled / registered}",
                 f"backend.num_supernodes={sampled}", f"defense={defense}", f"rounds={rounds}",
                 "progress=false", "checkpoint_every=0", *extra]
    result = run(out / name, overrides)
    result.update(registered=registered, sampled=sampled, defense=defense,
                  rounds_per_s=1.0 / result["round_s"], updates_per_s=sampled / result["round_s"])
    print(f"  {name}: {result['round_s']:.2f} s/round, {result['updates_per_s']:.1f} updates/s, "
          f"peak {result['peak_rss_mb']:.0f} MiB", flush=True)
    return result


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * np.asarray(xs) + intercept
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"slope_s_per_client": float(slope), "intercept_s": float(intercept),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def plot(results: list[dict], fits: dict, base_sampled: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sweep_s = [r for r in results if r["sweep"] == "sampled"]
    for defense in sorted({r["defense"] for r in sweep_s}):
        rows = sorted((r for r in sweep_s if r["defense"] == defense), key=lambda r: r["sampled"])
        xs = [r["sampled"] for r in rows]
        axes[0].plot(xs, [r["round_s"] for r in rows], "o-", label=defense)
        fit = fits.get(defense)
        if fit:
            axes[0].plot(xs, [fit["slope_s_per_client"] * x + fit["intercept_s"] for x in xs], ":", color="grey")
        axes[2].plot(xs, [r["peak_rss_mb"] for r in rows], "o-", label=f"{defense} (vs sampled)")
    axes[0].set(xlabel="clients sampled per round", ylabel="steady round time (s)",
                title="round time vs sampled clients (dotted: linear fit)")
    axes[0].legend()
    sweep_r = sorted((r for r in results if r["sweep"] == "registered"), key=lambda r: r["registered"])
    xs = [r["registered"] for r in sweep_r]
    axes[1].plot(xs, [r["round_s"] for r in sweep_r], "o-", label="round time (s)")
    axes[1].set(xscale="log", xlabel="clients registered", ylabel="steady round time (s)",
                title=f"round time vs registered clients ({base_sampled} sampled)")
    axes[1].set_ylim(bottom=0)
    axes[2].plot([r["sampled"] for r in sweep_r], [r["peak_rss_mb"] for r in sweep_r], "s", alpha=0)
    ax2 = axes[2].twiny()
    ax2.plot(xs, [r["peak_rss_mb"] for r in sweep_r], "s--", color="tab:red", label="fedavg (vs registered, top axis)")
    ax2.set(xscale="log", xlabel="clients registered")
    axes[2].set(xlabel="clients sampled per round", ylabel="peak RSS of the process tree (MiB)",
                title="peak memory")
    axes[2].set_ylim(bottom=0)
    lines = axes[2].get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = axes[2].get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    axes[2].legend(lines, labels, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sampled", default="10,50,100,200")
    ap.add_argument("--registered", default="100,1000,10000")
    ap.add_argument("--defenses", default="fedavg,mddsc")
    ap.add_argument("--base-registered", type=int, default=1000, help="registered clients of the sampled sweep")
    ap.add_argument("--base-sampled", type=int, default=100, help="sampled clients of the registered sweep")
    ap.add_argument("--cpus", type=int, default=2, help="backend.init_args.num_cpus")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--set", action="append", default=[], help="extra override for every run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="fedguard-scaling-"))
    extra = [f"backend.init_args.num_cpus={args.cpus}", *args.set]

    results = []
    print(f"sampled sweep ({args.base_registered} registered):")
    for defense in args.defenses.split(","):
        for s in map(int, args.sampled.split(",")):
            results.append({**one(runs, args.base_registered, s, defense, args.rounds, extra), "sweep": "sampled"})
    print(f"registered sweep ({args.base_sampled} sampled, fedavg):")
    for n in map(int, args.registered.split(",")):
        same = next((r for r in results if r["defense"] == "fedavg" and r["registered"] == n
                     and r["sampled"] == args.base_sampled), None)  # already run in the sampled sweep
        row = same if same is not None else one(runs, n, args.base_sampled, "fedavg", args.rounds, extra)
        results.append({**row, "sweep": "registered"})

    fits = {}
    for defense in args.defenses.split(","):
        rows = [r for r in results if r["sweep"] == "sampled" and r["defense"] == defense]
        if len(rows) >= 2:
            fits[defense] = linear_fit([r["sampled"] for r in rows], [r["round_s"] for r in rows])
    by = {(r["sweep"], r["defense"], r["registered"], r["sampled"]): r for r in results}
    ratios = {}
    for s in map(int, args.sampled.split(",")):
        a, b = by.get(("sampled", "fedavg", args.base_registered, s)), by.get(("sampled", "mddsc", args.base_registered, s))
        if a and b:
            ratios[s] = b["round_s"] / a["round_s"]
    reg = {r["registered"]: r["round_s"] for r in results if r["sweep"] == "registered"}
    report = {"results": results, "fits": fits, "mddsc_over_fedavg": ratios,
              "registered_round_s": reg, "rounds": args.rounds, "cpus": args.cpus}
    (args.out / "scaling.json").write_text(json.dumps(report, indent=2))
    plot(results, fits, args.base_sampled, args.out / "scaling.png")

    print("\n| sweep | defense | registered | sampled | s/round | rounds/s | updates/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['sweep']} | {r['defense']} | {r['registered']} | {r['sampled']} | {r['round_s']:.2f} | "
              f"{r['rounds_per_s']:.3f} | {r['updates_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    for defense, fit in fits.items():
        print(f"fit {defense}: round_s = {fit['slope_s_per_client']:.4f} * sampled + {fit['intercept_s']:.2f}"
              f"  (R^2 {fit['r2']:.3f})")
    for s, ratio in ratios.items():
        print(f"mddsc / fedavg round time at {s} sampled: {ratio:.2f}x")
    if len(reg) >= 2 and 1000 in reg and 10000 in reg:
        print(f"round time 10,000 / 1,000 registered: {reg[10000] / reg[1000]:.2f}x")
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
