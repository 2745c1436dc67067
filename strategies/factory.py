"""Build the server strategy named by `defense=` from the config.

Robust aggregators are Flower's own `flwr.serverapp.strategy` classes. Client sampling is
done by the ServerApp (seeded, reproducible) through a grid view, so every inner strategy
is built with `fraction_train=1.0` over the nodes it is shown, and client-side evaluation
is off (the server evaluates the global model itself).
"""

from __future__ import annotations

from pathlib import Path

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from strategies.base import RoundNotes
from strategies.clipping import NormClipping
from strategies.epic_updates import EPICUpdates
from strategies.mddsc import MDDSC
from strategies.omniscient import OMNISCIENT, omniscient_from_config
from strategies.validation import ReplyValidator

_COMMON = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
               min_evaluate_nodes=0, min_available_nodes=1)


def assumed_malicious(cfg) -> int:
    d = cfg.defense
    return int(d.assumed_malicious if d.assumed_malicious is not None else cfg.num_malicious)


def build_aggregator(name: str, cfg, sampled: int) -> Strategy:
    f = assumed_malicious(cfg)
    if name == "fedavg":
        return FedAvg(**_COMMON)
    if name == "median":
        return FedMedian(**_COMMON)
    if name == "trimmed_mean":
        return FedTrimmedAvg(beta=cfg.defense.trim_beta, **_COMMON)
    if name == "krum":
        return Krum(num_malicious_nodes=f, **_COMMON)
    if name == "multikrum":
        m = cfg.defense.multikrum_select
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=int(m if m is not None else max(1, sampled - f)),
                         **_COMMON)
    if name == "bulyan":
        return Bulyan(num_malicious_nodes=f, **_COMMON)
    raise ValueError(f"unknown aggregator {name!r}")


def build_strategy(cfg, sampled: int, notes: RoundNotes | None = None, model=None, data=None,
                   device=None) -> Strategy:
    """The full server strategy: reply validation (always outermost) around the defense."""
    defense = build_defense(cfg, sampled, notes, model=model, data=data, device=device)
    if cfg.attack.name in OMNISCIENT:  # the attacker's server-side part, before the defense
        defense = omniscient_from_config(cfg, defense, notes, model)
    return ReplyValidator(defense, notes, max_examples=int(cfg.local_steps) * int(cfg.batch_size),
                          weighting=cfg.get("weighting", "num_examples"), min_replies=cfg.get("min_replies", 1))


def build_defense(cfg, sampled: int, notes: RoundNotes | None = None, model=None, data=None,
                  device=None) -> Strategy:
    """The defense: wrappers (outermost first) around an inner aggregator.

    `model` (a template of the run's architecture) and `data` (its DataSplits, for the
    server's validation stream) are needed by `mddsc` only.
    """
    d = cfg.defense

    def clipping(inner_name: str) -> NormClipping:
        return NormClipping(build_aggregator(inner_name, cfg, sampled), d.clip_norm, d.clip_multiplier, notes)

    if d.name == "clipping":
        return clipping(d.inner)
    if d.name == "epic_updates":
        inner = clipping("fedavg") if d.inner == "clipping" else build_aggregator(d.inner, cfg, sampled)
        return EPICUpdates(inner, d.epic_fraction, d.epic_max_cluster, notes)
    if d.name == "mddsc":
        inner = clipping("fedavg") if d.inner == "clipping" else build_aggregator(d.inner, cfg, sampled)
        h, t, c = d.history, d.threshold, d.correction
        run_dir = cfg.get("run_dir")  # null under `flwr run`: the history makes a temporary directory
        return MDDSC(inner, model, data.val.x, data.val.y, seed=cfg.seed, val_batch=d.val_batch,
                     history_size=h.size, history_stride=h.stride, history_dtype=h.dtype,
                     history_spill=h.spill, history_spill_dir=str(Path(run_dir) / "history") if run_dir else None,
                     score_chunk=d.score_chunk,
                     reference=h.reference, lag=h.lag, threshold_rule=t.rule, tau0=t.tau0,
                     slope=t.slope, k=t.k, min_log_spread=t.min_log_spread, window=t.window,
                     correction=c.method, scale_iters=c.scale_iters, pgd_eps=c.pgd_eps, pgd_steps=c.pgd_steps,
                     pgd_lr=c.pgd_lr, device=device, notes=notes)
    return build_aggregator(d.name, cfg, sampled)
