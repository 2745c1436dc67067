"""Accumulative poisoning against trigger budget, number of attackers and defense (issue 3).

    python benchmarks/attack_table.py --root ../shared/data/mnist
    python benchmarks/attack_table.py --root ../shared/data/mnist --form data --eps 0.1 0.2

Every cell is a real `fedguard run` (20 clients, `--rounds` rounds, the trigger in round
`--trigger-round` after `--accumulate-rounds` accumulation rounds). For each defense, number
of malicious clients and budget (update form: the trigger's norm in honest-update norms;
data form: the L-inf radius eps of the poisoned batches and the crafted trigger) it runs

- the attack: accumulation, then the trigger;
- the trigger alone: the same run with `attack.accumulate_rounds=0` (honest until the trigger);
- the clean run (no attack, same seed), once per defense.

and reports the trigger drop (accuracy before minus after the trigger round) of both, their
ratio (shown when the trigger alone drops more than half a point), and the gap to the clean
run after the trigger (clean accuracy minus attacked accuracy at the trigger round), for the
attack and for the trigger alone. Writes OUT/table_<form>.md and .csv; `--no-run` tabulates
only the cells already run (the others are listed as not run).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from cells import NOT_RUN, add_cell_arguments, cell_dir, fmt, mean, run_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="dataset.root of MNIST")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--trigger-round", type=int, default=11)
    parser.add_argument("--accumulate-rounds", type=int, default=5)
    parser.add_argument("--form", choices=("update", "data"), default="update")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 3, 10], help="update form: attack.norm_bound")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2], help="data form: attack.eps")
    parser.add_argument("--malicious", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--defenses", nargs="+", default=["fedavg", "clipping", "median"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_cell_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/attack_table")
    args = parser.parse_args()

    runs = Path(args.runs)
    base = ["dataset=mnist", f"dataset.root={args.root}", f"num_clients={args.clients}", f"rounds={args.rounds}",
            f"evaluate_every={args.evaluate_every}"]
    budget_key, budgets = ("norm_bound", args.budgets) if args.form == "update" else ("eps", args.eps)
    cells: dict[tuple, list[str]] = {}
    for defense in args.defenses:
        for seed in args.seeds:
            common = base + [f"defense={defense}", f"seed={seed}"]
            cells["clean", defense, seed] = common
            for m in args.malicious:
                for b in budgets:
                    attack = common + ["attack=accumulative", f"attack.form={args.form}", f"attack.{budget_key}={b:g}",
                                       f"num_malicious={m}", f"attack.trigger_round={args.trigger_round}"]
                    cells["acc", defense, m, b, seed] = attack + [f"attack.accumulate_rounds={args.accumulate_rounds}"]
                    cells["alone", defense, m, b, seed] = attack + ["attack.accumulate_rounds=0"]
    done = run_cells(runs, cells, args.jobs, run=not args.no_run)

    def accuracy_at(key: tuple, round_: int) -> float:  # rounds.jsonl: summary.json has no per-round accuracy
        rows = [json.loads(line) for line in (cell_dir(runs, cells[key]) / "rounds.jsonl").read_text().splitlines()]
        return next(r["accuracy"] for r in rows if r["round"] == round_)

    rows = []
    for defense in args.defenses:
        for m in args.malicious:
            for b in budgets:
                keys = [(kind, defense, m, b, s) for kind in ("acc", "alone") for s in args.seeds]
                keys += [("clean", defense, s) for s in args.seeds]
                row = {"defense": defense, "malicious": m, budget_key: b, "seeds": len(args.seeds)}
                missing = [k[0] for k in keys if done[k] == NOT_RUN]
                errors = [done[k]["error"] for k in keys if "error" in done[k] and done[k] != NOT_RUN]
                if missing or errors:
                    rows.append({**row, "errors": "; ".join(errors) or "not run: " + ", ".join(sorted(set(missing)))})
                    continue
                acc = [done["acc", defense, m, b, s] for s in args.seeds]
                alone = [done["alone", defense, m, b, s] for s in args.seeds]
                drop, drop_alone = mean([c["trigger_drop"] for c in acc]), mean([c["trigger_drop"] for c in alone])
                clean_after = mean([accuracy_at(("clean", defense, s), args.trigger_round) for s in args.seeds])
                rows.append({**row,
                             "clean_before": mean([accuracy_at(("clean", defense, s), args.trigger_round - 1)
                                                   for s in args.seeds]),
                             "before_trigger": mean([c["accuracy_before_trigger"] for c in acc]),
                             "trigger_drop": drop, "trigger_drop_alone": drop_alone,
                             "ratio": drop / drop_alone if drop_alone is not None and drop_alone > 0.005 else None,
                             "gap_to_clean": clean_after - mean([c["accuracy_after_trigger"] for c in acc]),
                             "gap_to_clean_alone": clean_after - mean([c["accuracy_after_trigger"] for c in alone]),
                             "errors": ""})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(rows, out / f"table_{args.form}.csv", out / f"table_{args.form}.md", budget_key)


def write_table(rows: list[dict], csv_path: Path, md_path: Path, budget_key: str) -> None:
    keys = ["defense", "malicious", budget_key, "seeds", "clean_before", "before_trigger", "trigger_drop",
            "trigger_drop_alone", "ratio", "gap_to_clean", "gap_to_clean_alone", "errors"]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"| defense | malicious | {budget_key} | clean before | acc before | trigger drop | drop, trigger alone "
             "| ratio | gap to clean | gap to clean, trigger alone |", "|---" * 10 + "|"]
    for r in rows:
        if r["errors"]:
            lines.append(f"| {r['defense']} | {r['malicious']} | {r[budget_key]:g} | {r['errors']} |")
            continue
        lines.append(f"| {r['defense']} | {r['malicious']} | {r[budget_key]:g} | {fmt(r['clean_before'])} | "
                     f"{fmt(r['before_trigger'])} | {fmt(r['trigger_drop'])} | {fmt(r['trigger_drop_alone'])} | "
                     f"{fmt(r['ratio'], 2)} | {fmt(r['gap_to_clean'])} | {fmt(r['gap_to_clean_alone'])} |")
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
