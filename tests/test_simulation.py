"""End-to-end: real Flower simulations on Ray, launched as a user would (subprocesses)."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from fedguard import checkpoint
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SMALL = ["num_clients=4", "rounds=3", "local_steps=5", "progress=false",
         "backend.init_args.num_cpus=2"]


def fedguard(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "fedguard.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_run_writes_the_run_directory_contract(tmp_path):
    run = tmp_path / "run"
    proc = fedguard("run", *SMALL, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "summary.json", "rounds.jsonl", "clients.jsonl", "accuracy.png"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ("final_accuracy", "accuracy_before_trigger", "accuracy_after_trigger", "trigger_drop",
                "attack_success_rate", "detection", "timing", "rounds"):
        assert key in summary, key
    assert set(summary["timing"]) >= {"total_s", "round_s_mean", "train_s", "defense_s", "aggregate_s"}
    rounds = read_jsonl(run / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3] and all(r["phase"] == "clean" for r in rounds)
    assert rounds[-1]["accuracy"] > rounds[0]["initial_accuracy"] + 0.2  # it learns
    clients = read_jsonl(run / "clients.jsonl")
    assert len(clients) == 12
    assert {c["partition_id"] for c in clients} == {0, 1, 2, 3}
    assert all(c["malicious"] is False and c["rejected"] is None and c["ray_node"] for c in clients)


def test_same_seed_same_records(tmp_path):
    runs = []
    for name in ("a", "b"):
        proc = fedguard("run", *SMALL, "fraction_train=0.5", "partitioner=dirichlet",
                        f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append([(r["round"], r["accuracy"], r["test_loss"]) for r in read_jsonl(tmp_path / name / "rounds.jsonl")])
    assert runs[0] == runs[1]


def test_multirun_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = fedguard("run", "-m", "defense=median,clipping", *SMALL, "rounds=2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = fedguard("report", str(sweep))
    assert report.returncode == 0, report.stderr
    assert "2 run(s)" in report.stdout
    with open(sweep / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["run"].split()[1] for r in rows) == ["clipping(fedavg)", "median"]
    assert all(0.0 <= float(r["final_accuracy"]) <= 1.0 for r in rows)
    assert (sweep / "comparison.png").is_file()


def test_bad_config_fails_before_any_work(tmp_path):
    proc = fedguard("run", "num_clients=3", "num_malicious=5", f"hydra.run.dir={tmp_path / 'x'}", timeout=60)
    assert proc.returncode != 0
    assert "num_malicious=5" in proc.stderr and "allowed" in proc.stderr
    assert not (tmp_path / "x" / "rounds.jsonl").exists()


def test_flwr_run_runs_the_same_apps(tmp_path):
    """Flower's own launcher: local SuperLink, same ServerApp/ClientApp, same run files."""
    run = tmp_path / "flwr_run"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # use this environment, no uv sync
    flwr = os.path.join(os.path.dirname(sys.executable), "flwr")
    try:
        proc = subprocess.run([flwr, "run", ".", "--stream", "-c",
                               f"rounds=2 num_clients=4 progress=false run_dir='{run}'",
                               "--federation-config", "num-supernodes=4"],
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    finally:
        subprocess.run(["pkill", "-f", f"flower-superlink.*{tmp_path}"], check=False)
        subprocess.run(["pkill", "-f", "flower-superlink"], check=False)
    assert (run / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rounds = read_jsonl(run / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert len(read_jsonl(run / "clients.jsonl")) == 8


def test_virtual_clients_train_exactly_as_one_supernode_per_client(tmp_path):
    """backend.num_supernodes=3 SuperNodes serving 6 clients (3 sampled a round, their state
    carried by the server) give the same records and the bit-identical final model as one
    SuperNode per client: stream cursors and a sanitiser's window state travel intact."""
    common = ["num_clients=6", "fraction_train=0.5", "rounds=4", "local_steps=3", "progress=false",
              "stream_poison=label_flip", "stream_poison.rate=0.2", "sanitizer=epic",
              "sanitizer.epic_start_round=1", "sanitizer.window=64"]
    runs = {}
    for name, extra in (("nodes", []), ("virtual", ["backend.num_supernodes=3"])):
        run = tmp_path / name
        proc = fedguard("run", *common, *extra, f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = run
    rows = {k: [(c["round"], c["partition_id"], c["train_loss"], c["sanitizer_flagged"])
                for c in read_jsonl(run / "clients.jsonl")] for k, run in runs.items()}
    assert rows["nodes"] == rows["virtual"]
    assert len({r[1] for r in rows["nodes"]}) > 3  # more clients than SuperNodes took part
    states = {k: checkpoint.load(run)["clients"] for k, run in runs.items()}  # last reported Context.state
    assert states["nodes"] == states["virtual"]
    windows = [json.loads(s)["epic"] for s in states["virtual"].values()]
    assert max(w["participations"] for w in windows) >= 2 and all(w["seen"] for w in windows)
    final = {k: torch.load(run / "final_model.pt") for k, run in runs.items()}
    assert torch.equal(final["nodes"], final["virtual"])
