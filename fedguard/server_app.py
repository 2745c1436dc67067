"""The ServerApp: each round, sample clients, exchange the global model with them, aggregate
through the strategy, evaluate on the test set, record, checkpoint (`serve`, one named step
each).

Sampling is the server's (seeded by `seed` and the round), so the same config gives the
same clients every run. Which SuperNode trains which client, and the clients' state the
server carries (virtual clients, resume), is `fedguard/federation.py`.

Every reply goes through `strategies.validation.ReplyValidator` (the outermost strategy);
sampled clients that did not answer within `backend.round_timeout` get a `missing` row.
After each `checkpoint_every` rounds the state to continue is written atomically
(`fedguard/checkpoint.py`); with `resume` the run continues from it, each client getting its
last reported `Context.state` back with its train message.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig
from torch import nn

from fedguard import checkpoint, interrupt
from fedguard.app_config import config_from_context
from fedguard.attacks.plan import ACCUMULATIVE, attack_plan, malicious_set, round_phase
from fedguard.config import RESUME_FREE_KEYS, flatten, resume_config
from fedguard.data.sources import DataSplits, splits_from_config
from fedguard.evaluation import evaluate, round_asr
from fedguard.federation import Exchange, Federation
from fedguard.models import arrays_to_model, build_model, flat_from_arrays, model_to_arrays
from fedguard.progress import RoundProgress
from fedguard.protocol import (
    ATTACK_STOPPED,
    ATTACK_STOPPED_ROUND,
    ATTACK_VAL_ACC,
    DEVICE,
    INFO,
    NUM_EXAMPLES,
    PID,
    RAY_NODE,
    TRAIN_LOSS,
    TRAIN_S,
)
from fedguard.recorder import Recorder
from fedguard.runtime import ray_resources
from fedguard.sampling import sample_partitions, sampled_count
from fedguard.sanitizers import record_fields
from fedguard.training import pretrain
from strategies import RoundNotes, build_strategy

app = ServerApp()
log = logging.getLogger("fedguard")  # under `fedguard run`: RUN_DIR/cli.log


def default_run_dir() -> Path:
    return Path("outputs") / "flwr" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


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
    trigger always do, every accumulate round under `attack.budget_action=trigger`, so
    summary.json's trigger drop and final accuracy are always there)."""
    if cfg.evaluate_every <= 1 or server_round in (1, cfg.rounds) or server_round % cfg.evaluate_every == 0:
        return True
    plan = attack_plan(cfg) if cfg.attack.name in ACCUMULATIVE else None
    if plan is None:
        return False
    if cfg.attack.budget_action == "trigger":  # the trigger may come in any accumulate round
        return plan.phase(server_round) in ("accumulate", "trigger")
    return server_round in (plan.trigger_round - 1, plan.trigger_round)


@dataclass
class Run:
    """What the rounds of a run share: set up by `start`, advanced by `serve`."""
    cfg: DictConfig
    run_dir: Path
    data: DataSplits
    device: torch.device
    model: nn.Module  # scratch model the global arrays are loaded into for evaluation
    arrays: ArrayRecord  # the global model
    federation: Federation
    strategy: object
    notes: RoundNotes
    recorder: Recorder
    first_round: int = 1
    initial_accuracy: float | None = None  # test accuracy of the initial model (fresh runs)
    timing: dict = field(default_factory=dict)  # this round's step times (s)


