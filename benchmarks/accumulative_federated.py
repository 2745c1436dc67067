"""The federated accumulation under the defenses, against its own clean run.

    python benchmarks/accumulative_federated.py --seeds 0 1 2 [--set KEY=VALUE ...]

Runs `fedguard run +experiment=accumulative_federated` (configs/experiment/accumulative_federated.yaml)
per seed under fedavg, clipping, median and mddsc over clipping, the trigger alone under
clipping (`attack.accumulate_rounds=0`), and the clean runs (`num_malicious=0`, the same data,
rounds and seed) under fedavg and clipping. Per attacked run, against the clean run of the
same defense (mddsc's and median's against clipping's and fedavg's, see `CLEAN_OF`), in points
of test accuracy: the damage at the trigger round, the cost in the round before it, and the
trigger round's own drop. `--set` adds overrides to every run (e.g. `attack.shrink_channels=1`
or another dataset). Writes OUT/accumulative_federated.{md,csv,png} and the first seed's accuracy over rounds
(OUT/accumulative_federated_rounds.png).
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

CLEAN = {"clean, fedavg": ["defense=fedavg", "num_malicious=0"],
         "clean, clipping": ["defense=clipping", "num_malicious=0"]}
ATTACKED = {
    "fedavg": ["defense=fedavg"],
    "clipping": ["defense=clipping"],
    "median": ["defense=median"],
    "mddsc over clipping": ["defense=mddsc", "defense.inner=clipping"],
    "trigger alone, clipping": ["defense=clipping", "attack.accumulate_rounds=0"],
}
# the clean run each attacked variant is measured against (median and mddsc: the clean run of
# the aggregator they replace or wrap, so a defense's own cost on clean data counts as damage)
CLEAN_OF = {"fedavg": "clean, fedavg", "clipping": "clean, clipping", "median": "clean, fedavg",
            "mddsc over clipping": "clean, clipping", "trigger alone, clipping": "clean, clipping"}
FIELDS = ["variant", "seed", "trigger_round", "before", "after", "clean_before", "clean_after", "cost_before",
          "damage", "drop", "tpr", "error"]


def accuracies(run_dir: Path) -> tuple[dict[int, float], int | None]:
    """({round: accuracy}, the recorded trigger round) of one run."""
    rows = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines() if line]
    trigger = next((r["round"] for r in rows if r["phase"] == "trigger"), None)
    return {r["round"]: r["accuracy"] for r in rows}, trigger


def effect(run_dir: Path, clean_dir: Path) -> dict:
    acc, trigger = accuracies(run_dir)
    clean, _ = accuracies(clean_dir)
    out = {"trigger_round": trigger, "before": acc[trigger - 1], "after": acc[trigger],
           "clean_before": clean[trigger - 1], "clean_after": clean[trigger],
           "cost_before": 100 * (clean[trigger - 1] - acc[trigger - 1]),
           "damage": 100 * (clean[trigger] - acc[trigger]), "drop": 100 * (acc[trigger - 1] - acc[trigger])}
    detection = json.loads((run_dir / "summary.json").read_text()).get("detection") or {}
    tpr = (detection.get("attack_rounds") or {}).get("tpr")  # over the accumulate and trigger rounds
    out["tpr"] = "" if tpr is None else tpr
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--out", default="benchmarks/results/accumulative_federated")
    add_cell_arguments(parser)
    args = parser.parse_args()
    base = ["+experiment=accumulative_federated", *args.set]  # the preset evaluates every round
    variants = {**CLEAN, **ATTACKED}
    cells = {(name, seed): [*base, *extra, f"seed={seed}"] for name, extra in variants.items() for seed in args.seeds}
    summaries = run_cells(Path(args.runs), {f"{k[0]}|{k[1]}": v for k, v in cells.items()}, args.jobs,
                          not args.no_run)
    rows = []
    for name in ATTACKED:
        for seed in args.seeds:
            failed = summaries[f"{name}|{seed}"].get("error") or summaries[f"{CLEAN_OF[name]}|{seed}"].get("error")
            if failed:
                rows.append({"variant": name, "seed": seed, "error": failed})
                continue
            rows.append({"variant": name, "seed": seed, **effect(cell_dir(Path(args.runs), cells[name, seed]),
                                                                 cell_dir(Path(args.runs), cells[CLEAN_OF[name], seed]))})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "accumulative_federated.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"`{' '.join(base)}`, seeds {' '.join(map(str, args.seeds))}; points of test accuracy against "
             "the clean run (`num_malicious=0`), per seed in brackets", "",
             "| defense | damage at the trigger round | cost in the round before | trigger round's own drop | "
             "TPR over the attack rounds |", "|---|---|---|---|---|"]
    for name in ATTACKED:
        done = [r for r in rows if r["variant"] == name and "error" not in r]

        def cell(key: str) -> str:
            values = [r[key] for r in done if r[key] != ""]
            return f"{fmt(mean(values), 1 if key != 'tpr' else 2)} [{', '.join(fmt(float(v), 1) for v in values)}]" \
                if values else "-"

        lines.append(f"| {name} | {cell('damage')} | {cell('cost_before')} | {cell('drop')} | {cell('tpr')} |")
    (out / "accumulative_federated.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for i, (key, label) in enumerate((("cost_before", "cost in the round before"), ("damage", "damage at the trigger"))):
        means = [mean([r[key] for r in rows if r["variant"] == name and "error" not in r]) or 0.0 for name in ATTACKED]
        ax.bar([x + (i - 0.5) * width for x in range(len(ATTACKED))], means, width, label=label)
    ax.axhline(10, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(ATTACKED)), list(ATTACKED), fontsize=8)
    ax.set(ylabel="accuracy lost vs clean run (points)", title=f"federated accumulation, seeds {args.seeds}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accumulative_federated.png", dpi=150)
    plot_rounds(Path(args.runs), cells, args.seeds[0], out / "accumulative_federated_rounds.png")


def plot_rounds(runs: Path, cells: dict, seed: int, path: Path) -> None:
    """Test accuracy over rounds of one seed's runs, the trigger round marked."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    trigger = None
    for name in ("clean, clipping", "clipping", "trigger alone, clipping", "median", "mddsc over clipping"):
        run_dir = cell_dir(runs, cells[name, seed])
        if not (run_dir / "rounds.jsonl").is_file():
            continue
        acc, trigger = accuracies(run_dir)
        ax.plot(list(acc), list(acc.values()), label=name, lw=1.2, ls="--" if name.startswith("clean") else "-")
    if trigger is not None:
        ax.axvline(trigger, color="grey", lw=0.8, ls=":")
        ax.text(trigger, 0.05, " trigger", color="grey", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set(xlabel="round", ylabel="test accuracy", title=f"federated accumulation (bn_shrink), seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
