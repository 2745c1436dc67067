"""The ServerApp: sample clients, send the global model, aggregate through the strategy,
evaluate on the test set, record.

Sampling is the server's (seeded by `seed` and the round), so the same config gives the
same clients every run; the inner Flower strategy is shown only the sampled nodes through
`SampledGrid`. Node ids are random per run, so a handshake (one query message per node)
first maps partition ids to node ids.

Virtual clients (`backend.num_supernodes` set): the federation has that many SuperNodes and
`num_clients` logical clients. Each round the sampled clients (sorted) are assigned to
SuperNodes 0, 1, ... in order; the train message names the client ("partition-id") and
carries its last reported `Context.state` (JSON, "resume-state"), which the ClientApp loads
in place of the node's. So the engine, the Ray actors and the handshake scale with the
SuperNodes, and the server keeps only each client's small JSON state (the stream cursor, a
sanitiser's window). Flower's simulation engine polls every SuperNode for messages (cost
O(SuperNodes x messages) per poll), which is what makes one SuperNode per client
impractical beyond ~1,000 clients.

Every reply goes through `strategies.validation.ReplyValidator` (the outermost strategy);
sampled clients that did not answer within `backend.round_timeout` get a `missing` row.
After each `checkpoint_every` rounds the state to continue is written atomically
(`fedguard/checkpoint.py`); with `resume` the run continues from it, each client getting its
last reported `Context.state` back with its train message.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from fedguard import checkpoint
from fedguard.app_config import config_from_context
from fedguard.config import RESUME_FREE_KEYS, flatten, resume_config
from fedguard.attacks.plan import attack_plan, malicious_set, round_phase
from fedguard.data.sources import splits_from_config
from fedguard.models import arrays_to_model, build_model, flat_from_arrays, model_to_arrays
from fedguard.progress import RoundProgress
from fedguard.recorder import Recorder
from fedguard.runtime import ray_resources
from fedguard.sanitizers import record_fields
from fedguard.sampling import sample_partitions, sampled_count
from fedguard.evaluation import evaluate, round_asr
# the protocol's keys under their former local names, until the body below uses the protocol names
from fedguard.protocol import ATTACK_STOPPED as INFO_STOPPED, ATTACK_VAL_ACC as INFO_VAL_ACC
from fedguard.protocol import PARTITION as PARTITION_KEY, RESUME_STATE as RESUME_KEY, STATE as STATE_INFO_KEY
from strategies import RoundNotes, build_strategy

app = ServerApp()
STARTUP_TIMEOUT_S = 300.0  # the handshake's timeout floor (a short round_timeout must not fail start-up)


class SampledGrid:
    """A view of a grid that exposes only this round's sampled nodes (duck-typed Grid)."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def __getattr__(self, name):  # everything else goes to the real grid
        return getattr(self._grid, name)


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
                       actor_pid=info.get("pid"), device=info.get("device"))
            row.update(record_fields(metrics))  # stream-poison / sanitiser counts (recorder only)
            if INFO_STOPPED in info:  # accumulative attack with attack.stealth_drop (ground truth side)
                row.update(attack_stopped=bool(info[INFO_STOPPED]), attack_val_acc=info.get(INFO_VAL_ACC))
        row.update(notes.clients.get(node, {}))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["partition_id"] is None, r["partition_id"]))


def with_client_states(messages: list[Message], partition_of: dict[int, int],
                       states: dict[int, str], virtual: bool = False) -> list[Message]:
    """Each train message also carries its client's saved `Context.state` (ConfigRecord key
    "resume-state"; the ClientApp applies it once, to a fresh node) and, with virtual
    clients, the client it trains as ("partition-id")."""
    for msg in messages:
        partition = partition_of.get(msg.metadata.dst_node_id)
        extra = {PARTITION_KEY: partition} if virtual else {}
        if states.get(partition):
            extra[RESUME_KEY] = states[partition]
        if not extra:
            continue
        content = RecordDict(dict(msg.content.items()))  # messages share one RecordDict
        keys = list(msg.content.config_records.keys()) or ["config"]
        for key in keys:
            base = dict(msg.content.config_records[key]) if key in msg.content.config_records else {}
            content[key] = ConfigRecord({**base, **extra})
        msg.content = content
    return messages


def round_assignment(sampled: list[int], node_of: dict[int, int], virtual: bool) -> dict[int, int]:
    """partition id -> node id of this round's sampled clients: each client's own SuperNode,
    or with virtual clients SuperNode i (the handshake's partition id i) for the i-th."""
    if virtual:
        return {p: node_of[i] for i, p in enumerate(sampled)}
    return {p: node_of[p] for p in sampled}


def reported_state(msg: Message) -> str | None:
    """The JSON `Context.state` a reply echoes in ConfigRecord "info" (None if absent/invalid)."""
    if msg.has_error() or not msg.has_content():
        return None
    info = msg.content.config_records.get("info")
    value = info.get(STATE_INFO_KEY) if info is not None else None
    if not isinstance(value, str) or len(value) > 1 << 16:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    ok = isinstance(parsed, dict) and all(isinstance(v, dict) for v in parsed.values())
    return value if ok else None


