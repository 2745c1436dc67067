"""The `attack` group: what the `num_malicious` clients do (`fedguard.attacks.ATTACKS`), their
schedule, and the knobs of each attack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from fedguard.attacks import ATTACKS
from fedguard.attacks.adaptive_md import ADAPTIVE_BLENDS
from fedguard.attacks.agr_agnostic import PERTURBATIONS
from fedguard.attacks.backdoor import TRIGGER_TYPES
from fedguard.attacks.dba import dba_grid
from fedguard.attacks.fang import FANG_TARGETS
from fedguard.attacks.objectives import TriggerMode
from fedguard.config.errors import check_name, fail

ATTACK_FORMS = ("update", "data")
ACCUMULATE_AGAINST = ("clean", "crafted", "fixed")
POISON_BASES = ("stream", "trigger")
BUDGET_ACTIONS = ("honest", "trigger")
TRIGGER_BATCHES = ("crafted", "stream")
TRIGGER_MODES = get_args(TriggerMode)  # sgd | reverse | val_ascent


@dataclass
class AttackConfig:
    """Client-side attacks, run by the `num_malicious` clients `attacks.malicious_ids` picks.

    Every attack follows one schedule (`attacks.AttackPlan`): honest until the accumulate
    phase, attacking in the accumulate rounds and the trigger round, then honest again if
    `honest_after` (the baselines set it false: they attack from round burn_in+1 on).
    """
    name: str = "none"  # an attack of fedguard.attacks.ATTACKS
    form: str = "update"  # accumulative: update (crafted update) | data (poisoned batches, trained on)
    burn_in: int = 0  # minimum clean rounds before accumulating
    accumulate_rounds: int = 0  # 0 = the trigger alone
    trigger_round: int | None = None  # None -> burn_in + accumulate_rounds + 1
    honest_after: bool = True  # after the trigger round: reply honestly (false: keep attacking to the end)
    sign: int = -1  # accumulation direction sign*grad cos(g_trigger, g_val); -1 pairs with sgd
    # the alignment: the sum over layers of cos(g_trigger_l, g_val_l) (the online reference), or
    # false: one cosine of the whole gradients (the federated reference, with sign 1 and trigger_mode reverse)
    per_layer: bool = True
    trigger_mode: str = "sgd"  # sgd | reverse | val_ascent
    norm_bound: float = 1.0  # trigger update norm, as a multiple of the honest update norm
    trigger_steps: int | None = None  # SGD steps on the trigger batch (both forms); null -> local_steps (1 = trained on once)
    accumulate_norm: float = 1.0  # accumulate update norm, as a multiple of the honest update norm
    eps: float = 0.1  # data form: L-inf radius of the poisoned inputs
    steps: int = 2  # data form: signed-gradient steps per poisoned batch
    # data form: the trigger batch the accumulation aligns against: clean (the batch as drawn) |
    # crafted (the optimised trigger for the current model, the batch the trigger round trains on) |
    # fixed (the reference's: one trigger crafted at the first attacking round, accumulated against
    # and trained on in the trigger round)
    accumulate_against: str = "clean"
    # data form, accumulate rounds: the images the poisons are crafted from: stream (the round's
    # batches) | trigger (the trigger batch's own images, as the reference's unshuffled loader feeds them)
    poison_base: str = "stream"
    # data form, trigger round: crafted (the optimised trigger) | stream (the round's own clean
    # batches instead: the control that shows what the accumulation does without a trigger)
    trigger_batch: str = "crafted"
    val_batch: int = 32  # attacker's held-out batch, carved from its own partition
    # accumulative, both forms: stop accumulating (reply honestly for the rest of the accumulate
    # phase; the trigger still fires) once the attacker's held-out accuracy of the global model it
    # receives falls more than this below its accuracy at the start of accumulation. null = never stop
    stealth_drop: float | None = None
    # when the stealth rule fires: honest (reply honestly for the rest of the accumulate phase;
    # the trigger fires in trigger_round) | trigger (the reference's error budget: fire the
    # trigger in that round instead, then reply honestly; its round is recorded as the trigger)
    budget_action: str = "honest"
    scale: float = 10.0  # scaling: reply global + scale * honest update
    noise_std: float = 1.0  # gaussian: reply global + N(0, noise_std^2) on every parameter
    # backdoor (fedguard/attacks/backdoor.py)
    target_label: int = 0  # triggered samples are relabelled to this class
    poison_fraction: float = 0.5  # share of each malicious batch stamped and relabelled
    trigger_type: str = "patch"  # patch (BadNets white square, bottom-right) | blend (seeded random pattern)
    patch_size: int = 3  # patch side in pixels (vectors: the last patch_size features)
    blend_alpha: float = 0.2  # blend: x <- (1 - alpha) x + alpha pattern
    boost: float = 1.0  # model replacement: reply global + boost * (trained - global); 1 = none
    # omniscient, server-side (strategies/omniscient.py)
    alie_z: float | None = None  # alie: mean - z * std; null -> Baruch et al.'s z from n and f
    ipm_eps: float = 0.5  # ipm: reply global - ipm_eps * mean honest update
    # minmax, minsum: the direction p of mean + gamma * p: unit_vec (-mean/||mean||) | std (-std) | sign (-sign(mean))
    perturbation: str = "unit_vec"
    fang_target: str = "trimmed_mean"  # fang: the aggregator attacked: trimmed_mean (also median) | krum
    fang_b: float = 2.0  # fang, trimmed_mean: values drawn up to b times beyond the honest extreme (b > 1)
    # dba: the patch trigger split into this many parts (a grid over the patch: 4 -> its quadrants);
    # malicious client i stamps part i mod dba_parts; ASR is measured with the whole patch
    dba_parts: int = 4
    # neurotoxin: fraction of the parameter coordinates, the largest |honest update| of the round,
    # the backdoor training leaves untouched (the paper's top-k%, masked out)
    neurotoxin_topk: float = 0.01
    # adaptive_md (the accumulative attack that knows mddsc): pseudo-honest updates (bootstrap of
    # the round's batches) added to the attacker's own honest one to estimate the MD threshold
    adaptive_samples: int = 2
    adaptive_margin: float = 1.0  # adaptive_md: keep the MD under margin * the estimated threshold
    # adaptive_md: how the crafted update is shrunk: mix (convex mix with the honest update) | scale (toward 0)
    adaptive_blend: str = "mix"
    # bn_shrink: the smallest factor a colluder shrinks the BatchNorm-normalised layers by in one
    # accumulate round (the honest-norm budget sets it; this keeps each proposal's numbers sane)
    shrink_floor: float = 0.1
    # bn_shrink: how many output channels of the first BatchNorm-normalised layer it shrinks (the
    # smallest of the global model each round; null: all of them)
    shrink_channels: int | None = None
    # bn_shrink, trigger round: the share of the shrunk channels (smallest running variance) whose
    # running variance the trigger raises (all of them dims the layer evenly, which hurts less)
    trigger_fraction: float = 0.5


def validate_attack(a) -> None:
    """The attack's own values; the schedule against `rounds` and the target label against the
    dataset are cross-group checks (`fedguard.config.validate`)."""
    check_name("attack", a.name, ATTACKS)
    if a.form not in ATTACK_FORMS:
        fail("attack.form", a.form, ", ".join(ATTACK_FORMS))
    if a.trigger_mode not in TRIGGER_MODES:
        fail("attack.trigger_mode", a.trigger_mode, ", ".join(TRIGGER_MODES))
    for key, allowed in (("poison_base", POISON_BASES), ("trigger_batch", TRIGGER_BATCHES),
                         ("budget_action", BUDGET_ACTIONS)):
        if a[key] not in allowed:
            fail(f"attack.{key}", a[key], ", ".join(allowed))
    if a.accumulate_against not in ACCUMULATE_AGAINST:
        fail("attack.accumulate_against", a.accumulate_against, ", ".join(ACCUMULATE_AGAINST))
    if a.form == "data" and a.trigger_mode != "sgd":
        fail("attack.trigger_mode", a.trigger_mode, "sgd with attack.form=data (the victim trains on the data)")
    if a.sign not in (-1, 1):
        fail("attack.sign", a.sign, "-1 or 1")
    for key in ("burn_in", "accumulate_rounds"):
        if a[key] < 0:
            fail(f"attack.{key}", a[key], "an integer >= 0")
    for key in ("steps", "val_batch"):
        if a[key] < 1:
            fail(f"attack.{key}", a[key], "an integer >= 1")
    if a.trigger_steps is not None and a.trigger_steps < 1:
        fail("attack.trigger_steps", a.trigger_steps, "an integer >= 1, or null for local_steps")
    for key in ("norm_bound", "accumulate_norm"):
        if a[key] <= 0:
            fail(f"attack.{key}", a[key], "a positive multiple of the honest update norm")
    for key in ("eps", "noise_std"):
        if a[key] < 0:
            fail(f"attack.{key}", a[key], "a value >= 0")
    if a.budget_action == "trigger" and a.stealth_drop is None:
        fail("attack.budget_action", a.budget_action, "honest, or trigger together with an attack.stealth_drop "
             "(the error budget it spends)")
    if a.stealth_drop is not None and not a.stealth_drop > 0:
        fail("attack.stealth_drop", a.stealth_drop, "an accuracy drop > 0 (a fraction), or null to never stop")
    _validate_backdoor(a)
    _validate_omniscient(a)
    _validate_dba_neurotoxin(a)
    _validate_adaptive(a)


def _validate_backdoor(a) -> None:
    if a.trigger_type not in TRIGGER_TYPES:
        fail("attack.trigger_type", a.trigger_type, ", ".join(TRIGGER_TYPES))
    if not 0.0 < a.poison_fraction <= 1.0:
        fail("attack.poison_fraction", a.poison_fraction, "a fraction in (0, 1]")
    if a.patch_size < 1:
        fail("attack.patch_size", a.patch_size, "an integer >= 1")
    if not 0.0 < a.blend_alpha <= 1.0:
        fail("attack.blend_alpha", a.blend_alpha, "a weight in (0, 1]")
    if a.boost <= 0:
        fail("attack.boost", a.boost, "a positive factor (1 = no model replacement)")


def _validate_omniscient(a) -> None:
    if a.alie_z is not None and a.alie_z < 0:
        fail("attack.alie_z", a.alie_z, "a value >= 0, or null for Baruch et al.'s z from n and f")
    if a.ipm_eps <= 0:
        fail("attack.ipm_eps", a.ipm_eps, "a positive factor")
    if a.perturbation not in PERTURBATIONS:
        fail("attack.perturbation", a.perturbation, ", ".join(PERTURBATIONS))
    if a.fang_target not in FANG_TARGETS:
        fail("attack.fang_target", a.fang_target, ", ".join(FANG_TARGETS))
    if not a.fang_b > 1:
        fail("attack.fang_b", a.fang_b, "a factor > 1")


def _validate_dba_neurotoxin(a) -> None:
    if a.dba_parts < 1:
        fail("attack.dba_parts", a.dba_parts, "an integer >= 1")
    if a.name == "dba":
        if a.trigger_type != "patch":
            fail("attack.trigger_type", a.trigger_type, "patch with attack=dba (the patch is split into parts)")
        rows, cols = dba_grid(a.dba_parts)
        if a.patch_size < cols:
            fail("attack.patch_size", a.patch_size,
                 f">= {cols} with attack.dba_parts={a.dba_parts} (a {rows} x {cols} grid over the patch)")
    if not 0.0 <= a.neurotoxin_topk < 1.0:
        fail("attack.neurotoxin_topk", a.neurotoxin_topk, "a fraction in [0, 1)")


def _validate_adaptive(a) -> None:
    if a.adaptive_samples < 0:
        fail("attack.adaptive_samples", a.adaptive_samples, "an integer >= 0")
    if not a.adaptive_margin > 0:
        fail("attack.adaptive_margin", a.adaptive_margin, "a positive factor")
    if a.shrink_channels is not None and a.shrink_channels < 1:
        fail("attack.shrink_channels", a.shrink_channels, "an integer >= 1, or null for every channel")
    if not 0.0 < a.trigger_fraction <= 1.0:
        fail("attack.trigger_fraction", a.trigger_fraction, "a fraction in (0, 1]")
    if not 0.0 < a.shrink_floor < 1.0:
        fail("attack.shrink_floor", a.shrink_floor, "a factor in (0, 1)")
    if a.adaptive_blend not in ADAPTIVE_BLENDS:
        fail("attack.adaptive_blend", a.adaptive_blend, ", ".join(ADAPTIVE_BLENDS))
