"""benchmarks/cells.py: run directories named by overrides, shared across benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cells import cell_dir, run_cell  # noqa: E402


def test_cell_dir_is_order_free_and_safe_for_hydra(tmp_path):
    a = cell_dir(tmp_path, ["dataset=mnist", "dataset.root=/data/x", "defense=fedavg", "seed=0"])
    b = cell_dir(tmp_path, ["seed=0", "defense=fedavg", "dataset.root=/elsewhere", "dataset=mnist"])
    assert a == b  # same cell whatever the order, wherever the files are
    assert a.name == "dataset-mnist__defense-fedavg__seed-0"
    assert cell_dir(tmp_path, ["seed=1", "defense=fedavg", "dataset=mnist"]) != a
    long = cell_dir(tmp_path, [f"key{i}=value,{i}/x" for i in range(40)])
    assert len(long.name) <= 200 and not set("=,/") & set(long.name)


def test_run_cell_reads_an_existing_summary_without_running(tmp_path):
    out = tmp_path / "cell"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"final_accuracy": 0.5}))
    assert run_cell(out, ["this=would-fail-if-run"]) == {"final_accuracy": 0.5}