def start(grid: Grid, cfg: DictConfig) -> Run:
    """The run before its first round: model, recorder, federation (handshake), strategy,
    and with `resume` the checkpoint's state (the RNG restored last, so nothing draws from
    it before the first round)."""
    torch.manual_seed(cfg.seed)
    data = splits_from_config(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    if cfg.pretrain_epochs:  # a burned-in initial model (the same every run of this config and seed)
        pretrain(model, data.pool.x, data.pool.y, cfg.pretrain_epochs, cfg.lr, cfg.momentum, cfg.batch_size,
                 cfg.seed, device)
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
    federation = Federation.connect(grid, cfg, resumed=resume_round is not None)
    recorder.ray = ray_resources()
    recorder.supernodes = federation.supernodes.record()
    notes = RoundNotes()
    strategy = build_strategy(cfg, sampled_count(cfg.num_clients, cfg.fraction_train), notes,
                              model=copy.deepcopy(model), data=data, device=device)
    run = Run(cfg, run_dir, data, device, model, model_to_arrays(model), federation, strategy, notes, recorder)
    if ckpt is None:
        run.initial_accuracy = evaluate_global(run)[0]
        return run
    run.arrays = checkpoint.arrays_from_state(ckpt["arrays"])
    strategy.load_state_dict(ckpt["strategy"])
    recorder.load_state_dict(ckpt["recorder"])
    federation.client_states = {int(p): str(v) for p, v in ckpt["clients"].items()}
    run.first_round = int(ckpt["round"]) + 1
    checkpoint.set_rng_state(ckpt["rng"])  # last: nothing may draw between here and the loop
    return run


# ------------------------------------------------------------------------ a round's steps

def exchange(run: Run, grid: Grid, server_round: int) -> Exchange:
    """Sample this round's clients and train them on the global model."""
    cfg = run.cfg
    sampled = sample_partitions(cfg.num_clients, cfg.fraction_train, cfg.seed, server_round)
    return run.federation.exchange(grid, run.strategy, server_round, run.arrays, ConfigRecord({"lr": cfg.lr}),
                                   sampled, cfg.backend.round_timeout)


def aggregate(run: Run, server_round: int, exch: Exchange) -> bool:
    """The strategy's new global model from the replies; False when it kept the previous one."""
    new_arrays, _ = run.strategy.aggregate_train(server_round, exch.replies)
    if new_arrays is None:
        return False
    run.arrays = new_arrays
    return True


def evaluate_global(run: Run) -> tuple[float, float]:
    """(test accuracy, test loss) of the global model (loaded into `run.model`)."""
    return evaluate(arrays_to_model(run.model, run.arrays).to(run.device), run.data.test.x, run.data.test.y,
                    run.device)


def evaluate_round(run: Run, server_round: int) -> dict:
    """This round's test metrics: accuracy, test loss and (backdoor attacks) the attack
    success rate; None values on rounds `is_evaluated` skips."""
    if not is_evaluated(run.cfg, server_round):
        return {"accuracy": None, "test_loss": None}
    acc, loss = evaluate_global(run)
    return {"accuracy": acc, "test_loss": loss, **round_asr(run.cfg, run.model, run.data.test, run.device)}


def client_rows(replies: list[Message], partition_of: dict[int, int], notes: RoundNotes) -> list[dict]:
    """clients.jsonl rows of the replies: what each client reported, and the defense's notes."""
    rows = []
    for msg in replies:
        node = msg.metadata.src_node_id
        row = {"partition_id": partition_of.get(node), "node_id": node}
        if msg.has_error():
            row["rejected"] = f"client error: {msg.error.reason}"
        else:
            metrics = next(iter(msg.content.metric_records.values()), {})
            info = msg.content.config_records.get(INFO, {})
            row.update(train_loss=metrics.get(TRAIN_LOSS), num_examples=metrics.get(NUM_EXAMPLES),
                       client_train_s=metrics.get(TRAIN_S), ray_node=info.get(RAY_NODE),
                       actor_pid=info.get(PID), device=info.get(DEVICE))
            row.update(record_fields(metrics))  # stream-poison / sanitiser counts (recorder only)
            if ATTACK_STOPPED in info:  # accumulative attack with attack.stealth_drop (ground truth side)
                row.update(attack_stopped=bool(info[ATTACK_STOPPED]), attack_val_acc=info.get(ATTACK_VAL_ACC),
                           attack_stopped_round=info.get(ATTACK_STOPPED_ROUND))
        row.update(notes.clients.get(node, {}))
        rows.append(row)
    return rows


def recorded_phase(run: Run, server_round: int, exch: Exchange) -> str:
    """The plan's phase of the round (`round_phase`), except under
    `attack.budget_action=trigger`: the round a malicious client reports its error budget
    spent is its trigger round, and the plan's accumulate and trigger rounds after it are
    "after" (simulation ground truth, for the trigger drop of summary.json)."""
    phase = round_phase(run.cfg, server_round)
    if run.cfg.attack.budget_action != "trigger" or phase not in ("accumulate", "trigger"):
        return phase
    if any(r.get("phase") == "trigger" for r in run.recorder.rounds):
        return "after"
    fired = [m for m in exch.replies if not m.has_error()
             and m.content.config_records.get(INFO, {}).get(ATTACK_STOPPED_ROUND) == server_round]
    return "trigger" if fired or phase == "trigger" else phase


def record(run: Run, server_round: int, exch: Exchange, kept_previous: bool, metrics: dict) -> None:
    """Write the round's rounds.jsonl row and its clients' clients.jsonl rows."""
    cfg, notes, t = run.cfg, run.notes, run.timing
    defense_s = notes.timing.get("defense_s", 0.0)
    row = {"round": server_round, "accuracy": metrics["accuracy"], "test_loss": metrics["test_loss"],
           "phase": recorded_phase(run, server_round, exch), "sampled": len(exch.sampled), "replies": len(exch.replies),
           "failures": sum(m.has_error() for m in exch.replies), "missing": len(exch.missing()),
           "kept_previous_model": kept_previous, "global_norm": float(flat_from_arrays(run.arrays).norm()),
           "round_s": t["train_s"] + t["aggregate_s"] + t["evaluate_s"], "train_s": t["train_s"],
           "defense_s": defense_s, "aggregate_s": t["aggregate_s"] - defense_s, "evaluate_s": t["evaluate_s"]}
    row.update(notes.round)
    row.update({k: v for k, v in metrics.items() if k not in row})  # backdoor: asr
    if server_round == 1:
        row["initial_accuracy"] = run.initial_accuracy
    missing = [{"partition_id": p, "node_id": exch.node_of[p], "missing": True,
                "rejected": f"timeout: no reply within backend.round_timeout={cfg.backend.round_timeout}s"}
               for p in exch.missing()]
    rows = sorted(client_rows(exch.replies, exch.partition_of, notes) + missing,
                  key=lambda r: (r["partition_id"] is None, r["partition_id"]))
    run.recorder.record_round(row, rows)
    log.info("round %d (%s): accuracy %s, %d/%d replies, %d failed, %d missing%s", server_round, row["phase"],
             "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}", row["replies"], row["sampled"],
             row["failures"], row["missing"], ", previous model kept" if kept_previous else "")


def save_checkpoint(run: Run, server_round: int) -> None:
    """After every `checkpoint_every` rounds and the last: the state to continue from."""
    cfg = run.cfg
    if not cfg.checkpoint_every or (server_round % cfg.checkpoint_every and server_round != cfg.rounds):
        return
    checkpoint.save(run.run_dir, {
        "round": server_round, "arrays": checkpoint.arrays_state(run.arrays), "strategy": run.strategy.state_dict(),
        "clients": dict(run.federation.client_states), "rng": checkpoint.rng_state(),
        "recorder": run.recorder.state_dict(), "config": flatten(cfg)})


def timed(run: Run, step: str, fn, *args):
    """fn(*args), its wall time kept in `run.timing[step]`."""
    t0 = time.perf_counter()
    result = fn(*args)
    run.timing[step] = time.perf_counter() - t0
    return result


def serve(grid: Grid, cfg: DictConfig) -> dict:
    """Run `cfg.rounds` rounds on `grid` (continuing from a checkpoint with `resume`);
    returns the summary."""
    run = start(grid, cfg)
    run.recorder.start_s = time.perf_counter() - run.recorder.started
    log.info("run %s: %s, rounds %d-%d", run.run_dir, run.recorder.title(), run.first_round, cfg.rounds)
    with RoundProgress(cfg.rounds, enabled=cfg.progress) as progress:
        for rnd in range(run.first_round, cfg.rounds + 1):
            interrupt.check(rnd - 1)  # Ctrl-C: stop between rounds, never inside one
            run.notes.reset()
            exch = timed(run, "train_s", exchange, run, grid, rnd)
            updated = timed(run, "aggregate_s", aggregate, run, rnd, exch)
            metrics = timed(run, "evaluate_s", evaluate_round, run, rnd)
            interrupt.check(rnd - 1)  # nothing of an interrupted round is written
            record(run, rnd, exch, not updated, metrics)
            save_checkpoint(run, rnd)
            progress.advance(rnd, metrics["accuracy"])
    torch.save(flat_from_arrays(run.arrays), run.run_dir / checkpoint.FINAL_MODEL)
    return run.recorder.finish()


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, config_from_context(context))
