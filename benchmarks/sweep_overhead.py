"""What a sweep pays beyond its jobs' own time, and what 10,000 clients cost against 1,000.

    python benchmarks/sweep_overhead.py [--jobs 4] [--rounds 5] [--scale 1000,10000]

1. One start-up per sweep: `fedguard run -m rounds=R seed=0..J-1` (one process, one Ray
   instance and one client-actor pool for all jobs, fedguard/ray_session.py) against a single
   `fedguard run rounds=R seed=0`. Reports the sweep's wall time, the sum of its jobs'
   `timing.total_s`, the single run's start-up (wall - total_s) and the issue's bound
   `1.3 x sum + start-up`, and the per-job overhead (the sweep's wall minus the sum, less the
   single run's start-up, per job after the first).
2. Scale: `fedguard run dataset=synthetic num_clients=N fraction_train=S/N rounds=R` without a
   backend key (`backend.num_supernodes` automatic) for each N, S = `--sampled` clients a round
   at every size (100: 10,000 clients at fraction_train=0.01 against 1,000 at 0.1): steady round
   time, total_s, peak resident memory of the whole process tree, and the SuperNode mode
   summary.json records.

Writes OUT/sweep_overhead.json and prints a markdown table. Wall times depend on the load of
the machine: run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from scaling import run as measured_run

from fedguard import launch


def sweep(root: Path, jobs: int, rounds: int) -> dict:
    seeds = ",".join(str(s) for s in range(jobs))
    start = time.perf_counter()
    proc, _ = launch.run(["-m", f"rounds={rounds}", f"seed={seeds}", "progress=false", f"hydra.sweep.dir={root}"])
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed:\n{proc.stderr[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in sorted(root.rglob("summary.json"))]
    if len(summaries) != jobs:
        raise RuntimeError(f"expected {jobs} jobs under {root}, found {len(summaries)} summaries")
    return {"wall_s": wall, "jobs_total_s": sum(s["timing"]["total_s"] for s in summaries),
            "jobs_start_s": [s["timing"].get("start_s") for s in summaries]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", default="1000,10000", help="num_clients of the synthetic runs ('' to skip)")
    parser.add_argument("--sampled", type=int, default=100, help="clients sampled per round in the synthetic runs")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="fedguard-sweep-") as tmp:
        single = measured_run(Path(tmp) / "single", [f"rounds={args.rounds}", "seed=0"])
        startup = single["wall_s"] - single["total_s"]
        swept = sweep(Path(tmp) / "sweep", args.jobs, args.rounds)
        bound = 1.3 * swept["jobs_total_s"] + startup
        result["sweep"] = {**swept, "single_wall_s": single["wall_s"], "single_total_s": single["total_s"],
                           "single_startup_s": startup, "bound_s": bound, "within_bound": swept["wall_s"] <= bound,
                           "per_job_overhead_s": (swept["wall_s"] - swept["jobs_total_s"] - startup) / args.jobs}
        result["scale"] = []
        for n in [int(x) for x in args.scale.split(",") if x]:
            run_dir = Path(tmp) / f"synthetic-{n}"
            r = measured_run(run_dir, ["dataset=synthetic", f"num_clients={n}",
                                       f"fraction_train={args.sampled / n}", f"rounds={args.rounds}"])
            r["supernodes"] = json.loads((run_dir / "summary.json").read_text()).get("supernodes")
            result["scale"].append({"num_clients": n, **r})
    (out / "sweep_overhead.json").write_text(json.dumps(result, indent=2))
    s = result["sweep"]
    lines = [f"| {args.jobs}-job sweep wall | sum of jobs' total_s | single run start-up | bound 1.3 x sum + start-up | "
             "per-job overhead |", "|---|---|---|---|---|",
             f"| {s['wall_s']:.1f} s | {s['jobs_total_s']:.1f} s | {s['single_startup_s']:.1f} s | {s['bound_s']:.1f} s "
             f"({'met' if s['within_bound'] else 'NOT met'}) | {s['per_job_overhead_s']:.2f} s |", "",
             "| num_clients | SuperNodes | steady round | total_s | peak RSS |", "|---|---|---|---|---|"]
    lines += [f"| {r['num_clients']} | {r['supernodes']['mode']}, {r['supernodes']['count']} | {r['round_s']:.2f} s | "
              f"{r['total_s']:.1f} s | "
              f"{r['peak_rss_mb'] / 1024:.2f} GiB |" for r in result["scale"]]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
