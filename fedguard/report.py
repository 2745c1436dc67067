"""`fedguard report [--out DIR] [--clean RUN_DIR] RUN_DIR...`: compare runs.

Prints a table and writes `comparison.csv` and `comparison.png` into a new report directory
(default: `report-<date>-<time>` beside the runs, so an earlier report is never overwritten).
Accepts run directories or folders containing them (e.g. a Hydra multirun sweep).

Columns: final accuracy, gap to clean (the final accuracy of the clean run with the same
data, model, clients, rounds and seed, minus this run's: a clean run among the inputs, or
`--clean`), trigger drop, attack success rate, the defense's attack-round TPR/FPR (flags on
the malicious clients' attacking rounds; honest rounds of an attacker do not count as
misses) and the mean round time. Each run is labelled by the config keys whose values differ
between the runs compared.
"""

from __future__ import annotations

import argparse
import csv
import json
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from fedguard.plots import plot_comparison
from fedguard.recorder import read_jsonl

# the keys a clean twin must share; and keys never used in labels
SAME_SETTING = ("dataset.name", "model.name", "num_clients", "rounds", "seed", "partitioner.name")
NOT_A_LABEL = ("run_dir", "resume", "progress")


class ReportError(ValueError):
    """Bad input to `fedguard report` (the CLI prints it as one line, exit code 2)."""


def find_runs(paths: list[Path]) -> list[Path]:
    """The run directories (holding summary.json) at or below `paths`."""
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"no such run directory: {path}")
        found = [path] if (path / "summary.json").is_file() else sorted(
            p.parent for p in path.rglob("summary.json"))
        if not found:
            raise ReportError(f"{path} holds no finished run (no summary.json at or below it)")
        runs += found
    return runs


def flat_config(run: Path) -> dict:
    """The run's saved config.yaml as dotted keys -> values."""
    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))))


def short_labels(configs: list[dict]) -> list[str]:
    """One label per run from the keys whose values differ between the runs (`defense.name=x`
    shown as `defense=x`). A knob of a group whose choice differs (`attack.norm_bound` beside
    `attack=...`) counts only where it differs between runs of the same choice. A single
    run, or runs alike, are labelled by dataset and defense."""
    def differs(key: str, runs: list[dict]) -> bool:
        return len({json.dumps(c.get(key)) for c in runs}) > 1

    keys = sorted({k for c in configs for k in c} - set(NOT_A_LABEL), key=lambda k: (not k.endswith(".name"), k))
    differ = []
    for key in keys:
        group = key.rsplit(".", 1)[0] + ".name" if "." in key else None
        if group is None or key == group or group not in configs[0] or not differs(group, configs):
            keep = differs(key, configs)
        else:  # the group's choice differs: compare within each choice
            choices = {json.dumps(c.get(group)) for c in configs}
            keep = any(differs(key, [c for c in configs if json.dumps(c.get(group)) == ch]) for ch in choices)
        if keep:
            differ.append(key)
    differ = differ or ["dataset.name", "defense.name"]
    labels = [" ".join(f"{k.removesuffix('.name')}={c.get(k)}" for k in differ) for c in configs]
    return [f"{label} #{labels[:i].count(label) + 1}" if labels.count(label) > 1 else label  # the same config twice
            for i, label in enumerate(labels)]


def is_clean(config: dict) -> bool:
    """No attacker and no poisoned stream."""
    return (config.get("attack.name") in (None, "none") or config.get("num_malicious") == 0) and \
        config.get("stream_poison.name") in (None, "none")


def clean_accuracy(config: dict, clean: list[tuple[dict, dict]]) -> float | None:
    """Final accuracy of the clean run in the same setting as `config` (None if none given)."""
    for clean_config, summary in clean:
        if all(clean_config.get(k) == config.get(k) for k in SAME_SETTING):
            return summary.get("final_accuracy")
    return None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def comparison_rows(runs: list[Path], clean_runs: list[Path]) -> list[dict]:
    """One row of headline metrics per run (see the module docstring)."""
    configs = [flat_config(r) for r in runs]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    clean = [(c, s) for c, s in zip(configs, summaries) if is_clean(c)]
    clean += [(flat_config(r), json.loads((r / "summary.json").read_text())) for r in clean_runs]
    rows = []
    for run, config, summary, label in zip(runs, configs, summaries, short_labels(configs)):
        attack_rounds = (summary.get("detection") or {}).get("attack_rounds") or {}
        reference = clean_accuracy(config, clean)
        final = summary.get("final_accuracy")
        rows.append({"run": label, "dir": str(run), "final_accuracy": final,
                     "gap_to_clean": None if reference is None or final is None else reference - final,
                     "trigger_drop": summary.get("trigger_drop"),
                     "attack_success_rate": summary.get("attack_success_rate"),
                     "attack_round_tpr": attack_rounds.get("tpr"), "attack_round_fpr": attack_rounds.get("fpr"),
                     "round_s_mean": summary["timing"].get("round_s_mean")})
    return rows


COLUMNS = [("final acc", "final_accuracy"), ("gap to clean", "gap_to_clean"), ("trigger drop", "trigger_drop"),
           ("ASR", "attack_success_rate"), ("TPR (attack rounds)", "attack_round_tpr"),
           ("FPR (attack rounds)", "attack_round_fpr"), ("s/round", "round_s_mean")]


def default_out_dir(runs: list[Path]) -> Path:
    """A new `report-<date>-<time>` directory beside the runs (a suffix if that one exists)."""
    base = runs[0].parent if len(runs) > 1 else runs[0]
    stem = base / f"report-{datetime.now():%Y%m%d-%H%M%S}"
    out, n = stem, 1
    while out.exists():
        out, n = Path(f"{stem}-{n}"), n + 1
    return out


def report(paths: list[Path], out: Path | None = None, clean: list[Path] | None = None,
           console: Console | None = None) -> Path:
    """Print the comparison table; write comparison.csv and comparison.png into `out`."""
    runs = find_runs(paths)
    rows = comparison_rows(runs, find_runs(clean) if clean else [])
    console = console or Console(width=None if Console().is_terminal else 160)
    table = Table(title=f"{len(runs)} run(s)")
    table.add_column("run")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(row["run"], *[_fmt(row[key]) for _, key in COLUMNS])
    console.print(table)
    out_dir = out or default_out_dir(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bars = {name: [row[key] for row in rows] for name, key in COLUMNS[:4]}
    plot_comparison({row["run"]: read_jsonl(Path(row["dir"]) / "rounds.jsonl") for row in rows},
                    {name: values for name, values in bars.items() if any(v is not None for v in values)},
                    out_dir / "comparison.png")  # a metric no run has gets no panel
    console.print(f"comparison table and plot: {out_dir / 'comparison.csv'}, {out_dir / 'comparison.png'}")
    return out_dir


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedguard report", description=__doc__.split("\n\n")[1])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories, or folders holding them (a multirun sweep)")
    parser.add_argument("--out", type=Path, help="report directory (default: a new report-<time> beside the runs)")
    parser.add_argument("--clean", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="clean run(s) for the gap-to-clean column (clean runs among RUN_DIR count too)")
    args = parser.parse_args(argv)
    try:
        report(args.runs, args.out, args.clean)
    except ReportError as err:
        parser.exit(2, f"fedguard report: {err}\n")
