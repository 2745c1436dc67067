"""The accumulative attack in the reference's online protocol, as fedguard runs it.

    python benchmarks/accumulative_online.py --seeds 0 1 2 [--set KEY=VALUE ...]

Runs `fedguard run +experiment=accumulative_online` (configs/experiment/accumulative_online.yaml:
one learner, one SGD optimizer across rounds, the trigger crafted once, a poison recrafted
every step, the error budget, one trigger step) in six variants per seed:

- accumulation + trigger: the preset as it is;
- trigger alone: `attack.accumulate_rounds=0` (clean online steps, then the same trigger);
- accumulation, no trigger: `attack.trigger_batch=stream` (a clean step where the trigger
  would be: the control that separates the trigger's effect from what the accumulation left
  in the model and in the optimizer's momentum);
- DSC: `sanitizer=dsc` with the preset's paper settings (0.5 + 0.02 t, the burned-in model
  as the fixed historical model);
- AT: `sanitizer=adv_training`, the paper's adversarial-training baseline (PGD eps 0.2, 10
  steps of 0.02); ST, its standard-training baseline, is the plain learner;
- no attacker: `num_malicious=0`, the preset's clean run (its "trigger" round is an ordinary step).

Per run, from rounds.jsonl: the burned-in model's accuracy (round 1's `initial_accuracy`),
the accuracy before the trigger round and after it. Reported in points: the accuracy cost
before the trigger (c), the trigger round's own drop, and the total error increase over
the burned-in model (a = c + drop). `--set` adds overrides to every run (e.g. another
dataset or model). Writes OUT/accumulative_online.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cells import add_cell_arguments, cell_dir, fmt, mean, run_cells  # noqa: E402

VARIANTS = {
    "accumulation + trigger": [],
    "trigger alone": ["attack.accumulate_rounds=0"],
    "accumulation, no trigger": ["attack.trigger_batch=stream"],
    "DSC learner": ["sanitizer=dsc"],
    "AT learner": ["sanitizer=adv_training"],  # the paper's AT baseline (ST is the plain learner)
    "no attacker": ["num_malicious=0"],  # the preset's clean run: the same learner, stream and rounds
}


FIELDS = ["variant", "seed", "trigger_round", "accuracy_0", "before", "after", "cost_before", "drop", "total", "error"]


def trigger_effect(run_dir: Path) -> dict:
    """Accuracies around the recorded trigger round of one run, and the derived points."""
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line]
    acc0 = rows[0]["initial_accuracy"]
    trigger = next(r["round"] for r in rows if r["phase"] == "trigger")
    by_round = {r["round"]: r["accuracy"] for r in rows}
    before, after = (acc0 if trigger == 1 else by_round[trigger - 1]), by_round[trigger]
    return {"trigger_round": trigger, "accuracy_0": acc0, "before": before, "after": after,
            "cost_before": 100 * (acc0 - before), "drop": 100 * (before - after), "total": 100 * (acc0 - after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--out", default="benchmarks/results/accumulative_online")
    add_cell_arguments(parser)
    args = parser.parse_args()
    base = ["+experiment=accumulative_online", *args.set]  # the preset evaluates every round (--evaluate-every unused)
    cells = {(name, seed): [*base, *extra, f"seed={seed}"] for name, extra in VARIANTS.items() for seed in args.seeds}
    summaries = run_cells(Path(args.runs), {f"{k[0]}|{k[1]}": v for k, v in cells.items()}, args.jobs,
                          not args.no_run)
    rows = []
    for (name, seed), overrides in cells.items():
        if "error" in summaries[f"{name}|{seed}"]:
            rows.append({"variant": name, "seed": seed, "error": summaries[f"{name}|{seed}"]["error"]})
            continue
        rows.append({"variant": name, "seed": seed, **trigger_effect(cell_dir(Path(args.runs), overrides))})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "accumulative_online.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"`{' '.join(base)}`, seeds {' '.join(map(str, args.seeds))} (points; per seed in brackets)", "",
             "| variant | trigger round | cost before the trigger (c) | trigger round's drop | total increase (a) |",
             "|---|---|---|---|---|"]
    for name in VARIANTS:
        done = [r for r in rows if r["variant"] == name and "error" not in r]

        def cell(key: str, digits: int = 1) -> str:
            values = [r[key] for r in done]
            return f"{fmt(mean(values), digits)} [{', '.join(fmt(float(v), digits) for v in values)}]"

        lines.append(f"| {name} | {cell('trigger_round', 0)} | {cell('cost_before')} | {cell('drop')} | "
                     f"{cell('total')} |")
    (out / "accumulative_online.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.38
    for i, (key, label) in enumerate((("cost_before", "cost before the trigger"), ("drop", "trigger round's drop"))):
        means = [mean([r[key] for r in rows if r["variant"] == name and "error" not in r]) or 0.0 for name in VARIANTS]
        ax.bar([x + (i - 0.5) * width for x in range(len(VARIANTS))], means, width, label=label)
    ax.set_xticks(range(len(VARIANTS)), [name.replace(", ", ",\n").replace(" + ", " +\n") for name in VARIANTS],
                  fontsize=8)
    ax.set(ylabel="test accuracy lost (points)", title=f"online protocol, seeds {args.seeds}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accumulative_online.png", dpi=150)


if __name__ == "__main__":
    main()
