"""Defense x attack matrix: every cell is a real `fedguard run`; one table and one chart.

    python benchmarks/defense_matrix.py --root ../shared/data/mnist            # MNIST, 20 clients, 4 malicious
    python benchmarks/defense_matrix.py --dataset digits --rounds 16 --seeds 0 1 2

Writes OUT/matrix.csv, OUT/matrix.md and OUT/matrix.png (final accuracy and trigger drop
per defense, grouped by attack). Attack names not implemented in this version are listed
as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cells import add_cell_arguments, fmt, mean, run_cells  # noqa: E402
from fedguard.attacks import ATTACKS  # noqa: E402

DEFENSES = {
    "fedavg": ["defense=fedavg"],
    "clipping": ["defense=clipping"],
    "median": ["defense=median"],
    "trimmed_mean": ["defense=trimmed_mean"],
    "krum": ["defense=krum"],
    "bulyan": ["defense=bulyan"],
    "mddsc": ["defense=mddsc"],
    "mddsc(median)": ["defense=mddsc", "defense.inner=median"],
    "mddsc(clipping)": ["defense=mddsc", "defense.inner=clipping"],  # not in the default matrix
    # the defenses of the robust-aggregation literature (issue 16)
    "fltrust": ["defense=fltrust"],
    "flame": ["defense=flame"],
    "fldetector": ["defense=fldetector"],
    "cclip": ["defense=cclip"],
    "geomed": ["defense=geomed"],
    "dnc": ["defense=dnc"],
    "multikrum": ["defense=multikrum"],
}
MATRIX_DEFENSES = ["fedavg", "clipping", "median", "trimmed_mean", "krum", "bulyan", "mddsc", "mddsc(median)"]
USES_F = {"krum", "multikrum", "bulyan", "dnc"}  # defenses that take the assumed number of attackers
ATTACK_PRESETS = {
    "none": ["attack=none"],
    # the same overrides as benchmarks/attack_table.py's cells, which are then shared
    "accumulative": ["attack=accumulative", "attack.form=update", "attack.norm_bound=10", "attack.accumulate_rounds=5"],
    "accumulative_data": ["attack=accumulative", "attack.form=data", "attack.eps=0.2", "attack.accumulate_rounds=5"],
    "sign_flip": ["attack=sign_flip"],
    "alie": ["attack=alie"],
    "ipm": ["attack=ipm"],
    "backdoor": ["attack=backdoor"],
    # the other client-side baselines (not in the default matrix)
    "label_flip": ["attack=label_flip"],
    "scaling": ["attack=scaling"],
    "gaussian": ["attack=gaussian"],
    # the AGR-agnostic, full-knowledge and backdoor attacks of the literature (issue 16)
    "minmax": ["attack=minmax"],
    "minsum": ["attack=minsum"],
    "fang": ["attack=fang"],
    "dba": ["attack=dba"],
    "neurotoxin": ["attack=neurotoxin"],
}
MATRIX_ATTACKS = ["none", "accumulative", "accumulative_data", "sign_flip", "alie", "ipm", "backdoor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--root", help="dataset.root (mnist/cifar10)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--trigger-round", type=int, default=11)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--malicious", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--defenses", nargs="+", default=MATRIX_DEFENSES, choices=list(DEFENSES))
    parser.add_argument("--attacks", nargs="+", default=MATRIX_ATTACKS, choices=list(ATTACK_PRESETS))
    add_cell_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/defense_matrix")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"dataset={args.dataset}", f"num_clients={args.clients}", f"rounds={args.rounds}",
            f"evaluate_every={args.evaluate_every}"]
    if args.root:
        base.append(f"dataset.root={args.root}")
    skipped = [a for a in args.attacks if ATTACK_PRESETS[a][0].split("=", 1)[1] not in ATTACKS]
    attacks = [a for a in args.attacks if a not in skipped]
    cells: dict[tuple, list[str]] = {}
    for attack in attacks:
        # no attack: no attack overrides at all (the clean cells of attack_table.py are then shared);
        # the baselines attack from round 1 on (a trigger round would make them attack in it only)
        attack_args = [] if attack == "none" else ATTACK_PRESETS[attack] + [f"num_malicious={args.malicious}"] + (
            [f"attack.trigger_round={args.trigger_round}"] if attack.startswith("accumulative") else [])
        for defense in args.defenses:
            # no attacker: krum/multikrum/bulyan still assume the attacked runs' f
            f_arg = [f"defense.assumed_malicious={args.malicious}"] if attack == "none" and defense in USES_F else []
            for seed in args.seeds:
                cells[attack, defense, seed] = base + attack_args + DEFENSES[defense] + f_arg + [f"seed={seed}"]
    done = run_cells(Path(args.runs), cells, args.jobs, run=not args.no_run)  # --no-run: the others "not run"

    rows = []
    for attack in attacks:
        for defense in args.defenses:
            summaries = [done[attack, defense, seed] for seed in args.seeds]
            ok = [c for c in summaries if "error" not in c]
            det = [(c.get("detection") or {}).get("attack_rounds") or {} for c in ok]
            timing = [c["timing"] for c in ok]
            row = {"attack": attack, "defense": defense, "seeds": len(ok),
                   "final_accuracy": mean([c["final_accuracy"] for c in ok]),
                   "trigger_drop": mean([c["trigger_drop"] for c in ok]),
                   "attack_success_rate": mean([c["attack_success_rate"] for c in ok]),
                   "tpr": mean([d.get("tpr") for d in det]), "fpr": mean([d.get("fpr") for d in det]),
                   "round_s": mean([t["round_s_mean"] for t in timing]),
                   "train_s": mean([t["train_s"] for t in timing]),
                   "defense_s": mean([t["defense_s"] for t in timing]),
                   "errors": "; ".join(c["error"] for c in summaries if "error" in c)}
            rows.append(row)
    clean = {r["defense"]: r["final_accuracy"] for r in rows if r["attack"] == "none"}
    for row in rows:  # the gap to the same defense's clean run (attack none), in accuracy
        row["gap_to_clean"] = None if row["final_accuracy"] is None or clean.get(row["defense"]) is None \
            else clean[row["defense"]] - row["final_accuracy"]

    with open(out / "matrix.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| attack | defense | final acc | gap to clean | trigger drop | ASR | TPR | FPR | s/round | train s | "
             "defense s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['defense']} | {fmt(r['final_accuracy'])} | {fmt(r['gap_to_clean'])} | "
              f"{fmt(r['trigger_drop'])} | "
              f"{fmt(r['attack_success_rate'])} | {fmt(r['tpr'])} | {fmt(r['fpr'])} | {fmt(r['round_s'])} | "
              f"{fmt(r['train_s'])} | {fmt(r['defense_s'])} |" if r["seeds"] else
              f"| {r['attack']} | {r['defense']} | {r['errors']} |" for r in rows]
    if skipped:
        lines.append(f"\nnot implemented in this version (skipped): {', '.join(skipped)}")
    (out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    plot_matrix(rows, args.defenses, attacks, out / "matrix.png")


# one heatmap per metric (defenses x the attacks that have it), every cell annotated
PANELS = [("final_accuracy", "final test accuracy", "viridis"),
          ("gap_to_clean", "gap to the clean run (accuracy)", "Reds"),
          ("trigger_drop", "trigger drop (accuracy)", "Reds"),
          ("attack_success_rate", "backdoor success rate", "Reds"),
          ("tpr", "attack-round TPR (flagging defenses)", "Blues")]


def plot_matrix(rows: list[dict], defenses: list[str], attacks: list[str], path: Path) -> None:
    value = {(r["attack"], r["defense"], key): r.get(key) for r in rows for key, _, _ in PANELS}
    panels = []
    for key, title, cmap in PANELS:
        cols = [a for a in attacks if any(value[a, d, key] is not None for d in defenses)]
        if key == "gap_to_clean":
            cols = [a for a in cols if a != "none"]
        if cols:
            panels.append((key, title, cmap, cols))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + sum(1.4 + 0.75 * len(c) for *_, c in panels), 0.9 + 0.38 *
                                                      len(defenses)), width_ratios=[len(c) + 1 for *_, c in panels],
                             squeeze=False)
    for ax, (key, title, cmap, cols) in zip(axes[0], panels):
        grid = np.array([[np.nan if value[a, d, key] is None else value[a, d, key] for a in cols] for d in defenses],
                        dtype=float)
        image = ax.imshow(grid, cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if image.norm(v) > 0.6 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(defenses)), defenses if ax is axes[0][0] else [""] * len(defenses), fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
