"""Every injected fault kind at a fraction of the clients per round, against the same run
without faults: did the run finish, what was rejected (and why), final accuracy.

    python benchmarks/fault_matrix.py --rounds 10 --rate 0.2 [--kinds nan,crash] [--out DIR]

`hang` sleeps past `backend.round_timeout`, so the runs use a short timeout (--timeout).
Prints a markdown table and writes DIR/fault_matrix.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fedguard import launch

KINDS = ("crash", "hang", "nan", "wrong_shape", "oversize", "inflate_examples", "garbage")


def run(run_dir: Path, overrides: list[str]) -> dict:
    start = time.perf_counter()
    proc, summary = launch.run(overrides, run_dir)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"finished": False, "wall_s": wall, "error": proc.stderr[-2000:]}
    clients = [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines() if line]
    faulty = [c for c in clients if c.get("fault")]
    return {"finished": True, "wall_s": wall, "final_accuracy": summary["final_accuracy"],
            "rejected": summary["rejected"], "missing": summary["missing_replies"],
            "faulty_rows": len(faulty), "faulty_rejected": sum(bool(c["rejected"]) for c in faulty),
            "capped": sum(c.get("claimed_examples") is not None for c in faulty),
            "example_reason": next((c["rejected"] for c in faulty if c["rejected"]), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=30.0, help="backend.round_timeout (seconds)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra override, e.g. backend.client_resources.num_cpus=0.5")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    base = [f"num_clients={args.clients}", f"rounds={args.rounds}", "progress=false",
            f"backend.init_args.num_cpus={args.cpus}", f"backend.round_timeout={args.timeout}", *args.set]
    results = {"none": run(out / "none", base)}
    for kind in args.kinds.split(","):
        results[kind] = run(out / kind, [*base, f"faults.kind={kind}", f"faults.rate={args.rate}"])
    (out / "fault_matrix.json").write_text(json.dumps(results, indent=2))
    ref = results["none"].get("final_accuracy")
    print(f"{args.clients} clients, {args.rounds} rounds, faults.rate={args.rate}, "
          f"backend.round_timeout={args.timeout}s; runs in {out}\n")
    print("| faults.kind | finished | faulty replies | rejected (by reason) | missing | capped num-examples "
          "| final acc | diff vs none | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        if not r["finished"]:
            print(f"| {kind} | NO | | | | | | | {r['wall_s']:.0f} |")
            continue
        diff = "" if kind == "none" or ref is None else f"{100 * (r['final_accuracy'] - ref):+.1f} pt"
        print(f"| {kind} | yes | {r['faulty_rows']} | {r['rejected'] or '-'} | {r['missing']} | {r['capped']} "
              f"| {r['final_accuracy']:.4f} | {diff} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
