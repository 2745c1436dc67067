"""Flower+Ray round time against a bare torch loop doing the same clients' training.

Both sides train the same sampled clients on the same stream batches with the same
model, aggregate with FedAvg and evaluate on the test set; the ratio of round times is
the framework's overhead (actor dispatch, serialisation, Flower messaging). Round 1
(actor start-up) is excluded from both means.

    python benchmarks/framework_overhead.py                       # mlp on digits
    python benchmarks/framework_overhead.py --mnist ../shared/data/mnist   # + cnn on MNIST
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedguard.config import compose, validate
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.models import arrays_to_model, build_model, flat_from_arrays, model_to_arrays, arrays_from_flat
from fedguard.server_app import sample_partitions
from fedguard.simulation import run_simulation
from fedguard.streams import IndexStream
from fedguard.evaluation import evaluate
from fedguard.training import sgd_steps


def flower_round_times(cfg) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg.run_dir = tmp
        run_simulation(cfg)
        rows = [json.loads(line) for line in (Path(tmp) / "rounds.jsonl").read_text().splitlines()]
    return [r["round_s"] for r in rows]


def bare_round_times(cfg) -> list[float]:
    """The same work with no framework: a Python loop over the sampled clients."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    data = splits_from_config(cfg)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    global_arrays = model_to_arrays(model)
    streams = {}
    times = []
    device = torch.device("cpu")
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        updates = []
        for pid in sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, rnd):
            if pid not in streams:
                streams[pid] = IndexStream(partition_from_config(cfg, data.pool.y, pid), cfg.seed, pid)
            arrays_to_model(model, global_arrays)
            batches = []
            for _ in range(cfg.local_steps):
                idx = streams[pid].next_batch(cfg.batch_size)
                batches.append((torch.from_numpy(data.pool.x[idx]), torch.from_numpy(data.pool.y[idx])))
            sgd_steps(model, batches, cfg.lr, cfg.momentum, device)
            updates.append(flat_from_arrays(model_to_arrays(model)))
        global_arrays = arrays_from_flat(torch.stack(updates).mean(0), global_arrays)
        evaluate(arrays_to_model(model, global_arrays), data.test.x, data.test.y, device)
        times.append(time.perf_counter() - start)
    return times


def measure(overrides: list[str]) -> dict:
    cfg = compose(overrides + ["progress=false"])
    validate(cfg)
    flower = flower_round_times(cfg.copy())
    bare = bare_round_times(cfg)
    f, b = statistics.mean(flower[1:]), statistics.mean(bare[1:])
    return {"overrides": overrides, "flower_ray_round_s": f, "bare_torch_round_s": b, "overhead_ratio": f / b,
            "flower_first_round_s": flower[0], "rounds": cfg.rounds, "clients_per_round": len(
                sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", help="MNIST directory; adds the cnn measurement")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default="benchmarks/results/framework_overhead.json")
    args = parser.parse_args()
    cases = [["dataset=digits", "num_clients=10", f"rounds={args.rounds}"]]
    if args.mnist:
        cases.append(["dataset=mnist", f"dataset.root={args.mnist}", "num_clients=20", f"rounds={args.rounds}"])
    results = []
    for overrides in cases:
        res = measure(overrides)
        results.append(res)
        print(f"{' '.join(overrides[:1])}: flower+ray {res['flower_ray_round_s']:.3f} s/round, "
              f"bare torch {res['bare_torch_round_s']:.3f} s/round, overhead x{res['overhead_ratio']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
