"""End-to-end: real Flower simulations on Ray, launched as a user would (subprocesses)."""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from fedguard import checkpoint, launch
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SMALL = ["num_clients=4", "rounds=3", "local_steps=5", "progress=false",
         "backend.init_args.num_cpus=2"]


def fedguard(command, *args, timeout=300, env=None):
    """`fedguard COMMAND ARGS` through the shared launcher (`fedguard.launch`: its own process
    group, stopped on timeout): the completed process."""
    proc, _ = launch.run(args, timeout=timeout, env=env, command=command)
    return proc


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    """The SuperLink's runtime HTTP API on `port` answers /health."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as resp:
            return resp.status == 200
    except OSError:
        return False


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
    report = fedguard("report", str(sweep), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "2 run(s)" in report.stdout
    with open(tmp_path / "report" / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    # labelled by what differs between the runs: the defense (and clipping's inner)
    assert sorted(r["run"] for r in rows) == ["defense=clipping", "defense=median"]
    assert all(0.0 <= float(r["final_accuracy"]) <= 1.0 for r in rows)
    assert (tmp_path / "report" / "comparison.png").is_file()


def test_bad_config_fails_before_any_work(tmp_path):
    proc = fedguard("run", "num_clients=3", "num_malicious=5", f"hydra.run.dir={tmp_path / 'x'}", timeout=60)
    assert proc.returncode != 0
    assert "num_malicious=5" in proc.stderr and "allowed" in proc.stderr
    assert not (tmp_path / "x" / "rounds.jsonl").exists()


def test_flwr_run_runs_the_same_apps(tmp_path):
    """Flower's own launcher: local SuperLink, same ServerApp/ClientApp, same run files.

    The test starts that SuperLink itself (the command `flwr run` would run, on free ports
    that `flwr run` is pointed at), so it can stop exactly that one, by its pid."""
    run = tmp_path / "flwr_run"
    http_port, control_port = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # use this environment, no uv sync
           "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port), "FLWR_LOCAL_CONTROL_API_PORT": str(control_port)}
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the SuperLink starts flower-superexec by name
    superlink = subprocess.Popen(
        [os.path.join(bin_dir, "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--control-api-address", f"127.0.0.1:{control_port}", "--host", "127.0.0.1", "--port", str(http_port),
         "--log-file", str(tmp_path / "superlink.log")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not healthy(http_port):  # what `flwr run` probes before starting a SuperLink of its own
            assert superlink.poll() is None, (tmp_path / "superlink.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the SuperLink did not come up"
            time.sleep(0.5)
        proc = subprocess.run([os.path.join(bin_dir, "flwr"), "run", ".", "--stream", "-c",
                               f"rounds=2 num_clients=4 progress=false run_dir='{run}'",
                               "--federation-config", "num-supernodes=4"],
                              cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    finally:
        launch.stop_session(superlink)  # its process group and session: the SuperLink and its runs
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
              "sanitizer.epic.start_round=1", "sanitizer.window=64"]
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
