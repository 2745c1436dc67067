"""Backdoor attack (fedguard/attacks/backdoor.py, the client branch, config, recorder, round_asr)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fedguard.attacks.backdoor import (
    Trigger,
    attack_success_rate,
    blend_pattern,
    blend_trigger,
    patch_trigger,
    poison_batch,
    poison_count,
    trigger_from_config,
)
from fedguard.config import ConfigError, compose, validate
from fedguard.evaluation import round_asr
from fedguard.recorder import Recorder
from fedguard.attacks.craft import flat_model, train_copy
from fedguard.attacks.plan import POISON_SALT, shared_seed
from tests.test_attack_client import CPU, attacker, config, honest_update, round_of


# ----------------------------------------------------------------------------- triggers

def test_patch_stamps_bottom_right_square_of_every_channel_only():
    x = torch.rand(5, 3, 8, 8) * 0.5
    out = patch_trigger(x, size=3)
    assert torch.equal(out[..., 5:, 5:], torch.ones(5, 3, 3, 3))
    untouched = torch.ones(8, 8, dtype=torch.bool)
    untouched[5:, 5:] = False
    assert torch.equal(out[..., untouched], x[..., untouched])
    assert not torch.equal(out, x) and torch.equal(x, x.clone())  # input not modified in place
    assert x[..., 5:, 5:].max() <= 0.5


def test_patch_on_vectors_sets_the_last_features():
    x = torch.zeros(4, 10)
    out = patch_trigger(x, size=2, value=3.0)
    assert torch.equal(out[:, -2:], torch.full((4, 2), 3.0))
    assert torch.equal(out[:, :-2], x[:, :-2])
    with pytest.raises(ValueError):
        patch_trigger(torch.zeros(3, 4, 4), 2)


def test_blend_is_exact_convex_combination_with_a_seeded_pattern():
    x = torch.rand(6, 1, 8, 8)
    p = blend_pattern((1, 8, 8), seed=7)
    assert torch.equal(p, blend_pattern((1, 8, 8), seed=7))
    assert not torch.equal(p, blend_pattern((1, 8, 8), seed=8))
    assert 0.0 <= p.min() and p.max() <= 1.0
    out = blend_trigger(x, p, alpha=0.25)
    assert torch.allclose(out, 0.75 * x + 0.25 * p.expand_as(x), atol=0, rtol=0)
    assert torch.equal(Trigger("blend", alpha=0.25, seed=7)(x), out)
    v = torch.rand(3, 5)  # vectors too
    assert torch.allclose(Trigger("blend", alpha=0.5, seed=1)(v), 0.5 * v + 0.5 * blend_pattern((5,), 1))


@pytest.mark.parametrize("n,fraction,k", [(32, 0.5, 16), (32, 0.1, 3), (10, 1.0, 10), (10, 0.01, 1)])
def test_poison_fraction_is_honoured_and_only_chosen_samples_change(n, fraction, k):
    assert poison_count(n, fraction) == k
    x, y = torch.rand(n, 1, 8, 8) * 0.5, torch.arange(n) % 10
    trig = Trigger("patch", patch_size=2)
    xp, yp, mask = poison_batch(x, y, trig, target=3, fraction=fraction, generator=torch.Generator().manual_seed(0))
    assert int(mask.sum()) == k
    assert torch.equal(xp[mask], trig(x[mask])) and bool((yp[mask] == 3).all())
    assert torch.equal(xp[~mask], x[~mask]) and torch.equal(yp[~mask], y[~mask])
    again = poison_batch(x, y, trig, 3, fraction, torch.Generator().manual_seed(0))[2]
    assert torch.equal(mask, again)  # seeded choice


class CornerModel(nn.Module):
    """Predicts class 1 iff top-left pixel + bottom-right pixel > 1.5, else class 0."""

    def forward(self, x):
        s = x[:, 0, 0, 0] + x[:, 0, -1, -1]
        return torch.stack([torch.zeros_like(s), s - 1.5], 1)


def test_attack_success_rate_by_hand():
    # top-left values; bottom-right 0 everywhere; the patch sets it to 1
    top_left = torch.tensor([0.9, 0.1, 0.7, 0.2, 0.9])
    y = torch.tensor([0, 2, 3, 4, 1])  # the last one has the target label: left out
    x = torch.zeros(5, 1, 4, 4)
    x[:, 0, 0, 0] = top_left
    trig = Trigger("patch", patch_size=1)
    model = CornerModel()
    # triggered non-target: 0.9+1, 0.1+1, 0.7+1, 0.2+1 > 1.5 -> hits for 0.9 and 0.7: 2 of 4
    assert attack_success_rate(model, x, y, target=1, trigger=trig) == pytest.approx(0.5)
    assert attack_success_rate(model, x.numpy(), y.numpy(), 1, trig, batch_size=2) == pytest.approx(0.5)
    assert attack_success_rate(model, x, y, target=1, trigger=lambda t: t) == 0.0  # clean: no hits
    assert attack_success_rate(model, x[-1:], y[-1:], target=1, trigger=trig) is None


# -------------------------------------------------------------------------- the client

BD = ["attack.poison_fraction=0.5", "attack.target_label=7"]


def test_backdoor_client_trains_on_poisoned_batches_and_boost_scales_the_update():
    cfg = config("backdoor", *BD)
    crafted, data, model = round_of(cfg, 1)
    assert crafted.phase == "trigger" and crafted.attacking and crafted.trained is not None
    assert not torch.allclose(crafted.update, crafted.honest_update)
    # reproduce: same seeded poisoning, ordinary SGD on a copy
    pid = attacker(cfg)
    gen = torch.Generator().manual_seed(shared_seed(cfg.seed, 1, POISON_SALT * 100003 + pid))
    poisoned = [poison_batch(x, y, trigger_from_config(cfg), 7, 0.5, gen)[:2] for x, y in data.batches]
    assert all(int((yp == 7).sum()) >= 16 // 2 for _, yp in poisoned)
    trained, _ = train_copy(model, poisoned, cfg, CPU)
    assert torch.allclose(crafted.update, flat_model(trained) - flat_model(model), atol=1e-6)
    boosted, _, _ = round_of(config("backdoor", *BD, "attack.boost=4"), 1)
    assert boosted.trained is None
    assert torch.allclose(boosted.update, 4 * crafted.update, atol=1e-5)  # mlp: parameters only


@pytest.mark.parametrize("attack", ["alie", "ipm"])
def test_omniscient_clients_train_honestly(attack):
    cfg = config(attack)
    crafted, data, model = round_of(cfg, 1)
    assert crafted.attacking and crafted.trained is not None
    assert torch.allclose(crafted.update, honest_update(cfg, model, data.batches), atol=1e-6)


# ---------------------------------------------------------------------- config, records

@pytest.mark.parametrize("override", ["attack.trigger_type=square", "attack.poison_fraction=0",
                                      "attack.poison_fraction=1.5", "attack.target_label=10",
                                      "attack.target_label=-1", "attack.patch_size=0", "attack.blend_alpha=0",
                                      "attack.boost=0", "attack.alie_z=-1", "attack.ipm_eps=0"])
def test_invalid_backdoor_and_omniscient_keys_fail(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(["attack=backdoor", "num_malicious=1", override]))


def test_new_attacks_compose_attack_from_round_one():
    for name in ("backdoor", "alie", "ipm"):
        cfg = compose([f"attack={name}", "num_malicious=2"])
        validate(cfg)
        assert cfg.attack.name == name and cfg.attack.trigger_round is None and not cfg.attack.honest_after
    cfg = compose(["attack=backdoor", "attack.trigger_type=blend", "attack.blend_alpha=0.1", "seed=3"])
    assert trigger_from_config(cfg) == Trigger("blend", patch_size=3, alpha=0.1, seed=3)


def test_round_asr_and_summary_attack_success_rate(tmp_path):
    from fedguard.data.sources import splits_from_config

    cfg = compose(["attack=backdoor", "num_malicious=1"])
    data = splits_from_config(cfg)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(10.0) == 0)  # always predicts class 0 = target
    assert round_asr(cfg, model, data.test) == {"asr": 1.0}
    assert round_asr(compose(["attack=sign_flip"]), model, data.test) == {}
    rec = Recorder(tmp_path, cfg, malicious={0})
    for r, asr in ((1, 0.2), (2, 0.8)):
        rec.record_round({"round": r, "accuracy": 0.5, "phase": "after", "asr": asr}, [])
    assert rec.finish()["attack_success_rate"] == 0.8
    assert json.loads((tmp_path / "summary.json").read_text())["attack_success_rate"] == 0.8
    rec2 = Recorder(tmp_path / "none", compose([]))
    rec2.record_round({"round": 1, "accuracy": 0.5, "phase": "clean"}, [])
    assert rec2.summary()["attack_success_rate"] is None


def final_model_asr(run_dir, overrides) -> float:
    """ASR of a run's final_model.pt under the backdoor of `overrides`, computed here from the
    saved weights (so a clean run, which records no ASR, is measured by the same rule)."""
    from fedguard.data.sources import splits_from_config
    from fedguard.models import arrays_from_flat, arrays_to_model, build_model, model_to_arrays

    cfg = compose(overrides)
    data = splits_from_config(cfg)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    arrays = arrays_from_flat(torch.load(run_dir / "final_model.pt"), model_to_arrays(model))
    return round_asr(cfg, arrays_to_model(model, arrays), data.test)["asr"]


@pytest.mark.slow
def test_backdoor_run_plants_the_backdoor(tmp_path):
    """The backdoor works end to end: the attacked run's ASR is far above the same run's
    without attackers (same data, rounds and seed), and the recorder's figures are consistent."""
    from fedguard.attacks.plan import malicious_ids
    from tests.test_simulation import fedguard, read_jsonl

    common = ["dataset=digits", "num_clients=6", "rounds=4", "seed=0"]
    attacked = ["attack=backdoor", "num_malicious=2", *common]
    runs = {}
    for name, overrides in (("attacked", attacked), ("clean", ["attack=none", *common])):
        runs[name] = tmp_path / name
        proc = fedguard("run", *overrides, "progress=false", "backend.init_args.num_cpus=2",
                        f"hydra.run.dir={runs[name]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = read_jsonl(runs["attacked"] / "rounds.jsonl")
    clients = read_jsonl(runs["attacked"] / "clients.jsonl")
    assert {c["partition_id"] for c in clients if c["malicious"]} == set(malicious_ids(6, 2, 0))
    assert all(c["rejected"] is None for c in clients)
    summary = json.loads((runs["attacked"] / "summary.json").read_text())
    asr = summary["attack_success_rate"]
    assert asr == rounds[-1]["asr"] == pytest.approx(final_model_asr(runs["attacked"], attacked))
    clean_asr = final_model_asr(runs["clean"], attacked)
    assert asr >= 0.8 and clean_asr <= 0.2, (asr, clean_asr)
