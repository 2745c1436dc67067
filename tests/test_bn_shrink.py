"""attack=bn_shrink (fedguard/attacks/bn_shrink.py): the scale symmetry it relies on, its
budget, its trigger, and its replies, checked by hand-written independent computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from scipy.optimize import brentq

from fedguard.attacks.bn_shrink import (
    channel_norms,
    normalised_pairs,
    scaled_state,
    shrink_factor,
    variance_direction,
)
from fedguard.attacks.client import attacker_data
from fedguard.attacks.craft import craft, flat_model
from fedguard.attacks.plan import malicious_ids
from fedguard.config import ConfigError, compose, flatten, validate
from fedguard.data.sources import splits_from_config
from fedguard.models import build_model, exchanged_state

CPU = torch.device("cpu")
LAYER, NORM = "features.0", "features.1"


def trained_cnn_bn(seed: int = 0) -> torch.nn.Module:
    """A digits-shaped cnn_bn whose BatchNorm running statistics are no longer their init."""
    torch.manual_seed(seed)
    model = build_model("cnn_bn", (1, 8, 8), 10, 16)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(32, 1, 8, 8) * 4)
    return model


def with_state(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict(state, strict=False)
    return out


def test_pairs_are_each_conv_and_its_batchnorm():
    assert normalised_pairs(trained_cnn_bn()) == [("features.0", "features.1"), ("features.4", "features.5")]
    resnet = build_model("resnet18", (3, 32, 32), 10)
    pairs = normalised_pairs(resnet)
    convs = [n for n, m in resnet.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert [layer for layer, _ in pairs] == convs  # every convolution of ResNet-18 feeds a BatchNorm
    assert all(isinstance(resnet.get_submodule(norm), torch.nn.BatchNorm2d) for _, norm in pairs)
    assert normalised_pairs(build_model("cnn", (1, 8, 8), 10)) == []


@pytest.mark.parametrize("train_mode", [False, True])
def test_scaling_a_normalised_layer_keeps_the_function(train_mode):
    """Weights and bias into some channels times c, the running mean times c and the running
    variance times c^2: the same outputs in eval mode (running statistics) and train mode."""
    model = trained_cnn_bn()
    x = torch.rand(16, 1, 8, 8) * 4
    channels = torch.tensor([0, 3, 7])
    shrunk = with_state(model, scaled_state(exchanged_state(model), LAYER, NORM, channels, 0.3))
    for m in (model, shrunk):
        m.train(train_mode)
    with torch.no_grad():
        assert torch.allclose(model(x), shrunk(x), atol=1e-4)
    assert torch.allclose(channel_norms(exchanged_state(shrunk), LAYER)[channels],
                          0.3 * channel_norms(exchanged_state(model), LAYER)[channels])


def test_shrink_factor_spends_the_budget_exactly():
    """The bisection's c against a root finder on the distance written out by hand:
    |(1-c)(w, b, mean)| and |(1-c^2) var| over the chosen channels."""
    model = trained_cnn_bn()
    state = exchanged_state(model)
    channels = torch.tensor([1, 2, 5, 9])
    w = torch.cat([state[f"{LAYER}.weight"][channels].reshape(-1), state[f"{LAYER}.bias"][channels],
                   state[f"{NORM}.running_mean"][channels]]).double()
    v = state[f"{NORM}.running_var"][channels].double()

    def distance(c: float) -> float:
        return float(np.sqrt((1 - c) ** 2 * (w @ w) + (1 - c * c) ** 2 * (v @ v)))

    budget = 0.3 * distance(0.0)
    expected = brentq(lambda c: distance(c) - budget, 0.0, 1.0, xtol=1e-12)
    c = shrink_factor(state, LAYER, NORM, channels, budget, floor=0.01)
    assert c == pytest.approx(expected, abs=1e-8)
    assert shrink_factor(state, LAYER, NORM, channels, 10 * distance(0.0), floor=0.5) == 0.5  # the floor binds


def test_trigger_direction_is_the_running_variance_of_the_chosen_channels():
    model = trained_cnn_bn()
    state = exchanged_state(model)
    channels = torch.tensor([2, 4])
    parts = dict(zip(state, torch.split(variance_direction(state, NORM, channels), [v.numel() for v in state.values()])))
    for key, part in parts.items():
        if key == f"{NORM}.running_var":
            expected = torch.zeros_like(state[key])
            expected[channels] = state[key][channels]
            assert torch.equal(part, expected)
        else:
            assert part.abs().max() == 0, key


def test_a_raised_running_variance_hurts_only_a_shrunk_layer():
    """The mechanism: the same absolute raise of the running variance barely changes the
    outputs of the layer as it was and changes those of the layer shrunk 10x (its variance
    100x smaller) much more."""
    model = trained_cnn_bn()
    x = torch.rand(64, 1, 8, 8) * 4
    all_channels = torch.arange(model.get_submodule(LAYER).out_channels)
    state = exchanged_state(model)
    shrunk = scaled_state(state, LAYER, NORM, all_channels, 0.1)

    def change(base: dict) -> float:
        d = variance_direction(base, NORM, all_channels)
        raised = dict(base)
        raised[f"{NORM}.running_var"] = base[f"{NORM}.running_var"] * (1 + 0.01 / float(d.norm()))
        before, after = with_state(model, base).eval(), with_state(model, raised).eval()
        with torch.no_grad():
            return float((before(x) - after(x)).norm() / before(x).norm())

    assert change(shrunk) > 10 * change(state)


def bn_config(*extra: str):
    cfg = compose(["attack=bn_shrink", "model=cnn_bn", "num_clients=4", "num_malicious=1", "rounds=4",
                   "local_steps=2", "batch_size=16", "model.hidden=16", "attack.val_batch=16",
                   "attack.accumulate_rounds=2", "attack.trigger_round=3", *extra])
    validate(cfg)
    return cfg


def crafted_round(cfg, server_round: int):
    pid = malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed)[0]
    data = splits_from_config(cfg)
    torch.manual_seed(0)
    model = build_model("cnn_bn", data.input_shape, data.num_classes, cfg.model.hidden)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": pid}, state=RecordDict(),
                      run_config=flatten(cfg))
    attack_data = attacker_data(cfg, context, pid)
    with torch.no_grad():  # running statistics of the real data, as after a round of training
        model.train()
        for xb, _ in attack_data.batches:
            model(xb)
    return craft(cfg, server_round, model, attack_data, CPU, data.num_classes, pid), model, attack_data


def test_accumulate_reply_is_the_same_function_within_the_honest_norm():
    cfg = bn_config()
    crafted, model, data = crafted_round(cfg, 1)
    assert crafted.phase == "accumulate" and crafted.attacking
    ref = float(crafted.honest_update.norm())
    assert float(crafted.update.norm()) <= ref * (1 + 1e-5)
    proposal = copy.deepcopy(model)
    from fedguard.models import arrays_from_flat, arrays_to_model, model_to_arrays

    arrays_to_model(proposal, arrays_from_flat(flat_model(model) + crafted.update, model_to_arrays(model)))
    model.eval(), proposal.eval()
    with torch.no_grad():
        assert torch.allclose(model(data.x_val), proposal(data.x_val), atol=1e-4)
    shrunk = channel_norms(exchanged_state(proposal), LAYER) < channel_norms(exchanged_state(model), LAYER)
    assert bool(shrunk.all())  # schema default: every channel of the first normalised layer


def test_trigger_reply_has_norm_bound_times_the_honest_norm():
    cfg = bn_config("attack.norm_bound=2")
    crafted, _, _ = crafted_round(cfg, 3)
    assert crafted.phase == "trigger"
    assert float(crafted.update.norm()) == pytest.approx(2 * float(crafted.honest_update.norm()), rel=1e-4)


def test_bn_shrink_needs_a_batchnorm_model():
    with pytest.raises(ConfigError, match="model='mlp' is invalid; allowed: .*cnn_bn"):
        validate(compose(["attack=bn_shrink", "model=mlp", "num_malicious=1"]))
