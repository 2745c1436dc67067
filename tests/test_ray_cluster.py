"""Multi-node Ray: attach to an existing cluster, spread client updates over its nodes, lose a
node mid-run."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedguard import launch
from tests.test_simulation import fedguard, read_jsonl

pytestmark = pytest.mark.slow


def test_two_node_cluster_runs_clients_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run = tmp_path / "run"
        proc = fedguard("run", "num_clients=4", "rounds=2", "local_steps=3", "progress=false",
                        f"backend.init_args.address={cluster.address}", f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        nodes = {c["ray_node"] for c in read_jsonl(run / "clients.jsonl")}
        assert len(nodes) == 2, nodes
        assert json.loads((run / "summary.json").read_text())["rounds"] == 2
    finally:
        cluster.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_attach_to_a_head_started_with_ray_start(tmp_path):
    """`ray start --head` on loopback, `fedguard run backend.init_args.address=...`, then the
    test stops the head it started (and only that one)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            assert head.poll() is None, head.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1.0)
        run = tmp_path / "run"
        proc = fedguard("run", "num_clients=3", "rounds=2", "local_steps=3", "progress=false",
                        f"backend.init_args.address={address}", f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds"] == 2
        assert summary["ray"] == {"nodes": 1, "num_cpus": 2.0, "num_gpus": 0.0}  # the head's, not ray.init's own
        assert len(read_jsonl(run / "clients.jsonl")) == 6
        # a job without an address starts its own capped instance, never joins the running head
        own = tmp_path / "own"
        proc = fedguard("run", "num_clients=2", "rounds=1", "local_steps=3", "progress=false",
                        "backend.init_args.num_cpus=1", f"hydra.run.dir={own}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((own / "summary.json").read_text())["ray"]["num_cpus"] == 1.0
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        head.wait(timeout=120)
    deadline = time.monotonic() + 60
    while listening(port) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert not listening(port), "the head's GCS still listens after it was stopped"


def test_losing_a_worker_node_mid_run_finishes_and_accounts_for_every_client(tmp_path):
    """3 Ray nodes (a CPU-less head, two 1-CPU workers). After round 2 one worker is removed:
    the run still finishes, and every sampled client of every round has a row: accepted, or
    a failed reply / timeout with its reason (never silently dropped)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        run = tmp_path / "run"
        rounds, clients = 8, 4
        rows, removed = run / "rounds.jsonl", []

        def remove_a_worker_after_round_2(job: launch.Launch) -> None:
            if not removed and rows.is_file() and len(read_jsonl(rows)) >= 2:
                removed.append(len(read_jsonl(rows)))
                cluster.remove_node(workers[1])

        proc, _ = launch.run([f"num_clients={clients}", f"rounds={rounds}", "local_steps=40", "progress=false",
                              "checkpoint_every=0", "backend.round_timeout=60",
                              f"backend.init_args.address={cluster.address}"], run,
                             timeout=900, poll=remove_a_worker_after_round_2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert removed, "the run finished before round 2 was recorded"
        removed_at = removed[0]
        assert removed_at < rounds, "the run finished before the node was removed"

        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds"] == rounds
        by_round = {}
        for row in read_jsonl(run / "clients.jsonl"):
            by_round.setdefault(row["round"], []).append(row)
        for rnd in range(1, rounds + 1):
            got = by_round.get(rnd, [])
            assert sorted(r["partition_id"] for r in got) == list(range(clients)), (rnd, got)
            for r in got:  # accepted (an update), or rejected with its reason
                assert (r["rejected"] is None and r["train_loss"] is not None) or r["rejected"], r
        early = {r["ray_node"] for rnd in range(1, removed_at + 1) for r in by_round[rnd]}
        assert early == {w.node_id for w in workers}  # before: both workers trained clients
        # after the loss, accepted work ran on the surviving worker only
        late = [r for rnd in range(removed_at + 2, rounds + 1) for r in by_round[rnd] if r["rejected"] is None]
        assert late and {r["ray_node"] for r in late} == {workers[0].node_id}
    finally:
        cluster.shutdown()


def test_concurrent_multiruns_share_the_machine_within_their_caps(tmp_path):
    """Two Hydra multiruns at once on this machine, each capped at one CPU: every job gets its
    own Ray instance of exactly that size and a single client actor (the pitfall: each job
    building an actor pool over all the machine's cores)."""
    sweeps = [tmp_path / "a", tmp_path / "b"]
    runs = [launch.Launch(["-m", seeds, "num_clients=2", "rounds=2", "local_steps=3", "progress=false",
                           "backend.init_args.num_cpus=1", f"hydra.sweep.dir={sweep}"])
            for seeds, sweep in zip(("seed=0,1", "seed=2,3"), sweeps)]
    try:
        for job in runs:
            proc, _ = job.wait(timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        for job in runs:
            job.stop()
    jobs = sorted(p.parent for sweep in sweeps for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 4
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["ray"] == {"nodes": 1, "num_cpus": 1.0, "num_gpus": 0.0}, job
        assert len({c["actor_pid"] for c in read_jsonl(job / "clients.jsonl")}) == 1, job
