"""`fedguard report` on hand-made run directories (no simulation)."""

import csv
import json

import pytest
import yaml

from fedguard import report


def make_run(path, final, attack="none", num_malicious=0, defense="fedavg", seed=0, tpr=None):
    path.mkdir(parents=True)
    config = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}, "partitioner": {"name": "iid"},
              "num_clients": 10, "rounds": 3, "seed": seed, "num_malicious": num_malicious,
              "attack": {"name": attack, "norm_bound": 10.0}, "defense": {"name": defense, "clip_norm": None},
              "stream_poison": {"name": "none"}, "run_dir": str(path)}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    detection = {"tpr": 0.2, "fpr": 0.0, "attack_rounds": {"tpr": tpr, "fpr": 0.0}} if tpr is not None else None
    (path / "summary.json").write_text(json.dumps({
        "final_accuracy": final, "trigger_drop": 0.1 if attack != "none" else None, "attack_success_rate": None,
        "detection": detection, "timing": {"round_s_mean": 0.5}}))
    (path / "rounds.jsonl").write_text("".join(json.dumps({"round": r, "accuracy": final, "phase": "clean"}) + "\n"
                                               for r in (1, 2, 3)))
    return path


def test_report_rows_gap_to_clean_attack_round_rates_and_short_labels(tmp_path):
    clean = make_run(tmp_path / "sweep" / "0", 0.95)
    make_run(tmp_path / "sweep" / "1", 0.80, attack="accumulative", num_malicious=2, defense="mddsc", tpr=1.0)
    make_run(tmp_path / "sweep" / "2", 0.70, attack="accumulative", num_malicious=2)
    out = report.report([tmp_path / "sweep"], out=tmp_path / "rep")
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["run"] for r in rows] == ["attack=none defense=fedavg num_malicious=0",
                                       "attack=accumulative defense=mddsc num_malicious=2",
                                       "attack=accumulative defense=fedavg num_malicious=2"]
    assert [float(r["gap_to_clean"]) for r in rows] == pytest.approx([0.0, 0.15, 0.25])
    assert rows[1]["attack_round_tpr"] == "1.0" and rows[2]["attack_round_tpr"] == ""
    assert (out / "comparison.png").stat().st_size > 0
    assert (clean / "comparison.csv").exists() is False  # nothing written into the runs


def test_clean_twin_must_share_the_setting_and_can_be_given_apart(tmp_path):
    make_run(tmp_path / "clean_seed1", 0.9, seed=1)
    attacked = make_run(tmp_path / "attacked", 0.6, attack="sign_flip", num_malicious=1)
    rows = report.comparison_rows([attacked], report.find_runs([tmp_path / "clean_seed1"]))
    assert rows[0]["gap_to_clean"] is None  # another seed is not its clean run
    make_run(tmp_path / "clean_seed0", 0.9)
    rows = report.comparison_rows([attacked], [tmp_path / "clean_seed0"])
    assert rows[0]["gap_to_clean"] == pytest.approx(0.3)


def test_reports_never_overwrite_each_other(tmp_path):
    make_run(tmp_path / "a", 0.9)
    first = report.report([tmp_path / "a"])
    second = report.report([tmp_path / "a"])
    assert first != second and first.parent == second.parent == tmp_path / "a"


@pytest.mark.parametrize("argv, message", [([], "required: RUN_DIR"), (["{tmp}"], "holds no finished run"),
                                           (["{tmp}/nope"], "no such run directory")])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        report.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_same_config_twice_gets_two_labels(tmp_path):
    make_run(tmp_path / "a", 0.9)
    make_run(tmp_path / "b", 0.8)
    out = report.report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "rep")
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["run"] for r in rows] == ["dataset=digits defense=fedavg #1", "dataset=digits defense=fedavg #2"]