def check_resume_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run must have the config of the run it continues (bar RESUME_FREE_KEYS)."""
    saved = flatten(resume_config(run_dir))
    now = flatten(cfg)
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k))
    if diff:
        raise RuntimeError(f"resume={run_dir}: config differs from the saved config.yaml in "
                           + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in diff[:10]))


def is_evaluated(cfg: DictConfig, server_round: int) -> bool:
    """Whether round `server_round` evaluates the global model on the test set
    (`evaluate_every`; the first and last rounds and the rounds around an accumulative
    trigger always do, so summary.json's trigger drop and final accuracy are always there)."""
    if cfg.evaluate_every <= 1 or server_round in (1, cfg.rounds) or server_round % cfg.evaluate_every == 0:
        return True
    plan = attack_plan(cfg) if cfg.attack.name == "accumulative" else None
    return plan is not None and server_round in (plan.trigger_round - 1, plan.trigger_round)


def serve(grid: Grid, cfg: DictConfig) -> dict:
    """Run `cfg.rounds` rounds on `grid` (continuing from a checkpoint with `resume`);
    returns the summary."""
    torch.manual_seed(cfg.seed)
    data = splits_from_config(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    arrays = model_to_arrays(model)

    ckpt, resume_round = None, None
    if cfg.resume:
        run_dir = Path(cfg.resume)
        check_resume_config(cfg, run_dir)
        ckpt = checkpoint.load(run_dir)
        resume_round = int(ckpt["round"]) if ckpt else 0
    else:
        run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    # ground truth (malicious ids, injected faults): recorder only
    recorder = Recorder(run_dir, cfg, malicious=malicious_set(cfg), resume_round=resume_round)
    # the handshake waits for the Ray actors to start: never shorter than STARTUP_TIMEOUT_S
    node_of = handshake(grid, max(cfg.backend.round_timeout, STARTUP_TIMEOUT_S))
    virtual = cfg.backend.num_supernodes is not None
    supernodes = cfg.backend.num_supernodes if virtual else cfg.num_clients
    if sorted(node_of) != list(range(supernodes)):
        raise RuntimeError(
            f"expected {supernodes} SuperNodes (num_clients={cfg.num_clients}, backend.num_supernodes="
            f"{cfg.backend.num_supernodes}) but the federation has {len(node_of)} "
            f"(partition ids {sorted(node_of)[:5]}...); with `flwr run` pass "
            f"--federation-config 'num-supernodes={supernodes}'")
    recorder.ray = ray_resources()
    notes = RoundNotes()
    strategy = build_strategy(cfg, sampled_count(cfg.num_clients, cfg.fraction_train), notes,
                              model=copy.deepcopy(model), data=data, device=device)

    def test_accuracy(arr: ArrayRecord) -> tuple[float, float]:
        return evaluate(arrays_to_model(model, arr).to(device), data.test.x, data.test.y, device)

    client_states: dict[int, str] = {}  # partition id -> its last reported Context.state (JSON)
    first_round = 1
    if ckpt is not None:
        arrays = checkpoint.arrays_from_state(ckpt["arrays"])
        strategy.load_state_dict(ckpt["strategy"])
        recorder.load_state_dict(ckpt["recorder"])
        client_states = {int(p): str(v) for p, v in ckpt["clients"].items()}
        first_round = int(ckpt["round"]) + 1
        checkpoint.set_rng_state(ckpt["rng"])  # last: nothing may draw between here and the loop
    initial_acc = test_accuracy(arrays)[0] if first_round == 1 else None
    with RoundProgress(cfg.rounds, enabled=cfg.progress) as progress:
        for rnd in range(first_round, cfg.rounds + 1):
            notes.reset()
            t0 = time.perf_counter()
            sampled = sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, rnd)
            node_of_round = round_assignment(sampled, node_of, virtual)
            partition_of = {n: p for p, n in node_of_round.items()}
            view = SampledGrid(grid, list(node_of_round.values()))
            messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({"lr": cfg.lr}), view))
            if virtual or resume_round is not None:
                messages = with_client_states(messages, partition_of, client_states, virtual)
            replies = list(grid.send_and_receive(messages, timeout=cfg.backend.round_timeout))
            # order-independent aggregation: replies sorted by partition id
            replies.sort(key=lambda m: partition_of.get(m.metadata.src_node_id, -1))
            for msg in replies:
                state = reported_state(msg)
                if state is not None and msg.metadata.src_node_id in partition_of:
                    client_states[partition_of[msg.metadata.src_node_id]] = state
            t1 = time.perf_counter()
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
            t2 = time.perf_counter()
            kept_previous = new_arrays is None
            if not kept_previous:
                arrays = new_arrays
            evaluated = is_evaluated(cfg, rnd)
            acc, loss = test_accuracy(arrays) if evaluated else (None, None)
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
            if evaluated:  # backdoor: asr (model holds `arrays`: test_accuracy loaded it)
                row.update(round_asr(cfg, model, data.test, device))
            if rnd == 1:
                row["initial_accuracy"] = initial_acc
            replied = {partition_of.get(m.metadata.src_node_id) for m in replies}
            missing = [{"partition_id": p, "node_id": node_of_round[p], "missing": True,
                        "rejected": f"timeout: no reply within backend.round_timeout={cfg.backend.round_timeout}s"}
                       for p in sampled if p not in replied]
            rows = sorted(client_rows(replies, partition_of, notes) + missing,
                          key=lambda r: (r["partition_id"] is None, r["partition_id"]))
            recorder.record_round(row, rows)
            if cfg.checkpoint_every and (rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds):
                checkpoint.save(run_dir, {
                    "round": rnd, "arrays": checkpoint.arrays_state(arrays), "strategy": strategy.state_dict(),
                    "clients": dict(client_states), "rng": checkpoint.rng_state(),
                    "recorder": recorder.state_dict(), "config": flatten(cfg)})
            progress.advance(rnd, acc)
    torch.save(flat_from_arrays(arrays), run_dir / checkpoint.FINAL_MODEL)
    return recorder.finish()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, config_from_context(context))
