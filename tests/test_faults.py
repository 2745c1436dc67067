"""Injected client faults end to end: the run completes, every faulty client's reply is
rejected (or missing) with its reason, and the ground truth `fault` is in clients.jsonl."""

import json

import pytest

from fedguard import launch
from fedguard.config import compose
from fedguard.faults import fault_for, faulty_partitions

SMALL = ["num_clients=5", "rounds=2", "local_steps=4", "progress=false", "backend.init_args.num_cpus=2"]


def test_faulty_clients_are_a_seeded_fraction_of_the_sampled_ones():
    cfg = compose(["num_clients=10", "fraction_train=0.5", "faults.kind=nan", "faults.rate=0.2"])
    for rnd in range(1, 6):
        bad = faulty_partitions(cfg, rnd)
        assert len(bad) == 1 and bad == faulty_partitions(cfg, rnd)
        assert {p for p in range(10) if fault_for(cfg, rnd, p) == "nan"} == bad
    assert len({frozenset(faulty_partitions(cfg, r)) for r in range(1, 20)}) > 1  # varies by round
    assert faulty_partitions(compose(["faults.rate=0.5"]), 1) == set()  # kind=none: no faults
    assert len(faulty_partitions(compose(["faults.kind=crash", "faults.rate=0.34", "num_clients=6"]), 1)) == 2


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.slow
@pytest.mark.parametrize("kind, category", [("nan", "non-finite"), ("wrong_shape", "array shape"),
                                            ("crash", "client error")])
def test_run_with_faulty_clients_completes_and_records_rejections(tmp_path, kind, category):
    run = tmp_path / kind
    proc, summary = launch.run([*SMALL, f"faults.kind={kind}", "faults.rate=0.2"], run, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["rounds"] == 2 and summary["rejected"] == {category: 2}, summary["rejected"]
    rounds = _rows(run / "rounds.jsonl")
    assert all(r["valid_replies"] == 4 and r["faulty"] == 1 and not r["kept_previous_model"] for r in rounds)
    assert rounds[-1]["accuracy"] > rounds[0]["initial_accuracy"]  # still learning
    faulty = [c for c in _rows(run / "clients.jsonl") if c["fault"]]
    assert len(faulty) == 2 and all(c["fault"] == kind for c in faulty)
    assert all(c["rejected"].startswith(category + ":") for c in faulty)
    honest = [c for c in _rows(run / "clients.jsonl") if not c["fault"]]
    assert len(honest) == 8 and all(c["rejected"] is None for c in honest)
    if kind == "crash":
        assert "injected fault: crash" in faulty[0]["rejected"] and summary["failed_replies"] == 2
