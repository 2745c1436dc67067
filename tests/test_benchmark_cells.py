"""benchmarks/cells.py: run directories named by overrides, shared across benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cells import NOT_RUN, cell_dir, run_cell, run_cells  # noqa: E402


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


def test_run_cells_without_running_reads_existing_and_marks_the_rest(tmp_path):
    done = cell_dir(tmp_path, ["seed=0"])
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"final_accuracy": 0.9}))
    got = run_cells(tmp_path, {"a": ["seed=0"], "b": ["seed=1"]}, run=False)
    assert got == {"a": {"final_accuracy": 0.9}, "b": NOT_RUN}
    assert not cell_dir(tmp_path, ["seed=1"]).exists()


def test_single_learner_cells_are_valid_runs_whose_online_phase_starts_with_the_poisons(tmp_path):
    from fedguard.config import compose, validate
    from single_learner import build_parser, learner_cells

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).touch()  # validate checks that the files are there, not what they hold
    cells = learner_cells(build_parser().parse_args(["--root", str(tmp_path)]))
    assert {kind for _, kind, _ in cells} == {"acc", "alone"} and len(cells) == 18
    for (name, kind, seed), overrides in cells.items():
        cfg = compose(overrides)
        validate(cfg)
        assert cfg.num_clients == 1 and cfg.attack.trigger_round == cfg.rounds == 51
        assert cfg.attack.accumulate_rounds == (10 if kind == "acc" else 0)
        other = cells[name, "alone" if kind == "acc" else "acc", seed]
        assert [o for o in overrides if o not in other] == [f"attack.accumulate_rounds={cfg.attack.accumulate_rounds}"]
        if cfg.sanitizer.name == "dsc":  # pretraining ends where the accumulation starts
            assert cfg.sanitizer.dsc.start_round == 51 - 10
