"""Checkpoint and resume: unit checks of the pieces, and a real SIGKILL of a real
`fedguard run` subprocess resumed to the same records and final model."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedguard import checkpoint, launch
from fedguard.config import compose, flatten, resume_config
from fedguard.data.sources import load_splits
from fedguard.models import build_model, flat_from_arrays, model_to_arrays
from fedguard.recorder import Recorder, truncate_jsonl
from strategies import RoundNotes
from strategies.factory import build_aggregator, build_strategy


# ------------------------------------------------------------------------- unit pieces

def test_checkpoint_is_atomic_and_round_trips_arrays_and_rng(tmp_path):
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
                          "b": Array(np.array([1.5, -2.0], dtype=np.float32))})
    np.random.seed(3)
    torch.manual_seed(3)
    rng = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    checkpoint.save(tmp_path, {"round": 2, "arrays": checkpoint.arrays_state(arrays), "rng": rng,
                               "clients": {0: '{"stream": {"epoch": 1, "position": 3}}'}})
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "checkpoint.pt.tmp").exists()
    state = checkpoint.load(tmp_path)  # weights_only=True
    back = checkpoint.arrays_from_state(state["arrays"])
    assert list(back.keys()) == ["w", "b"]
    for k in arrays:
        np.testing.assert_array_equal(back[k].numpy(), arrays[k].numpy())
        assert back[k].dtype == arrays[k].dtype
    torch.manual_seed(99), np.random.seed(99)
    checkpoint.set_rng_state(state["rng"])
    got = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert state["clients"][0].startswith('{"stream"')
    assert checkpoint.load(tmp_path / "nothing-here") is None


def test_recorder_truncates_to_the_checkpointed_round_and_restores_counters(tmp_path):
    cfg = compose(["num_clients=2"])
    rec = Recorder(tmp_path, cfg)
    for rnd in (1, 2, 3):
        rec.record_round({"round": rnd, "accuracy": 0.1 * rnd},
                         [{"partition_id": 0, "rejected": "non-finite: x" if rnd == 2 else None},
                          {"partition_id": 1}])
        if rnd == 2:
            state = rec.state_dict()
    with open(tmp_path / "clients.jsonl", "a") as fh:
        fh.write('{"round": 4, "partition_')  # a torn line of a killed run
    rec._rounds_fh.close(), rec._clients_fh.close()
    resumed = Recorder(tmp_path, cfg, resume_round=2)
    resumed.load_state_dict(state)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    clients = [json.loads(line) for line in (tmp_path / "clients.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and [c["round"] for c in clients] == [1, 1, 2, 2]
    assert resumed.rejected == {"non-finite": 1} and [r["round"] for r in resumed.rounds] == [1, 2]
    resumed.record_round({"round": 3, "accuracy": 0.3}, [{"partition_id": 0}])
    summary = resumed.finish()
    assert summary["rounds"] == 3 and summary["rejected"] == {"non-finite": 1}
    truncate_jsonl(tmp_path / "missing.jsonl", 1)  # no file: nothing to do


def test_mddsc_state_round_trips():
    cfg = compose(["defense=mddsc"])
    data = load_splits("digits", None, 200, 360, 0)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10)
    strategy = build_strategy(cfg, 4, RoundNotes(), model=model, data=data)
    mddsc = strategy.inner
    flat = flat_from_arrays(model_to_arrays(model))
    for r in range(3):
        mddsc.history.push(r, flat + r)
    mddsc.accepted.append((0.5, [0.4, 0.6]))
    mddsc._val_batch()
    state = strategy.state_dict()
    fresh = build_strategy(cfg, 4, RoundNotes(), model=build_model("mlp", data.input_shape, 10), data=data)
    fresh.load_state_dict(state)
    assert fresh.inner.history.rounds == [0, 1, 2]
    assert torch.equal(fresh.inner.history.reference("oldest")[0].params, flat)
    assert list(fresh.inner.accepted) == [(0.5, [0.4, 0.6])]
    assert fresh.inner.val_stream.cursor == mddsc.val_stream.cursor
    assert torch.equal(fresh.inner._val_batch()[0], mddsc._val_batch()[0])
    assert build_strategy(compose(), 4, RoundNotes()).state_dict() == {"inner": None}  # fedavg: stateless
    assert build_aggregator("fedavg", cfg, 4) is not None


def test_resume_config_is_the_saved_one(tmp_path):
    cfg = compose(["rounds=7", "seed=3"])
    Recorder(tmp_path, cfg)
    back = resume_config(tmp_path)
    assert back.rounds == 7 and back.seed == 3 and back.resume == str(tmp_path) and back.run_dir == str(tmp_path)
    keep = {k: v for k, v in flatten(back).items() if k not in ("resume", "run_dir")}
    assert keep == {k: v for k, v in flatten(cfg).items() if k not in ("resume", "run_dir")}


# ------------------------------------------------------------------------- the real kill

# sampling 3 of 5 clients (so some resume without having trained since the checkpoint),
# a sign-flipping client and the mddsc defense (whose history must survive the kill)
RUN = ["num_clients=5", "fraction_train=0.6", "rounds=4", "local_steps=4", "progress=false",
       "backend.init_args.num_cpus=2", "defense=mddsc", "attack=sign_flip", "num_malicious=1"]


def _rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {"PYTHONUNBUFFERED": "1"}
    proc, _ = launch.run(RUN, full, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with launch.Launch(RUN, killed, env=env) as run:  # its own session: the run and its Ray processes
        deadline = time.time() + 300
        while time.time() < deadline and len(_rows(killed / "rounds.jsonl")) < 2 and run.running():
            time.sleep(0.05)
        assert run.running(), "the run ended before it could be killed"
        assert len(_rows(killed / "rounds.jsonl")) >= 2
        run.stop(signal.SIGKILL)  # SIGKILL to its process group, then to what is left of its session
    assert run.proc.returncode == -signal.SIGKILL
    written = [r["round"] for r in _rows(killed / "rounds.jsonl")]
    assert not (killed / "summary.json").exists() and written[-1] < 4, written
    deadline = time.time() + 20  # Ray's processes may take a moment to go
    while launch.session_pids(run.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not launch.session_pids(run.pid), "processes of the killed run survive"

    # resume= alone: the saved config is the run's (an override changing it is refused, tests/test_preflight.py)
    proc, _ = launch.run([f"resume={killed}"], timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _rows(full / "rounds.jsonl"), _rows(killed / "rounds.jsonl")
    assert [r["round"] for r in b] == [1, 2, 3, 4]  # none lost, none twice
    assert [(r["round"], r["accuracy"], r["test_loss"], r["global_norm"]) for r in a] == \
           [(r["round"], r["accuracy"], r["test_loss"], r["global_norm"]) for r in b]
    key = lambda c: (c["round"], c["partition_id"], c["train_loss"], c["num_examples"], c.get("md"),  # noqa: E731
                     c.get("flagged"), c.get("correction"), c["rejected"])
    assert [key(c) for c in _rows(full / "clients.jsonl")] == [key(c) for c in _rows(killed / "clients.jsonl")]
    assert torch.equal(torch.load(full / "final_model.pt"), torch.load(killed / "final_model.pt"))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    for k in ("final_accuracy", "rounds", "detection", "rejected", "accuracy_before_trigger"):
        assert sa[k] == sb[k], k


SHORT = ["num_clients=4", "rounds=12", "local_steps=2", "progress=false", "backend.init_args.num_cpus=2"]


@pytest.mark.slow
def test_ctrl_c_stops_between_rounds_then_resume_equals_the_uninterrupted_run(tmp_path):
    """SIGINT to the run's process group, as a terminal's Ctrl-C sends it, at round 4 or later:
    the run exits 130 within 60 s, records no partial round, and `resume=` completes it
    exactly as the uninterrupted run."""
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    env = {"PYTHONUNBUFFERED": "1"}
    proc, _ = launch.run(SHORT, full, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with launch.Launch(SHORT, stopped, env=env) as run:
        deadline = time.time() + 300
        while time.time() < deadline and len(_rows(stopped / "rounds.jsonl")) < 4 and run.running():
            time.sleep(0.05)
        assert run.running(), "the run ended before Ctrl-C"
        os.killpg(run.pid, signal.SIGINT)
        done, _ = run.wait(timeout=60)
    err = done.stderr
    assert done.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"resume={stopped}" in err, err[-3000:]
    rows = _rows(stopped / "rounds.jsonl")
    assert 4 <= len(rows) < 12 and not (stopped / "summary.json").exists()
    assert not any(r["missing"] or r["kept_previous_model"] for r in rows)

    proc, _ = launch.run([f"resume={stopped}"], timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _rows(full / "rounds.jsonl"), _rows(stopped / "rounds.jsonl")
    assert [(r["round"], r["accuracy"], r["test_loss"]) for r in a] == [(r["round"], r["accuracy"], r["test_loss"])
                                                                         for r in b]
    assert torch.equal(torch.load(full / "final_model.pt"), torch.load(stopped / "final_model.pt"))
