"""The distributed backdoor (fedguard/attacks/dba.py) and Neurotoxin (fedguard/attacks/neurotoxin.py):
the trigger parts and the projected SGD against hand computations and plain-torch loops, and
one malicious round of each on digits (no Ray)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedguard.attacks.backdoor import Trigger, patch_trigger, poison_batch, trigger_from_config
from fedguard.models import param_mask
from fedguard.attacks.dba import PartTrigger, dba_grid, dba_part_mask, dba_part_of
from fedguard.attacks.neurotoxin import neurotoxin_keep, parameter_masks, projected_sgd
from fedguard.attacks.plan import POISON_SALT, malicious_ids, shared_seed
from fedguard.config import ConfigError, compose, validate
from fedguard.data.sources import splits_from_config
from fedguard.evaluation import round_asr
from fedguard.models import exchanged_state
from tests.test_attack_client import CPU, config, global_model, honest_update, round_of


# ------------------------------------------------------------------------------------ DBA

def test_dba_grid():
    assert [dba_grid(k) for k in (1, 2, 3, 4, 6, 9)] == [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]


def test_dba_parts_tile_the_patch():
    shape = (1, 8, 8)
    masks = [dba_part_mask(shape, 4, 4, i) for i in range(4)]
    # part 0: the top-left quadrant of the bottom-right 4x4 patch, rows 4-5, columns 4-5
    want = torch.zeros(shape, dtype=torch.bool)
    want[:, 4:6, 4:6] = True
    assert torch.equal(masks[0], want)
    assert torch.equal(masks[3][:, 6:8, 6:8], torch.ones(1, 2, 2, dtype=torch.bool)) and masks[3].sum() == 4
    assert torch.stack(masks).sum(0).max() == 1  # disjoint
    patch = patch_trigger(torch.zeros(1, *shape), 4)[0] == 1
    assert torch.equal(torch.stack(masks).any(0), patch)  # their union is the global trigger
    uneven = [int(dba_part_mask(shape, 3, 4, i).sum()) for i in range(4)]
    assert uneven == [4, 2, 2, 1]  # a 3-pixel side split 2 + 1
    # feature vectors: the last 4 features in 2 runs
    assert dba_part_mask((10,), 4, 2, 0).nonzero().flatten().tolist() == [6, 7]
    assert dba_part_mask((10,), 4, 2, 1).nonzero().flatten().tolist() == [8, 9]
    with pytest.raises(ValueError):
        dba_part_mask(shape, 2, 9, 0)


def test_part_trigger_stamps_only_its_part_and_all_parts_make_the_patch():
    x = torch.rand(5, 3, 8, 8)
    stamped = PartTrigger(4, 4, 2)(x)
    m = dba_part_mask((3, 8, 8), 4, 4, 2)
    assert torch.all(stamped[:, m] == 1) and torch.equal(stamped[:, ~m], x[:, ~m])
    y = x
    for i in range(4):
        y = PartTrigger(4, 4, i)(y)
    assert torch.equal(y, patch_trigger(x, 4))


def test_each_malicious_client_gets_its_part():
    cfg = compose(["attack=dba", "num_clients=20", "num_malicious=6", "attack.dba_parts=4"])
    ids = malicious_ids(20, 6, 0)
    assert [dba_part_of(cfg, pid) for pid in ids] == [0, 1, 2, 3, 0, 1]


def test_dba_round_trains_on_its_part_and_asr_uses_the_whole_patch():
    cfg = config("dba")
    assert cfg.attack.patch_size == 4 and not cfg.attack.honest_after
    crafted, data, model = round_of(cfg, 1)
    pid = malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed)[0]
    gen = torch.Generator().manual_seed(shared_seed(cfg.seed, 1, POISON_SALT * 100003 + pid))
    part = PartTrigger(4, 4, 0)
    poisoned = [poison_batch(x, y, part, 0, cfg.attack.poison_fraction, gen)[:2] for x, y in data.batches]
    assert torch.allclose(crafted.update, honest_update(cfg, model, poisoned), atol=1e-6)
    assert trigger_from_config(cfg) == Trigger("patch", patch_size=4)
    always_target = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        always_target[1].weight.zero_()
        always_target[1].bias.copy_(torch.arange(10.0) == 0)
    assert round_asr(cfg, always_target, splits_from_config(cfg).test) == {"asr": 1.0}


@pytest.mark.parametrize("overrides, key", [
    (["attack.trigger_type=blend"], "attack.trigger_type"),
    (["attack.dba_parts=9", "attack.patch_size=2"], "attack.patch_size"),
    (["attack.dba_parts=0"], "attack.dba_parts"),
    (["attack.neurotoxin_topk=1"], "attack.neurotoxin_topk"),
])
def test_invalid_dba_and_neurotoxin_knobs_fail(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(["attack=dba", "num_malicious=1", *overrides]))


# ------------------------------------------------------------------------------ Neurotoxin

def test_neurotoxin_keep_masks_the_largest_magnitudes():
    r = torch.tensor([0.1, -5.0, 3.0, 0.2])
    assert neurotoxin_keep(r, 0.5).tolist() == [True, False, False, True]
    assert neurotoxin_keep(r, 0.3).tolist() == [True, False, True, True]  # floor(0.3 * 4) = 1
    assert neurotoxin_keep(r, 0.0).all()


def test_parameter_masks_follow_the_exchanged_layout():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    sizes = [v.numel() for v in exchanged_state(model).values()]
    keep = torch.arange(sum(sizes)) % 2 == 0
    masks = parameter_masks(model, keep)
    assert set(masks) == {n for n, _ in model.named_parameters()}
    offset = 0
    for name, v in exchanged_state(model).items():
        if name in masks:
            assert torch.equal(masks[name].flatten(), keep[offset:offset + v.numel()])
        offset += v.numel()


def test_projected_sgd_equals_a_masked_momentum_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(4)]
    keep = {n: torch.rand(p.shape) > 0.3 for n, p in model.named_parameters()}
    got = copy.deepcopy(model)
    projected_sgd(got, batches, keep, lr=0.1, momentum=0.9, device=CPU)
    ref = copy.deepcopy(model)
    bufs = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for x, y in batches:  # plain SGD with momentum on masked gradients
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for n, p in ref.named_parameters():
                bufs[n] = 0.9 * bufs[n] + p.grad * keep[n]
                p -= 0.1 * bufs[n]
    for (n, p), (_, q), (_, p0) in zip(got.named_parameters(), ref.named_parameters(), model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6)
        assert torch.equal(p[~keep[n]], p0[~keep[n]])  # masked coordinates untouched


def test_neurotoxin_round_leaves_the_top_coordinates_of_the_honest_update():
    cfg = config("neurotoxin", "attack.neurotoxin_topk=0.2")
    crafted, data, model = round_of(cfg, 1)
    mask = param_mask(model)
    ref = crafted.honest_update[mask]
    top = ~neurotoxin_keep(ref, 0.2)
    assert int(top.sum()) == int(0.2 * mask.sum())
    assert torch.all(crafted.update[mask][top] == 0) and crafted.update[mask][~top].abs().sum() > 0
    assert round_asr(cfg, global_model(cfg)[0], splits_from_config(cfg).test).keys() == {"asr"}
