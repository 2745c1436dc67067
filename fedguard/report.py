"""`fedguard report RUN_DIR...`: a comparison table of runs and a comparison plot.

Accepts run directories or folders containing them (e.g. a Hydra multirun sweep).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from fedguard.plots import plot_comparison

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
    extra = cfg.get("attack", {}).get("name") if isinstance(cfg.get("attack"), dict) or cfg.get("attack") else None
    if extra and extra != "none":
        label += f" vs {extra}"
    return f"{label} n={cfg.num_clients} seed={cfg.seed} [{run.name}]"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def report(paths: list[Path], out: Path | None = None, console: Console | None = None) -> Path:
    runs = find_runs(paths)
    console = console or Console()
    table = Table(title=f"{len(runs)} run(s)")
    table.add_column("run")
    for name, _ in COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("TPR/FPR", justify="right")
    table.add_column("s/round", justify="right")
    curves = {}
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        label = run_label(run)
        det = summary.get("detection") or {}
        table.add_row(label, *[_fmt(summary.get(key)) for _, key in COLUMNS],
                      f"{_fmt(det.get('tpr'))}/{_fmt(det.get('fpr'))}" if det else "-",
                      _fmt(summary["timing"].get("round_s_mean")))
        curves[label] = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines() if line]
    console.print(table)
    out = out or (runs[0].parent if len(runs) > 1 else runs[0]) / "comparison.png"
    plot_comparison(curves, out)
    console.print(f"comparison plot: {out}")
    return out
