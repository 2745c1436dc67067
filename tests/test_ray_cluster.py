"""Multi-node Ray: attach to an existing cluster and spread client updates over its nodes."""

import json

import pytest

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
