"""`fedguard report RUN_DIR...`: a comparison table of runs (printed and written as
comparison.csv) and a comparison plot (comparison.png).

Accepts run directories or folders containing them (e.g. a Hydra multirun sweep).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from fedguard.plots import plot_comparison
from fedguard.recorder import read_jsonl

COLUMNS = [("final acc", "final_accuracy"), ("best acc", "best_accuracy"),
           ("trigger drop", "trigger_drop"), ("ASR", "attack_success_rate")]


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such run directory: {path}")
        found = [path] if (path / "summary.json").is_file() else sorted(
            p.parent for p in path.rglob("summary.json"))
        if not found:
            raise FileNotFoundError(f"{path} holds no run (no summary.json below it)")
        runs += found
    return runs


def run_label(run: Path) -> str:
    cfg = OmegaConf.load(run / "config.yaml")
    label = f"{cfg.dataset.name}/{cfg.model.name} {cfg.defense.name}"
    if cfg.defense.get("inner"):
        label += f"({cfg.defense.inner})"
    attack = OmegaConf.select(cfg, "attack.name")
    if attack and attack != "none":
        label += f" vs {attack}"
    poison, sanitizer = OmegaConf.select(cfg, "stream_poison.name"), OmegaConf.select(cfg, "sanitizer.name")
    if poison and poison != "none":
        label += f" stream:{poison}"
    if sanitizer and sanitizer != "none":
        label += f" sanitizer:{sanitizer}"
    return f"{label} n={cfg.num_clients} seed={cfg.seed}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def report(paths: list[Path], out: Path | None = None, console: Console | None = None) -> Path:
    """Print the table; write comparison.csv and comparison.png into `out` (default: beside the runs)."""
    runs = find_runs(paths)
    console = console or Console(width=None if Console().is_terminal else 160)
    table = Table(title=f"{len(runs)} run(s)")
    table.add_column("run")
    table.add_column("dir")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("TPR/FPR", justify="right")
    table.add_column("sanitizer P/R", justify="right")
    table.add_column("s/round", justify="right")
    curves, rows = {}, []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        label = run_label(run)
        det = summary.get("detection") or {}
        san = summary.get("sanitizer") or {}
        row = {"run": label, "dir": str(run), **{key: summary.get(key) for _, key in COLUMNS},
               "tpr": det.get("tpr"), "fpr": det.get("fpr"),
               "sanitizer_precision": san.get("precision"), "sanitizer_recall": san.get("recall"),
               "round_s_mean": summary["timing"].get("round_s_mean")}
        rows.append(row)
        table.add_row(label, run.name, *[_fmt(row[key]) for _, key in COLUMNS],
                      f"{_fmt(row['tpr'])}/{_fmt(row['fpr'])}" if det else "-",
                      f"{_fmt(row['sanitizer_precision'])}/{_fmt(row['sanitizer_recall'])}" if san else "-",
                      _fmt(row["round_s_mean"]))
        curves[f"{label} [{run.name}]"] = read_jsonl(run / "rounds.jsonl")
    console.print(table)
    out_dir = out or (runs[0].parent if len(runs) > 1 else runs[0])
    with open(out_dir / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_comparison(curves, out_dir / "comparison.png")
    console.print(f"comparison table and plot: {out_dir / 'comparison.csv'}, {out_dir / 'comparison.png'}")
    return out_dir
