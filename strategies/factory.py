"""Build the server strategy named by `defense=` from the config.

Every defense is registered by name in `DEFENSES` (`fedguard.registry`): an aggregator
(Flower's `FedAvg`, `FedMedian`, `FedTrimmedAvg`, or fedguard's own on updates,
`strategies.updates.UpdateAggregator`) or a wrapper around the strategy
`defense.inner` names (an aggregator, or a nesting wrapper: norm clipping; `inner_names`). The
config validation, this factory and `fedguard list` all read the names from it.

Client sampling is done by the ServerApp (seeded, reproducible) through a grid view, so every
inner strategy is built with `fraction_train=1.0` over the nodes it is shown, and client-side
evaluation is off (the server evaluates the global model itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Strategy

from fedguard.registry import Registry
from strategies.base import RoundNotes
from fedguard.models import param_mask
from strategies.bulyan import Bulyan
from strategies.cclip import CenteredClipping
from strategies.clipping import NormClipping
from strategies.dnc import DnC
from strategies.epic_updates import EPICUpdates
from strategies.flame import FLAME
from strategies.fldetector import FLDetector
from strategies.fltrust import FLTrust
from strategies.geomed import GeometricMedian
from strategies.krum import Krum, MultiKrum
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
        """The strategy a wrapper wraps: `defense.inner`, an aggregator or a nesting wrapper
        (`clipping`: norm clipping over fedavg)."""
        spec = DEFENSES.get(self.cfg.defense.inner)
        return spec.build(self if spec.wraps else replace(self, notes=None))  # the wrapper keeps the notes


@dataclass(frozen=True)
class Defense:
    build: Callable[[BuildContext], Strategy]
    wraps: bool  # True: a wrapper around `defense.inner`; False: an aggregator (may be an inner)
    nests: bool = False  # a wrapper that may itself be another wrapper's inner (over fedavg)


DEFENSES = Registry("defense")


def defense(name: str, summary: str, wraps: bool = False, nests: bool = False, knobs: tuple[str, ...] = ()):
    """Register a defense; `knobs`: the `defense.*` keys it reads (`fedguard list`, `Entry.knobs`)."""
    def add(build: Callable[[BuildContext], Strategy]) -> Callable[[BuildContext], Strategy]:
        DEFENSES.add(name, Defense(build, wraps, nests), summary, knobs)
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


def trim_beta(cfg, sampled: int) -> float:
    """`defense.trim_beta`, or with null f / sampled (f = `assumed_malicious`): FedTrimmedAvg cuts
    int(beta * n) of n replies at each end, so a full round cuts exactly f (beta is nudged a hair
    above f / n so that the float product does not fall just under f)."""
    beta = cfg.defense.trim_beta
    if beta is not None:
        return float(beta)
    f = assumed_malicious(cfg)
    if not 0 <= 2 * f < sampled:
        raise ValueError(f"trim_beta null: f / sampled = {f}/{sampled} must cut fewer than half the replies")
    return min(f / sampled + 1e-9, 0.5 - 1e-9) if f else 0.0


@defense("trimmed_mean", "FedTrimmedAvg: the coordinate-wise mean without defense.trim_beta at each end "
         "(null: f / sampled clients)", knobs=("trim_beta", "assumed_malicious"))
def _trimmed_mean(ctx: BuildContext) -> Strategy:
    return FedTrimmedAvg(beta=trim_beta(ctx.cfg, ctx.sampled), **_COMMON)


@defense("krum", "Krum: the update closest to its n-f-2 neighbours (Blanchard et al., 2017)",
         knobs=("assumed_malicious",))
def _krum(ctx: BuildContext) -> Strategy:
    return Krum(assumed_malicious(ctx.cfg), ctx.notes, **_COMMON)


@defense("multikrum", "MultiKrum: the mean of the defense.multikrum_select best Krum scores",
         knobs=("assumed_malicious", "multikrum_select"))
def _multikrum(ctx: BuildContext) -> Strategy:
    f, m = assumed_malicious(ctx.cfg), ctx.cfg.defense.multikrum_select
    return MultiKrum(f, int(m if m is not None else max(1, ctx.sampled - f)), ctx.notes, **_COMMON)


@defense("bulyan", "Bulyan: iterated Krum selection, then a coordinate-wise trimmed mean around the median "
         "(El Mhamdi et al., 2018)", knobs=("assumed_malicious",))
def _bulyan(ctx: BuildContext) -> Strategy:
    return Bulyan(assumed_malicious(ctx.cfg), ctx.notes, **_COMMON)


@defense("clipping", "norm clipping of every update (fixed defense.clip_norm or a multiple of the median norm), "
         "around defense.inner", wraps=True, nests=True, knobs=("inner", "clip_norm", "clip_multiplier"))
def _clipping(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    name = "fedavg" if d.inner == "clipping" else d.inner  # clipping nested in a wrapper clips fedavg
    inner = DEFENSES.get(name).build(replace(ctx, notes=None))
    return NormClipping(inner, d.clip_norm, d.clip_multiplier, ctx.notes)


@defense("mddsc", "memorization discrepancy against a history of global models, flagged updates corrected or "
         "dropped (Zhu et al., 2023, federated form), around defense.inner", wraps=True,
         knobs=("inner", "val_batch", "score_chunk", "history", "threshold", "correction"))
def _mddsc(ctx: BuildContext) -> Strategy:
    run_dir = ctx.cfg.get("run_dir")  # null under `flwr run`: the history makes a temporary directory
    return MDDSC(ctx.inner(), ctx.model, ctx.data.val.x, ctx.data.val.y, ctx.cfg.defense, seed=ctx.cfg.seed,
                 spill_dir=str(Path(run_dir) / "history") if run_dir else None, device=ctx.device,
                 notes=ctx.notes)


@defense("epic_updates", "server-side adaptation of EPIC: drops updates isolated in update space, around "
         "defense.inner", wraps=True, knobs=("inner", "epic_fraction", "epic_max_cluster"))
def _epic_updates(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return EPICUpdates(ctx.inner(), d.epic_fraction, d.epic_max_cluster, ctx.notes)


@defense("cclip", "centered clipping: the center moves by the mean of the updates clipped around it, "
         "defense.cclip_iters times from the previous aggregate (Karimireddy et al., 2021)",
         knobs=("cclip_tau", "cclip_iters", "cclip_init"))
def _cclip(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return CenteredClipping(d.cclip_tau, d.cclip_iters, d.cclip_init, ctx.notes, **_COMMON)


@defense("geomed", "geometric median of the updates by smoothed Weiszfeld iterations (RFA, Pillutla et al., 2022)",
         knobs=("geomed_nu", "geomed_iters", "geomed_tol"))
def _geomed(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return GeometricMedian(d.geomed_nu, d.geomed_iters, d.geomed_tol, ctx.notes, **_COMMON)


@defense("fltrust", "FLTrust: updates rescaled to the server's own update on its validation split, weighted by "
         "ReLU(cosine) with it (Cao et al., 2021)")
def _fltrust(ctx: BuildContext) -> Strategy:
    if ctx.model is None or ctx.data is None:
        raise ValueError("fltrust trains on the server's data: build it with the run's model and data")
    cfg = ctx.cfg
    return FLTrust(ctx.model, ctx.data.val.x, ctx.data.val.y, lr=cfg.lr, momentum=cfg.momentum,
                   local_steps=cfg.local_steps, batch_size=cfg.batch_size, seed=cfg.seed, device=ctx.device,
                   notes=ctx.notes, **_COMMON)


@defense("dnc", "Divide-and-Conquer: drops the updates with the largest projections on the top singular vector "
         "of subsampled centred updates (Shejwalkar and Houmansadr, 2021), around defense.inner", wraps=True,
         knobs=("inner", "assumed_malicious", "dnc_iters", "dnc_subsample", "dnc_filter_frac"))
def _dnc(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return DnC(ctx.inner(), assumed_malicious(ctx.cfg), d.dnc_iters, d.dnc_subsample, d.dnc_filter_frac,
               seed=ctx.cfg.seed, notes=ctx.notes)


@defense("flame", "FLAME: HDBSCAN on cosine distances keeps the majority, clipping to the median norm, Gaussian "
         "noise (Nguyen et al., 2022), around defense.inner", wraps=True, knobs=("inner", "flame_noise"))
def _flame(ctx: BuildContext) -> Strategy:
    mask = param_mask(ctx.model) if ctx.model is not None else None
    return FLAME(ctx.inner(), ctx.cfg.defense.flame_noise, seed=ctx.cfg.seed, param_mask=mask, notes=ctx.notes)


@defense("fldetector", "FLDetector: flags clients whose updates the L-BFGS prediction from the model history "
         "misses (Zhang et al., 2022), around defense.inner", wraps=True,
         knobs=("inner", "fldetector_window", "fldetector_start"))
def _fldetector(ctx: BuildContext) -> Strategy:
    d = ctx.cfg.defense
    return FLDetector(ctx.inner(), d.fldetector_window, d.fldetector_start, seed=ctx.cfg.seed, notes=ctx.notes)


def inner_names(wrapper: str) -> list[str]:
    """The defenses that can be `defense.inner` of the wrapper `wrapper`: the aggregators, and
    the nesting wrappers other than itself."""
    return [e.name for e in DEFENSES.entries()
            if not e.target.wraps or (e.target.nests and e.name != wrapper)]


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
    server's validation stream) are needed by `mddsc` and `fltrust` (`flame` reads the model
    for which coordinates are parameters).
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
