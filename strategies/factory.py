"""Build the server strategy named by `defense=` from the config.

Robust aggregators are Flower's own `flwr.serverapp.strategy` classes. Client sampling is
done by the ServerApp (seeded, reproducible) through a grid view, so every inner strategy
is built with `fraction_train=1.0` over the nodes it is shown, and client-side evaluation
is off (the server evaluates the global model itself).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from strategies.base import RoundNotes
from strategies.clipping import NormClipping

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


def build_strategy(cfg, sampled: int, notes: RoundNotes | None = None) -> Strategy:
    """The full server strategy: wrappers (outermost first) around an inner aggregator."""
    name = cfg.defense.name
    if name == "clipping":
        inner = build_aggregator(cfg.defense.inner, cfg, sampled)
        return NormClipping(inner, cfg.defense.clip_norm, cfg.defense.clip_multiplier, notes)
    return build_aggregator(name, cfg, sampled)
