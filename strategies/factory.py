"""Build the server strategy named by `defense=` from the config.

Every defense is registered by name in `DEFENSES` (`fedguard.registry`): an aggregator
(Flower's own `flwr.serverapp.strategy` classes) or a wrapper around the aggregator
`defense.inner` names. The config validation, this factory and `fedguard list` all read the
names from it.

Client sampling is done by the ServerApp (seeded, reproducible) through a grid view, so every
inner strategy is built with `fraction_train=1.0` over the nodes it is shown, and client-side
evaluation is off (the server evaluates the global model itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from fedguard.registry import Registry
from strategies.base import RoundNotes
from strategies.clipping import NormClipping
from strategies.epic_updates import EPICUpdates
from strategies.mddsc import MDDSC
from strategies.omniscient import OMNISCIENT, omniscient_from_config
from strategies.validation import ReplyValidator

_COMMON = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
               min_evaluate_nodes=0, min_available_nodes=1)


@dataclass
class BuildContext:
    """What a defense may need to be built: the config, the clients sampled per round, the
    notebook, and (MD-DSC only) a template model, the data splits and the device."""
    cfg: Any
    sampled: int
    notes: RoundNotes | None = None
    model: Any = None
    data: Any = None
    device: Any = None

    def inner(self) -> Strategy:
        """The strategy a wrapper wraps: `defense.inner` (`clipping` = norm clipping over fedavg)."""
        name = self.cfg.defense.inner
        return DEFENSES.get(name).build(self) if name == "clipping" else build_aggregator(name, self.cfg, self.sampled)


@dataclass(frozen=True)
class Defense:
    build: Callable[[BuildContext], Strategy]
    wraps: bool  # True: a wrapper around `defense.inner`; False: an aggregator (may be an inner)


DEFENSES = Registry("defense")


def defense(name: str, summary: str, wraps: bool = False):
    def add(build: Callable[[BuildContext], Strategy]) -> Callable[[BuildContext], Strategy]:
        DEFENSES.add(name, Defense(build, wraps), summary)
        return build

    return add


def assumed_malicious(cfg) -> int:
    d = cfg.defense
    return int(d.assumed_malicious if d.assumed_malicious is not None else cfg.num_malicious)


@defense("fedavg", "FedAvg: the example-weighted mean of the updates (no defense)")
def _fedavg(ctx: BuildContext) -> Strategy:
    return FedAvg(**_COMMON)


@defense("median", "FedMedian: the coordinate-wise median (Yin et al., 2018)")
def _median(ctx: BuildContext) -> Strategy:
    return FedMedian(**_COMMON)


@defense("trimmed_mean", "FedTrimmedAvg: the coordinate-wise mean without defense.trim_beta at each end")
def _trimmed_mean(ctx: BuildContext) -> Strategy:
    return FedTrimmedAvg(beta=ctx.cfg.defense.trim_beta, **_COMMON)


@defense("krum", "Krum: the update closest to its n-f-2 neighbours (Blanchard et al., 2017)")
def _krum(ctx: BuildContext) -> Strategy:
    return Krum(num_malicious_nodes=assumed_malicious(ctx.cfg), **_COMMON)


@defense("multikrum", "MultiKrum: the mean of the defense.multikrum_select best Krum scores")
def _multikrum(ctx: BuildContext) -> Strategy:
    f, m = assumed_malicious(ctx.cfg), ctx.cfg.defense.multikrum_select
    return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=int(m if m is not None else max(1, ctx.sampled - f)),
                     **_COMMON)


@defense("bulyan", "Bulyan: Krum selection, then a coordinate-wise trimmed mean (El Mhamdi et al., 2018)")
def _bulyan(ctx: BuildContext) -> Strategy:
    return Bulyan(num_malicious_nodes=assumed_malicious(ctx.cfg), **_COMMON)


@defense("clipping", "norm clipping of every update (fixed defense.clip_norm or a multiple of the median norm), "
         "around defense.inner", wraps=True)
def _clipping(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    inner = build_aggregator("fedavg" if d.inner == "clipping" else d.inner, ctx.cfg, ctx.sampled)
    return NormClipping(inner, d.clip_norm, d.clip_multiplier, ctx.notes)


@defense("mddsc", "memorization discrepancy against a history of global models, flagged updates corrected or "
         "dropped (Zhu et al., 2023, federated form), around defense.inner", wraps=True)
def _mddsc(ctx: BuildContext) -> Strategy:
    run_dir = ctx.cfg.get("run_dir")  # null under `flwr run`: the history makes a temporary directory
    return MDDSC(ctx.inner(), ctx.model, ctx.data.val.x, ctx.data.val.y, ctx.cfg.defense, seed=ctx.cfg.seed,
                 spill_dir=str(Path(run_dir) / "history") if run_dir else None, device=ctx.device,
                 notes=ctx.notes)


@defense("epic_updates", "server-side adaptation of EPIC: drops updates isolated in update space, around "
         "defense.inner", wraps=True)
def _epic_updates(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return EPICUpdates(ctx.inner(), d.epic_fraction, d.epic_max_cluster, ctx.notes)


def aggregator_names() -> list[str]:
    """The defenses that can be a wrapper's `defense.inner` (the aggregators)."""
    return [e.name for e in DEFENSES.entries() if not e.target.wraps]


def build_aggregator(name: str, cfg, sampled: int) -> Strategy:
    """The aggregator `name` (not a wrapper)."""
    spec = DEFENSES.get(name)
    if spec.wraps:
        raise ValueError(f"{name!r} is a wrapper defense, not an aggregator")
    return spec.build(BuildContext(cfg, sampled))


def build_defense(cfg, sampled: int, notes: RoundNotes | None = None, model=None, data=None,
                  device=None) -> Strategy:
    """The defense `defense.name`: a wrapper (around `defense.inner`) or an aggregator.

    `model` (a template of the run's architecture) and `data` (its DataSplits, for the
    server's validation stream) are needed by `mddsc` only.
    """
    return DEFENSES.get(cfg.defense.name).build(BuildContext(cfg, sampled, notes, model, data, device))


def build_strategy(cfg, sampled: int, notes: RoundNotes | None = None, model=None, data=None,
                   device=None) -> Strategy:
    """The full server strategy: reply validation (always outermost) around the defense."""
    strategy = build_defense(cfg, sampled, notes, model=model, data=data, device=device)
    if cfg.attack.name in OMNISCIENT:  # the attacker's server-side part, before the defense
        strategy = omniscient_from_config(cfg, strategy, notes, model)
    return ReplyValidator(strategy, notes, max_examples=int(cfg.local_steps) * int(cfg.batch_size),
                          weighting=cfg.get("weighting", "num_examples"), min_replies=cfg.get("min_replies", 1))
