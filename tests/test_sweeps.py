"""Sweeps: one Ray instance and one actor pool per process (fedguard/ray_session.py), the
SuperNodes chosen automatically (fedguard/supernodes.py)."""

import json

import pytest
import torch

from fedguard import launch
from fedguard.config import ConfigError
from fedguard.config.files import compose
from fedguard.ray_session import RaySession
from fedguard.sampling import sampled_count
from fedguard.supernodes import NODE_STATE_MAX, PER_CLIENT_MAX, resolve_supernodes
from tests.test_simulation import read_jsonl

VARYING = {"actor_pid", "ray_node", "node_id"}  # where it ran, not what it computed


def comparable(row: dict) -> dict:
    """A record without its timings (`*_s`) and where it ran."""
    return {k: v for k, v in row.items() if not k.endswith("_s") and k not in VARYING}


def records(run) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("timing")
    summary.pop("ray")
    return {"rounds": [comparable(r) for r in read_jsonl(run / "rounds.jsonl")],
            "clients": [comparable(r) for r in read_jsonl(run / "clients.jsonl")],
            "summary": summary, "model": torch.load(run / "final_model.pt")}


@pytest.mark.slow
def test_a_job_inside_a_sweep_records_what_it_records_alone(tmp_path):
    """Two jobs of one multirun share Ray and the client actors (the second job's updates come
    from the first job's actor processes); the second job's records, summary and final model
    equal those of the same job run alone, timings and placement aside."""
    common = ["num_clients=4", "rounds=3", "local_steps=3", "progress=false", "fraction_train=0.75",
              "partitioner=dirichlet", "backend.init_args.num_cpus=2"]
    sweep = tmp_path / "sweep"
    proc, _ = launch.run(["-m", "seed=0,1", *common, f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 2
    pids = [{c["actor_pid"] for c in read_jsonl(job / "clients.jsonl")} for job in jobs]
    assert pids[0] & pids[1], pids  # the actors of job 0 served job 1: no new start-up
    alone = tmp_path / "alone"
    proc, summary = launch.run(["seed=1", *common], alone, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not pids[1] & {c["actor_pid"] for c in read_jsonl(alone / "clients.jsonl")}
    inside, by_itself = records(jobs[1]), records(alone)
    assert inside["rounds"] == by_itself["rounds"]
    assert inside["clients"] == by_itself["clients"]
    assert inside["summary"] == by_itself["summary"]
    assert torch.equal(inside["model"], by_itself["model"])
    assert summary["supernodes"] == {"mode": "per_client", "count": 4, "virtual": False}
    assert 0 < summary["timing"]["start_s"] < summary["timing"]["total_s"]


# ----------------------------------------------------------------- the session's pools

class FakePool:
    def __init__(self, actors=2):
        self.pool, self.num_actors, self._future_to_actor = list(range(actors)), actors, {}
        self.terminated = False

    def terminate_all_actors(self):
        self.terminated = True


@pytest.fixture
def session(monkeypatch):
    import ray

    nodes = {"alive": frozenset({"a"})}
    monkeypatch.setattr("fedguard.ray_session._alive_nodes", lambda: nodes["alive"])
    monkeypatch.setattr("fedguard.ray_session._responsive", lambda pool: not getattr(pool, "dead", False))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    return RaySession(), nodes


def test_an_idle_pool_given_back_serves_the_next_run(session):
    s, _ = session
    pool = FakePool()
    s.give_back("k", pool)
    assert s.take_pool("k", FakePool) is pool and not pool.terminated
    assert s.take_pool("k", lambda: "fresh") == "fresh"  # taken: not shared by two runs at once
    other = FakePool()
    s.give_back("k", other)
    assert s.take_pool("other", lambda: "fresh") == "fresh"  # other client resources: other actors,
    assert other.terminated  # and the idle ones are stopped, so they do not hold the CPUs


def test_a_pool_with_busy_actors_or_on_changed_nodes_is_not_reused(session):
    s, nodes = session
    busy = FakePool()
    busy.pool.pop()  # an actor did not come back (a run that failed mid-round)
    s.give_back("k", busy)
    assert busy.terminated and s.take_pool("k", lambda: "fresh") == "fresh"
    kept = FakePool()
    s.give_back("k", kept)
    nodes["alive"] = frozenset({"a", "b"})  # a node joined or left since
    assert s.take_pool("k", lambda: "fresh") == "fresh" and kept.terminated
    died = FakePool()
    died.dead = True  # an actor died between the runs
    s.give_back("k", died)
    assert s.take_pool("k", lambda: "fresh") == "fresh" and died.terminated


# ------------------------------------------------------------- automatic SuperNodes

def test_supernodes_are_one_per_client_up_to_the_threshold_then_virtual():
    small = resolve_supernodes(compose([f"num_clients={PER_CLIENT_MAX}"]))
    assert (small.count, small.virtual, small.mode) == (PER_CLIENT_MAX, False, "per_client")
    cfg = compose(["dataset=synthetic", "num_clients=10000", "fraction_train=0.01"])
    big = resolve_supernodes(cfg)
    assert (big.count, big.virtual, big.mode) == (sampled_count(10000, 0.01), True, "virtual")
    fixed = resolve_supernodes(compose(["num_clients=20", "backend.num_supernodes=5"]))
    assert (fixed.count, fixed.virtual, fixed.mode) == (5, True, "virtual_fixed")


@pytest.mark.parametrize("setting", [["sanitizer=dsc", "sanitizer.dsc.history_lag=1"],
                                     ["sanitizer=confusion", "sanitizer.confusion.warm_start=true"]])
def test_per_node_state_keeps_a_supernode_per_client_and_is_refused_when_too_large(setting):
    at = resolve_supernodes(compose([*setting, "dataset=synthetic", f"num_clients={NODE_STATE_MAX}",
                                     "fraction_train=0.01"]))
    assert (at.count, at.virtual) == (NODE_STATE_MAX, False)
    with pytest.raises(ConfigError) as err:
        resolve_supernodes(compose([*setting, "dataset=synthetic", f"num_clients={NODE_STATE_MAX + 1}",
                                    "fraction_train=0.01"]))
    message = str(err.value)
    assert f"num_clients={NODE_STATE_MAX + 1}" in message and setting[1].split("=")[0] in message


# ----------------------------------------------------------------- start-up cuts

def test_digits_read_without_scikit_learn_equal_its_loader():
    import numpy as np
    from sklearn.datasets import load_digits

    from fedguard.data.sources import load_digits_all

    ours, theirs = load_digits_all(), load_digits()
    assert ours.x.shape == (1797, 1, 8, 8)
    assert np.array_equal(ours.x, (theirs.images.astype(np.float32) / 16.0)[:, None])
    assert np.array_equal(ours.y, theirs.target.astype(np.int64))


def test_a_client_actor_imports_no_scikit_learn():
    """What a client actor imports to run the ClientApp on digits leaves scikit-learn out
    (about 1 s of every actor's start on 2 cores)."""
    import subprocess
    import sys

    code = ("import sys; import fedguard.client_app; from fedguard.config.files import compose; "
            "from fedguard.data.sources import splits_from_config; splits_from_config(compose([])); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------ jobs at once, on a cluster

@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_runs_its_jobs_on_both_nodes(tmp_path):
    """`hydra/launcher=ray_jobs` on a 2-node `ray.cluster_utils.Cluster` (one CPU each): two
    slots, one per node, run the sweep's four jobs two at a time; each job's actor stays on its
    slot's node and serves the slot's next job; a job's records equal those of the same job
    run alone with one actor."""
    from ray.cluster_utils import Cluster

    common = ["num_clients=3", "rounds=2", "local_steps=3", "progress=false"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        sweep = tmp_path / "sweep"
        proc, _ = launch.run(["-m", "seed=0,1,2,3", *common, "hydra/launcher=ray_jobs",
                              f"hydra.launcher.address={cluster.address}", f"hydra.sweep.dir={sweep}"], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        cluster.shutdown()
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 4
    rows = [read_jsonl(job / "clients.jsonl") for job in jobs]
    nodes = [{c["ray_node"] for c in r} for r in rows]
    assert all(len(n) == 1 for n in nodes), nodes  # a job's actors share its slot's node
    assert len(set().union(*nodes)) == 2, nodes  # the sweep used both nodes
    pids = {c["actor_pid"] for r in rows for c in r}
    assert len(pids) == 2, pids  # one actor per slot, reused by the slot's next job
    alone = tmp_path / "alone"
    proc, _ = launch.run(["seed=1", *common, "backend.init_args.num_cpus=1"], alone, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _equal_records(records(jobs[1]), records(alone))


def _equal_records(a: dict, b: dict) -> bool:
    return (a["rounds"] == b["rounds"] and a["clients"] == b["clients"] and a["summary"] == b["summary"]
            and torch.equal(a["model"], b["model"]))
