"""Run benchmark cells: each cell is one real `fedguard run` in its own run directory.

A cell's directory is named by its overrides (`cell_dir`), and a directory that already
holds `summary.json` is read, not rerun: a benchmark can be interrupted and continued, and
benchmarks that share a cell (the same overrides under the same root) run it once. A cell is
keyed by its overrides, not by the code's defaults: after changing a default that a cell
depends on (e.g. an mddsc default for the mddsc cells), delete those cells (each run
directory's config.yaml says what it ran with).
`run_cells` runs cells `jobs` at a time. Keep `jobs=1` on a small machine: each run starts its
own Ray with `backend.init_args.num_cpus` actors, and two MNIST runs at once on 2 cores took
15-26 s per training round instead of 3 s (measured), slower in total than one after another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedguard import launch


def cell_dir(root: Path, overrides: list[str]) -> Path:
    """root / the sorted overrides as `key-value` joined by `__` (no `=` or `,`: the directory
    goes back to Hydra as `hydra.run.dir`, where a comma would start a sweep), dataset.root
    left out (where the files are is not what was run), hashed when too long for a file name."""
    kept = sorted(o for o in overrides if not o.startswith("dataset.root="))
    name = "__".join(o.replace("=", "-") for o in kept).replace("/", "_").replace(",", "_")
    if len(name) > 200:
        name = name[:180] + "__" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return root / name


NOT_RUN = {"error": "not run"}  # a cell without summary.json when running is not allowed


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every cell benchmark takes (where cells live, how they are run)."""
    parser.add_argument("--evaluate-every", type=int, default=5, help="evaluate_every (trigger rounds always evaluated)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (see benchmarks/cells.py)")
    parser.add_argument("--no-run", action="store_true", help="only tabulate the cells already run")
    parser.add_argument("--runs", default="benchmarks/results/runs", help="cell run directories (shared)")


def run_cell(out: Path, overrides: list[str], run: bool = True) -> dict:
    """The cell's summary.json, running `fedguard run` first if it has none (`NOT_RUN` when
    `run` is false); {"error": ...} if the run failed."""
    if not (out / "summary.json").is_file():
        if not run:
            return dict(NOT_RUN)
        proc, _ = launch.run([*overrides, "progress=false"], out)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads((out / "summary.json").read_text())


def run_cells(root: Path, cells: dict[str, list[str]], jobs: int = 1, run: bool = True) -> dict[str, dict]:
    """{key: overrides} -> {key: summary}, each run in `cell_dir(root, overrides)`, `jobs` at a
    time; with `run` false only the cells already run are read (the others: `NOT_RUN`)."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {key: pool.submit(run_cell, cell_dir(root, overrides), overrides, run)
                   for key, overrides in cells.items()}
        return {key: future.result() for key, future in futures.items()}


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
