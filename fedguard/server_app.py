"""The ServerApp: sample clients, send the global model, aggregate through the strategy,
evaluate on the test set, record.

Sampling is the server's (seeded by `seed` and the round), so the same config gives the
same clients every run; the inner Flower strategy is shown only the sampled nodes through
`SampledGrid`. Node ids are random per run, so a handshake (one query message per node)
first maps partition ids to node ids.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fedguard.app_config import config_from_context
from fedguard.attacks.client import malicious_set, round_phase
from fedguard.data.sources import splits_from_config
from fedguard.models import arrays_to_model, build_model, flat_from_arrays, model_to_arrays
from fedguard.progress import RoundProgress
from fedguard.recorder import Recorder
from fedguard.training import evaluate
from strategies import RoundNotes, build_strategy

app = ServerApp()


class SampledGrid:
    """A view of a grid that exposes only this round's sampled nodes (duck-typed Grid)."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name):  # everything else goes to the real grid
        return getattr(self._grid, name)


def sample_partitions(num_clients: int, fraction: float, seed: int, server_round: int) -> list[int]:
    """The partition ids trained in `server_round` (seeded; sorted)."""
    k = max(1, int(round(fraction * num_clients)))
    if k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, server_round])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def handshake(grid: Grid, timeout: float) -> dict[int, int]:
    """partition id -> node id, asked of every node once."""
    node_ids = sorted(grid.get_node_ids())
    messages = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"handshake failed on node {reply.metadata.src_node_id}: {reply.error.reason}")
        mapping[int(reply.content["identity"]["partition-id"])] = reply.metadata.src_node_id
    return mapping


def default_run_dir() -> Path:
    return Path("outputs") / "flwr" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def client_rows(replies: list[Message], partition_of: dict[int, int], notes: RoundNotes) -> list[dict]:
    rows = []
    for msg in replies:
        node = msg.metadata.src_node_id
        row = {"partition_id": partition_of.get(node), "node_id": node}
        if msg.has_error():
            row["rejected"] = f"client error: {msg.error.reason}"
        else:
            metrics = next(iter(msg.content.metric_records.values()), {})
            info = msg.content.config_records.get("info", {})
            row.update(train_loss=metrics.get("train_loss"), num_examples=metrics.get("num-examples"),
                       client_train_s=metrics.get("train_s"), ray_node=info.get("ray-node"),
                       device=info.get("device"))
        row.update(notes.clients.get(node, {}))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["partition_id"] is None, r["partition_id"]))


def serve(grid: Grid, cfg: DictConfig) -> dict:
    """Run `cfg.rounds` rounds on `grid`; returns the summary."""
    torch.manual_seed(cfg.seed)
    data = splits_from_config(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    arrays = model_to_arrays(model)

    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    recorder = Recorder(run_dir, cfg, malicious=malicious_set(cfg))  # ground truth: recorder only
    node_of = handshake(grid, cfg.backend.round_timeout)
    if sorted(node_of) != list(range(cfg.num_clients)):
        raise RuntimeError(
            f"num_clients={cfg.num_clients} but the federation has {len(node_of)} SuperNodes "
            f"(partition ids {sorted(node_of)[:5]}...); with `flwr run` pass "
            f"--federation-config 'num-supernodes={cfg.num_clients}'")
    partition_of = {n: p for p, n in node_of.items()}
    sampled_count = len(sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, 1))
    notes = RoundNotes()
    strategy = build_strategy(cfg, sampled_count, notes, model=copy.deepcopy(model), data=data, device=device)

    def test_accuracy(arr: ArrayRecord) -> tuple[float, float]:
        return evaluate(arrays_to_model(model, arr).to(device), data.test.x, data.test.y, device)

    initial_acc, _ = test_accuracy(arrays)
    with RoundProgress(cfg.rounds, enabled=cfg.progress) as progress:
        for rnd in range(1, cfg.rounds + 1):
            notes.reset()
            t0 = time.perf_counter()
            sampled = sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, rnd)
            view = SampledGrid(grid, [node_of[p] for p in sampled])
            messages = strategy.configure_train(rnd, arrays, ConfigRecord({"lr": cfg.lr}), view)
            replies = list(grid.send_and_receive(messages, timeout=cfg.backend.round_timeout))
            # order-independent aggregation: replies sorted by partition id
            replies.sort(key=lambda m: partition_of.get(m.metadata.src_node_id, -1))
            t1 = time.perf_counter()
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
            t2 = time.perf_counter()
            kept_previous = new_arrays is None
            if not kept_previous:
                arrays = new_arrays
            acc, loss = test_accuracy(arrays)
            t3 = time.perf_counter()
            defense_s = notes.timing.get("defense_s", 0.0)
            failures = sum(m.has_error() for m in replies)
            row = {"round": rnd, "accuracy": acc, "test_loss": loss, "phase": round_phase(cfg, rnd),
                   "sampled": len(sampled), "replies": len(replies), "failures": failures,
                   "missing": len(sampled) - len(replies), "kept_previous_model": kept_previous,
                   "global_norm": float(flat_from_arrays(arrays).norm()),
                   "round_s": t3 - t0, "train_s": t1 - t0, "defense_s": defense_s,
                   "aggregate_s": t2 - t1 - defense_s, "evaluate_s": t3 - t2}
            row.update(notes.round)
            if rnd == 1:
                row["initial_accuracy"] = initial_acc
            recorder.record_round(row, client_rows(replies, partition_of, notes))
            progress.advance(rnd, acc)
    return recorder.finish()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, config_from_context(context))
