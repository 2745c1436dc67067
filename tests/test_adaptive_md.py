"""`attack=adaptive_md` (fedguard/attacks/adaptive_md.py): the accumulative attack kept under the
attacker's estimate of mddsc's MD threshold; its pieces by hand, and one malicious round on
digits (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from torch.func import functional_call

from fedguard.attacks import adaptive_md as adaptive
from fedguard.attacks.adaptive_md import blended, estimate_md_threshold, md_scores
from fedguard.attacks.craft import AttackRound, flat_model
from fedguard.models import param_mask
from fedguard.attacks.plan import round_phase
from fedguard.config import ConfigError, compose, validate
from fedguard.defense.md import md_per_sample, unflatten_state
from fedguard.server_app import is_evaluated
from tests.test_attack_client import ACC, CPU, TINY, config, round_of


def cfg_overrides(cfg) -> list[str]:
    return [f"attack={cfg.attack.name}", *TINY, *ACC]


def test_estimate_md_threshold_by_hand():
    # one score: median log 0, spread at its floor 0.1 -> e^(2.5 * 0.1)
    assert estimate_md_threshold([1.0]) == pytest.approx(math.exp(0.25))
    # logs 0, 1, 2: median 1, MAD 1 -> exp(1 + k * 1.4826), times the margin
    assert estimate_md_threshold([1.0, math.e, math.e ** 2], k=2.0, margin=0.5) == pytest.approx(
        0.5 * math.exp(1 + 2.0 * 1.4826))


def test_blended():
    u, h = torch.tensor([4.0, 0.0]), torch.tensor([0.0, 2.0])
    assert torch.equal(blended(u, h, 0.25, "mix"), torch.tensor([1.0, 1.5]))
    assert torch.equal(blended(u, h, 0.25, "scale"), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        blended(u, h, 0.5, "x")


def md_of(model, update, data) -> float:
    """Mean MD over the attacker's held-out batch of global + update against the global model,
    straight from `md_per_sample`."""
    with torch.no_grad():
        model.eval()
        state = unflatten_state(model, flat_model(model) + update)
        return float(md_per_sample(model(data.x_val), functional_call(model, state, (data.x_val,))).mean())


def test_margin_sets_how_much_of_the_accumulative_update_goes_through():
    # a huge margin: the plain accumulative update; a tiny one: the honest update (mix)
    plain, _, _ = round_of(config("accumulative", *ACC), 2)
    loose, _, _ = round_of(config("adaptive_md", *ACC, "attack.adaptive_margin=1e9"), 2)
    tight, _, _ = round_of(config("adaptive_md", *ACC, "attack.adaptive_margin=1e-9"), 2)
    assert loose.phase == "accumulate" and loose.attacking
    assert torch.allclose(loose.update, plain.update, atol=1e-6)
    assert torch.allclose(tight.update, tight.honest_update, atol=1e-6)
    scaled, _, _ = round_of(config("adaptive_md", *ACC, "attack.adaptive_margin=1e-9",
                                   "attack.adaptive_blend=scale"), 2)
    assert torch.all(scaled.update == 0)


@pytest.mark.parametrize("blend", ["mix", "scale"])
def test_reply_is_the_largest_fraction_under_the_threshold(blend, monkeypatch):
    plain, data, model = round_of(config("accumulative", *ACC, "attack.norm_bound=10"), 4)  # the trigger round
    md_honest, md_plain = md_of(model, plain.honest_update, data), md_of(model, plain.update, data)
    assert md_plain > 2 * md_honest
    tau = md_honest + 0.3 * (md_plain - md_honest)
    monkeypatch.setattr(adaptive, "adaptive_threshold", lambda r, x, g: tau)
    crafted, _, _ = round_of(config("adaptive_md", *ACC, "attack.norm_bound=10", f"attack.adaptive_blend={blend}"), 4)
    start = plain.honest_update if blend == "mix" else torch.zeros_like(plain.update)
    beta = float((crafted.update - start).norm() / (plain.update - start).norm())
    assert torch.allclose(crafted.update, blended(plain.update, plain.honest_update, beta, blend), atol=1e-5)
    assert 0 < beta < 1 and md_of(model, crafted.update, data) <= tau
    # the bisection's edge: 8 steps (defense.correction.scale_iters) bring beta within 2^-8 of it
    assert md_of(model, blended(plain.update, plain.honest_update, beta + 2 ** -8, blend), data) > tau
    # md_scores, the attack's own scorer, agrees with the straight computation
    g = flat_model(model)
    assert float(md_scores(model, g, (g + crafted.update)[None], data.x_val)[0]) == pytest.approx(
        md_of(model, crafted.update, data), rel=1e-4)


def test_threshold_estimate_is_the_robust_rule_over_honest_like_scores():
    cfg = config("adaptive_md", *ACC)
    crafted, data, model = round_of(cfg, 2)
    md_honest = md_of(model, crafted.honest_update, data)
    r = AttackRound(cfg, 2, model, data, CPU, 10, 0, "accumulate", flat_model(model), None, crafted.honest_update,
                    0.0, param_mask(model))
    tau = adaptive.adaptive_threshold(r, data.x_val, flat_model(model))
    # three scores (honest + 2 bootstrap replicates); at least the floor above their median,
    # and, as the honest MD is one of them, not below it by more than the replicates' spread
    assert tau > md_honest * math.exp(0.25) / 2 and tau < md_honest * 100
    r0 = AttackRound(compose([*cfg_overrides(cfg), "attack.adaptive_samples=0"]), 2, model, data, CPU, 10, 0,
                     "accumulate", flat_model(model), None, crafted.honest_update, 0.0, param_mask(model))
    assert adaptive.adaptive_threshold(r0, data.x_val, flat_model(model)) == pytest.approx(
        md_honest * math.exp(0.25), rel=1e-4)


def test_schedule_rule_is_used_as_known():
    cfg = config("adaptive_md", *ACC, "defense.threshold.rule=schedule", "defense.threshold.tau0=1e6")
    crafted, _, _ = round_of(cfg, 2)
    plain, _, _ = round_of(config("accumulative", *ACC), 2)
    assert torch.allclose(crafted.update, plain.update, atol=1e-6)  # tau = 1e6: nothing to hide from


def test_phases_and_evaluated_rounds_are_the_accumulative_ones():
    cfg = compose(["attack=adaptive_md", "num_malicious=1", "rounds=12", "evaluate_every=5",
                   "attack.trigger_round=9", "attack.accumulate_rounds=3"])
    assert [round_phase(cfg, r) for r in (5, 6, 9, 10)] == ["burn_in", "accumulate", "trigger", "after"]
    assert [r for r in range(1, 13) if is_evaluated(cfg, r)] == [1, 5, 8, 9, 10, 12]


@pytest.mark.parametrize("override", ["attack.adaptive_samples=-1", "attack.adaptive_margin=0",
                                      "attack.adaptive_blend=x"])
def test_invalid_adaptive_knobs_fail(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        validate(compose(["attack=adaptive_md", "num_malicious=1", override]))
