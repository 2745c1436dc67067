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
}
MATRIX_DEFENSES = [d for d in DEFENSES if d != "mddsc(clipping)"]
USES_F = {"krum", "multikrum", "bulyan"}  # defenses that take the assumed number of attackers
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

    with open(out / "matrix.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| attack | defense | final acc | trigger drop | ASR | TPR | FPR | s/round | train s | defense s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['defense']} | {fmt(r['final_accuracy'])} | {fmt(r['trigger_drop'])} | "
              f"{fmt(r['attack_success_rate'])} | {fmt(r['tpr'])} | {fmt(r['fpr'])} | {fmt(r['round_s'])} | "
              f"{fmt(r['train_s'])} | {fmt(r['defense_s'])} |" if r["seeds"] else
              f"| {r['attack']} | {r['defense']} | {r['errors']} |" for r in rows]
    if skipped:
        lines.append(f"\nnot implemented in this version (skipped): {', '.join(skipped)}")
    (out / "matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    panels = [("final_accuracy", "final test accuracy"), ("trigger_drop", "trigger drop (accuracy before - after)"),
              ("attack_success_rate", "backdoor attack success rate")]
    # each panel shows the attacks that have its metric (a trigger drop: accumulative; an ASR: backdoor)
    shown = {key: [a for a in attacks if any(r["attack"] == a and r.get(key) is not None for r in rows)]
             for key, _ in panels}
    panels = [p for p in panels if shown[p[0]]]
    ratios = [max(2, len(shown[k])) for k, _ in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(18, 3 + 1.3 * sum(ratios)), 4.5), width_ratios=ratios,
                             squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(args.defenses))
    for i, defense in enumerate(args.defenses):
        for ax, (key, _) in zip(axes, panels):
            vals = [next((r[key] for r in rows if r["attack"] == a and r["defense"] == defense), None) or 0.0
                    for a in shown[key]]
            ax.bar([j + i * width for j in range(len(vals))], vals, width, label=defense if ax is axes[0] else None)
    for ax, (key, title) in zip(axes, panels):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shown[key]))], shown[key], rotation=20)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="lower center", ncol=len(args.defenses), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "matrix.png", dpi=120)


if __name__ == "__main__":
    main()
