"""The paper's single-learner online setting: one client, a poisoned stream, learner defenses.

    python benchmarks/single_learner.py --root ../shared/data/mnist

One client (the one-client federation) is trained honestly for `--pretrain-rounds` rounds (the
paper's learner is trained before its online phase), then its stream carries the data-form
accumulative poisons for `--accumulate-rounds` rounds and the crafted trigger in the last
round. Each learner variant is run with the accumulation and with the trigger alone
(`attack.accumulate_rounds=0`, honest until the trigger), once per seed, and the table gives
the trigger-induced error increase (accuracy before minus after the trigger round), in
points, as the mean over `--seeds`.

Learners (the sanitiser's online phase starts with the accumulation: `sanitizer.dsc.start_round`):
- plain: SGD on the stream as it comes;
- clipping: the round's update clipped to `--clip-norm` (fixed: with one client the adaptive
  bound is the client's own norm, a no-op);
- dsc: the paper's DSC with its defaults (threshold 0.5 + 0.02 t);
- dsc_tau: DSC with a constant threshold `--tau` (between the clean and poisoned batch MDs);
- dsc_all: DSC with threshold 0: every online batch gets the full correction (`steps`
  signed-descent steps), i.e. DSC's correction without its MD test;
- md_filter: DSC's MD test without its correction: samples whose MD is above `--tau-drop`
  are dropped (`sanitizer.dsc.steps=0 drop_above`);
- md_gate: DSC's batch test without its correction: a batch whose mean MD is above `--tau`
  is skipped (`steps=0 skip_uncorrected=true`);
- dsc_anchor, md_gate_anchor: dsc_tau and md_gate against the paper's fixed historical model,
  the global model of round `--history-round` (`history_round`), at threshold `--tau-anchor`.

Writes OUT/single_learner.md, .csv and .png (the error increase per learner, with the
accumulation and with the trigger alone).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cells import add_cell_arguments, fmt, mean, run_cells  # noqa: E402

from fedguard.config import compose  # noqa: E402


def learners(args) -> dict[str, list[str]]:
    dsc = ["sanitizer=dsc", f"sanitizer.dsc.start_round={args.pretrain_rounds + 1}"]
    anchor = dsc + [f"sanitizer.dsc.history_round={args.history_round}", f"sanitizer.dsc.tau0={args.tau_anchor:g}",
                    "sanitizer.dsc.slope=0"]
    return {
        "plain": [],
        "clipping": ["defense=clipping", f"defense.clip_norm={args.clip_norm:g}"],
        "dsc": dsc,
        "dsc_tau": dsc + [f"sanitizer.dsc.tau0={args.tau:g}", "sanitizer.dsc.slope=0"],
        "dsc_all": dsc + ["sanitizer.dsc.tau0=0", "sanitizer.dsc.slope=0"],
        "md_filter": dsc + ["sanitizer.dsc.steps=0", f"sanitizer.dsc.drop_above={args.tau_drop:g}"],
        "md_gate": dsc + ["sanitizer.dsc.steps=0", "sanitizer.dsc.skip_uncorrected=true",
                          f"sanitizer.dsc.tau0={args.tau:g}", "sanitizer.dsc.slope=0"],
        "dsc_anchor": anchor,
        "md_gate_anchor": anchor + ["sanitizer.dsc.steps=0", "sanitizer.dsc.skip_uncorrected=true"],
    }


def learner_cells(args) -> dict[tuple[str, str, int], list[str]]:
    """{(learner, "acc" | "alone", seed): overrides}: the same run with and without the accumulation."""
    rounds = args.pretrain_rounds + args.accumulate_rounds + 1
    base = ["dataset=mnist", f"dataset.root={args.root}", "num_clients=1", "num_malicious=1", "attack=accumulative",
            "attack.form=data", f"rounds={rounds}", f"attack.trigger_round={rounds}", f"attack.eps={args.eps:g}",
            "attack.steps=5", f"evaluate_every={args.evaluate_every}", "backend.init_args.num_cpus=1"]
    variants = learners(args)
    return {(name, kind, seed): base + variants[name] + [f"attack.accumulate_rounds={n}", f"seed={seed}"]
            for name in args.learners for kind, n in (("acc", args.accumulate_rounds), ("alone", 0))
            for seed in args.seeds}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="dataset.root of MNIST")
    parser.add_argument("--pretrain-rounds", type=int, default=40)
    parser.add_argument("--accumulate-rounds", type=int, default=10)
    parser.add_argument("--eps", type=float, default=0.2, help="attack.eps of the poisons and the trigger")
    parser.add_argument("--clip-norm", type=float, default=0.5)
    parser.add_argument("--tau", type=float, default=0.25)
    parser.add_argument("--tau-drop", type=float, default=0.3)
    parser.add_argument("--history-round", type=int, default=20, help="the anchored learners' historical model")
    parser.add_argument("--tau-anchor", type=float, default=0.4, help="the anchored learners' threshold")
    parser.add_argument("--learners", nargs="+", default=["plain", "clipping", "dsc", "dsc_tau", "dsc_all", "md_filter",
                                                          "md_gate", "dsc_anchor", "md_gate_anchor"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_cell_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/single_learner")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    cells = learner_cells(args)
    done = run_cells(Path(args.runs), cells, args.jobs, run=not args.no_run)
    variants = learners(args)

    rows = []
    for name in args.learners:
        row = {"learner": name, "overrides": " ".join(variants[name]), "seeds": len(args.seeds)}
        for kind in ("acc", "alone"):
            runs = [done[name, kind, seed] for seed in args.seeds]
            failed = [s["error"] for s in runs if "error" in s]
            if failed:
                row[f"{kind}_error"] = failed[0]
                continue
            row[f"{kind}_before"] = mean([s["accuracy_before_trigger"] for s in runs])
            row[f"{kind}_after"] = mean([s["accuracy_after_trigger"] for s in runs])
            row[f"{kind}_increase"] = 100 * mean([s["trigger_drop"] for s in runs])
            row[f"{kind}_recall"] = mean([(s.get("sanitizer") or {}).get("recall") for s in runs])
            if kind == "alone" and "sanitizer=dsc" in variants[name]:  # honest online samples the sanitiser acted on
                online = args.accumulate_rounds * clean_samples_per_round(cells[name, kind, args.seeds[0]])
                row["alone_clean_flagged"] = mean([(s["sanitizer"]["flagged"] - s["sanitizer"]["flagged_poisoned"])
                                                   / online for s in runs])
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "learner", k))
    with open(out / "single_learner.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| learner | with accumulation: before -> after | error increase (points) | trigger alone: before -> after "
             "| error increase (points) | sanitiser recall on poisons, with accumulation "
             "| clean online samples flagged, trigger alone |", "|---" * 7 + "|"]
    for r in rows:
        cols = []
        for kind in ("acc", "alone"):
            if f"{kind}_error" in r:
                cols += [r[f"{kind}_error"], "-"]
            else:
                cols += [f"{r[f'{kind}_before']:.3f} -> {r[f'{kind}_after']:.3f}", f"{r[f'{kind}_increase']:.1f}"]
        lines.append(f"| {r['learner']} | " + " | ".join(cols)
                     + f" | {fmt(r.get('acc_recall'), 2)} | {fmt(r.get('alone_clean_flagged'), 2)} |")
    (out / "single_learner.md").write_text("\n".join(lines) + "\n")
    chart(rows, len(args.seeds), args.accumulate_rounds, out / "single_learner.png")
    print("\n".join(lines))


def clean_samples_per_round(overrides: list[str]) -> int:
    cfg = compose(overrides)
    return int(cfg.local_steps * cfg.batch_size)


def chart(rows: list[dict], seeds: int, accumulate_rounds: int, path: Path) -> None:
    """Grouped bars: the trigger-induced error increase of each learner, with and without the accumulation."""
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.6))
    for offset, (kind, label) in zip((-0.2, 0.2), (("acc", f"after {accumulate_rounds} rounds of poisons"),
                                                         ("alone", "trigger alone"))):
        ax.bar([i + offset for i in range(len(rows))], [r.get(f"{kind}_increase", float("nan")) for r in rows],
               width=0.4, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [r["learner"] for r in rows], rotation=20)
    ax.set_ylabel("error increase at the trigger (points)")
    ax.set_title(f"Single learner, MNIST ({seeds} seed{'s' if seeds > 1 else ''})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
