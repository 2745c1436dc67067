"""End-to-end: the accumulative attack in a real Flower+Ray simulation (subprocess `fedguard run`)."""

import json

import pytest

from fedguard.attacks.plan import malicious_ids
from tests.test_simulation import fedguard, read_jsonl

pytestmark = pytest.mark.slow


def test_accumulative_attack_run_records_phases_and_ground_truth(tmp_path):
    run = tmp_path / "run"
    proc = fedguard("run", "dataset=digits", "num_clients=4", "num_malicious=1", "attack=accumulative",
                    "rounds=4", "attack.trigger_round=4", "attack.accumulate_rounds=2", "progress=false",
                    "backend.init_args.num_cpus=2", "seed=0", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = read_jsonl(run / "rounds.jsonl")
    assert [r["phase"] for r in rounds] == ["burn_in", "accumulate", "accumulate", "trigger"]
    clients = read_jsonl(run / "clients.jsonl")
    assert len(clients) == 16 and all(c["rejected"] is None for c in clients)
    expected = set(malicious_ids(4, 1, 0))
    assert {c["partition_id"] for c in clients if c["malicious"]} == expected
    assert all(c["malicious"] == (c["partition_id"] in expected) for c in clients)
    summary = json.loads((run / "summary.json").read_text())
    assert isinstance(summary["trigger_drop"], float)
    assert summary["accuracy_before_trigger"] == rounds[2]["accuracy"]
    assert summary["accuracy_after_trigger"] == rounds[3]["accuracy"]
