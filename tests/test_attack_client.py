"""Malicious clients (fedguard/attacks/client.py, craft.py, accumulative.py and the attack
modules), called directly on digits (no Ray)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedguard.attacks.accumulative import attack_info, heldout_accuracy, stealth_step
from fedguard.attacks.client import attacker_data, heldout_split, malicious_train
from fedguard.attacks.craft import craft
from fedguard.attacks.objectives import accumulation_direction, model_params, perturb_trigger, to_exchanged
from fedguard.attacks.plan import malicious_ids, malicious_set, round_phase
from fedguard.client_app import state_json
from fedguard.config import ConfigError, compose, flatten, validate
from fedguard.config.files import CONFIG_DIR
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.models import build_model, flat_from_arrays, model_to_arrays
from fedguard.protocol import ATTACK_STATE
from fedguard.recorder import Recorder
from fedguard.training import sgd_steps

CPU = torch.device("cpu")
TINY = ["num_clients=4", "num_malicious=1", "rounds=4", "local_steps=2", "batch_size=16",
        "model.hidden=16", "attack.val_batch=16"]


def config(attack: str, *extra: str):
    cfg = compose([f"attack={attack}", *TINY, *extra])
    validate(cfg)
    return cfg


def attacker(cfg) -> int:
    return malicious_ids(cfg.num_clients, cfg.num_malicious, cfg.seed)[0]


def context(cfg, partition_id: int) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": partition_id}, state=RecordDict(),
                   run_config=flatten(cfg))


def global_model(cfg):
    data = splits_from_config(cfg)
    torch.manual_seed(0)
    return build_model("mlp", data.input_shape, data.num_classes, cfg.model.hidden), data.num_classes


def round_of(cfg, server_round: int):
    """(crafted, attack data, global model) for the attacker's first train call, at `server_round`."""
    pid = attacker(cfg)
    model, classes = global_model(cfg)
    data = attacker_data(cfg, context(cfg, pid), pid)
    return craft(cfg, server_round, model, data, CPU, classes, pid), data, model


def honest_update(cfg, model, batches) -> torch.Tensor:
    trained = copy.deepcopy(model)
    sgd_steps(trained, batches, cfg.lr, cfg.momentum, CPU)
    return flat_from_arrays(model_to_arrays(trained)) - flat_from_arrays(model_to_arrays(model))


ACC = ["attack.trigger_round=4", "attack.accumulate_rounds=2"]


def test_accumulate_round_norm_is_accumulate_norm_times_honest():
    cfg = config("accumulative", *ACC, "attack.accumulate_norm=0.5")
    crafted, data, model = round_of(cfg, 2)
    assert crafted.phase == "accumulate" and crafted.attacking
    ref = honest_update(cfg, model, data.batches)
    assert torch.allclose(crafted.honest_update, ref, atol=1e-6)
    assert crafted.update.norm().item() == pytest.approx(0.5 * ref.norm().item(), rel=1e-4)
    assert torch.nn.functional.cosine_similarity(crafted.update, ref, dim=0) < 0.99  # not the honest one


@pytest.mark.parametrize("per_layer", [True, False])
def test_accumulate_direction_follows_sign_and_per_layer(per_layer):
    """The update form's accumulate reply is along sign * grad_w of the alignment: the sum of
    per-layer cosines, or (per_layer=false, the federated reference) one whole-model cosine."""
    cfg = config("accumulative", *ACC, "attack.sign=1", f"attack.per_layer={str(per_layer).lower()}")
    crafted, data, model = round_of(cfg, 2)
    model.eval()
    params = model_params(model)
    d = accumulation_direction(model, params, data.x_trig, data.y_trig, data.x_val, data.y_val, sign=1,
                               per_layer=per_layer)
    expected = to_exchanged(model, d, params)
    assert torch.nn.functional.cosine_similarity(crafted.update, expected, dim=0) > 0.9999
    other = to_exchanged(model, accumulation_direction(model, params, data.x_trig, data.y_trig, data.x_val,
                                                       data.y_val, sign=1, per_layer=not per_layer), params)
    assert torch.nn.functional.cosine_similarity(crafted.update, other, dim=0) < 0.9999


def test_trigger_round_norm_is_norm_bound_times_honest():
    cfg = config("accumulative", *ACC, "attack.norm_bound=2.0")
    crafted, data, model = round_of(cfg, 4)
    assert crafted.phase == "trigger" and crafted.attacking
    ref = honest_update(cfg, model, data.batches)
    assert crafted.update.norm().item() == pytest.approx(2.0 * ref.norm().item(), rel=1e-4)


def test_burn_in_and_after_are_honest():
    cfg = config("accumulative", *ACC)
    for rnd, phase in ((1, "burn_in"), (5, "after")):
        crafted, data, model = round_of(cfg, rnd)
        assert crafted.phase == phase and not crafted.attacking
        assert torch.allclose(crafted.update, honest_update(cfg, model, data.batches), atol=1e-6)


def test_data_form_trains_on_poisoned_batches():
    cfg = config("accumulative", *ACC, "attack.form=data", "attack.eps=0.1")
    crafted, data, model = round_of(cfg, 2)
    assert crafted.trained is not None
    assert not torch.allclose(crafted.update, crafted.honest_update, atol=1e-6)


def test_data_form_trigger_trained_trigger_steps_times():
    """attack.trigger_steps=1: the data form's trigger round is ONE SGD step on the optimised
    trigger batch (the paper's online protocol); null keeps a whole local round on it."""
    for steps, expected_steps in (("1", 1), ("null", 2)):  # TINY: local_steps=2
        cfg = config("accumulative", *ACC, "attack.form=data", f"attack.trigger_steps={steps}")
        crafted, data, model = round_of(cfg, 4)
        assert crafted.phase == "trigger" and crafted.attacking
        model.eval()
        x_trig = perturb_trigger(model, model_params(model), data.x_trig, data.y_trig, data.x_val, data.y_val,
                                 eps=cfg.attack.eps, steps=cfg.attack.steps, sign=cfg.attack.sign)
        expected = honest_update(cfg, model, [(x_trig, data.y_trig)] * expected_steps)
        assert torch.allclose(crafted.update, expected, atol=1e-6), steps


def test_sign_flip_scaling_gaussian_label_flip_relations():
    crafted, _, _ = round_of(config("sign_flip"), 1)
    assert crafted.attacking and torch.allclose(crafted.update, -crafted.honest_update)
    crafted, _, _ = round_of(config("scaling", "attack.scale=7.0"), 1)
    assert torch.allclose(crafted.update, 7.0 * crafted.honest_update)
    cfg = config("gaussian", "attack.noise_std=0.3")
    crafted, _, _ = round_of(cfg, 2)
    again, _, _ = round_of(cfg, 2)
    assert torch.equal(crafted.update, again.update)  # seeded by (seed, round, partition)
    assert abs(crafted.update.mean().item()) < 0.03 and crafted.update.std().item() == pytest.approx(0.3, rel=0.1)
    cfg = config("label_flip")
    crafted, data, model = round_of(cfg, 1)
    flipped = [(x, 9 - y) for x, y in data.batches]
    assert torch.allclose(crafted.update, honest_update(cfg, model, flipped), atol=1e-6)
    assert not torch.allclose(crafted.update, crafted.honest_update, atol=1e-4)


def test_heldout_batch_is_disjoint_from_the_training_stream():
    cfg = config("accumulative", *ACC)
    pid = attacker(cfg)
    partition = partition_from_config(cfg, splits_from_config(cfg).pool.y, pid)
    train_idx, val_idx = heldout_split(cfg, partition)
    assert len(val_idx) == cfg.attack.val_batch
    assert set(train_idx).isdisjoint(val_idx) and set(train_idx) | set(val_idx) == set(partition)
    ctx = context(cfg, pid)
    seen: set[int] = set()
    for _ in range(len(partition) // (cfg.local_steps * cfg.batch_size) + 2):  # past an epoch boundary
        data = attacker_data(cfg, ctx, pid)
        assert np.array_equal(data.val_indices, val_idx)
        seen.update(int(i) for idx in data.batch_indices for i in idx)
    assert seen == set(train_idx.tolist())
    trig = attacker_data(cfg, context(cfg, pid), pid)
    assert torch.equal(trig.x_trig, data.x_trig)  # the trigger batch is fixed over the run


def test_malicious_train_replies_global_plus_update(flower_identity):
    cfg = config("scaling", "attack.scale=3.0")
    pid = attacker(cfg)
    model, _ = global_model(cfg)
    global_arrays = model_to_arrays(model)
    content = RecordDict({"arrays": global_arrays, "config": ConfigRecord({"server-round": 1, "lr": cfg.lr})})
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    arrays, loss, num_examples, _ = malicious_train(cfg, msg, context(cfg, pid), model, pid, CPU)
    assert list(arrays.keys()) == list(global_arrays.keys())
    assert num_examples == cfg.local_steps * cfg.batch_size and np.isfinite(loss)
    data = attacker_data(cfg, context(cfg, pid), pid)
    expected = flat_from_arrays(global_arrays) + 3.0 * honest_update(cfg, model, data.batches)
    assert torch.allclose(flat_from_arrays(arrays), expected, atol=1e-5)
    assert torch.equal(flat_from_arrays(model_to_arrays(model)), flat_from_arrays(global_arrays))  # untouched


def test_an_attack_without_attackers_is_the_clean_run_on_the_same_schedule():
    cfg = compose(["attack=accumulative", "num_malicious=0"])
    validate(cfg)  # DESIGN.md: num_malicious=0 on a preset is its clean run
    assert malicious_set(cfg) == set()
    assert [round_phase(cfg, r) for r in (1, 15, 20, 21)] == ["burn_in", "accumulate", "trigger", "after"]


def test_phase_and_ground_truth():
    cfg = config("accumulative", *ACC)
    assert [round_phase(cfg, r) for r in range(1, 6)] == ["burn_in", "accumulate", "accumulate", "trigger", "after"]
    assert malicious_set(cfg) == {attacker(cfg)}
    none = compose(["num_malicious=1"])
    assert round_phase(none, 3) == "clean" and malicious_set(none) == set()


@pytest.mark.parametrize("overrides, key", [
    (["attack.name=nope"], "attack"),
    (["attack=accumulative", "num_malicious=1", "rounds=4"], "attack.trigger_round"),
    (["attack=accumulative", "num_malicious=1", "attack.burn_in=18"], "attack.trigger_round"),
    (["attack=accumulative", "num_malicious=1", "attack.trigger_mode=x"], "attack.trigger_mode"),
    (["attack=accumulative", "num_malicious=1", "attack.form=data", "attack.trigger_mode=reverse"],
     "attack.trigger_mode"),
    (["attack=accumulative", "num_malicious=1", "attack.norm_bound=0"], "attack.norm_bound"),
    (["attack=accumulative", "num_malicious=1", "attack.sign=2"], "attack.sign"),
    (["attack=accumulative", "num_malicious=1", "attack.stealth_drop=0"], "attack.stealth_drop"),
    (["attack=accumulative", "num_malicious=1", "attack.stealth_drop=-0.1"], "attack.stealth_drop"),
    (["attack=accumulative", "num_malicious=1", "attack.budget_action=trigger"], "attack.budget_action"),
    (["attack=accumulative", "num_malicious=1", "attack.poison_base=x"], "attack.poison_base"),
    (["attack=accumulative", "num_malicious=1", "keep_momentum=true", "backend.num_supernodes=10"],
     "keep_momentum"),
    (["attack=accumulative", "num_malicious=1", "attack.form=data", "attack.accumulate_against=fixed",
      "backend.num_supernodes=10"], "attack.accumulate_against"),
])
def test_invalid_attack_config(overrides, key):
    with pytest.raises(ConfigError, match=f"{key}=.*allowed:"):
        validate(compose(overrides))


@pytest.mark.parametrize("trigger, before", [(1, 0.1), (3, 0.8)])
def test_accuracy_before_trigger(tmp_path, trigger, before):
    rec = Recorder(tmp_path, compose())
    for rnd, acc in ((1, 0.5), (2, 0.8), (3, 0.3)):
        row = {"round": rnd, "accuracy": acc, "phase": "trigger" if rnd == trigger else "accumulate"}
        if rnd == 1:
            row["initial_accuracy"] = 0.1
        rec.record_round(row, [])
    summary = rec.summary()
    assert summary["accuracy_before_trigger"] == before
    assert summary["trigger_drop"] == pytest.approx(before - {1: 0.5, 3: 0.3}[trigger])


def test_attacks_without_trigger_record_attack_rounds_not_a_trigger():
    cfg = compose(["attack=sign_flip", "num_malicious=1", "num_clients=4", "rounds=3"])
    assert [round_phase(cfg, r) for r in (1, 2, 3)] == ["attack", "attack", "attack"]


# ------------------------------------------------------------------ stealth rule (attack.stealth_drop)

def test_stealth_step_reference_threshold_and_latch():
    state = stealth_step(None, 0.5, 0.25, server_round=3)  # first accuracy seen: the reference
    assert state == {"reference": 0.5, "accuracy": 0.5, "stopped": False, "stopped_round": 0}
    state = stealth_step(state, 0.25, 0.25, server_round=4)  # exactly the allowed drop: keeps going
    assert not state["stopped"] and state["reference"] == 0.5 and state["accuracy"] == 0.25
    state = stealth_step(state, 0.2, 0.25, server_round=5)  # more than the allowed drop: stops
    assert state["stopped"] and state["stopped_round"] == 5
    state = stealth_step(state, 0.9, 0.25, server_round=6)  # recovered accuracy: stays stopped
    assert state == {"reference": 0.5, "accuracy": 0.9, "stopped": True, "stopped_round": 5}
    assert json.loads(json.dumps(state)) == state  # JSON-able (carried by the server for virtual clients)


def test_stealth_step_null_never_stops_and_rises_do_not_move_reference():
    state = None
    for rnd, acc in enumerate((0.6, 0.0, 0.1, 0.0), start=2):
        state = stealth_step(state, acc, None, rnd)
    assert not state["stopped"] and state["reference"] == 0.6
    state = stealth_step(stealth_step(None, 0.4, 0.1, 2), 0.9, 0.1, 3)
    assert state["reference"] == 0.4 and not state["stopped"]


def _trained_and_broken(cfg, x_val, y_val):
    """A global model that is accurate on the held-out batch, and a copy whose output layer
    predicts one class only (the accuracy drop the attacker must notice)."""
    model, _ = global_model(cfg)
    pool = splits_from_config(cfg).pool
    x, y = torch.from_numpy(pool.x[:640]), torch.from_numpy(pool.y[:640])
    sgd_steps(model, [(x[i:i + 64], y[i:i + 64]) for i in range(0, 640, 64)] * 8, 0.1, 0.9, CPU)
    broken = copy.deepcopy(model)
    last = [m for m in broken.modules() if isinstance(m, torch.nn.Linear)][-1]
    rare = int(torch.bincount(y_val, minlength=10).argmin())  # the rarest class of S_val
    with torch.no_grad():
        last.bias[rare] += 1e4
    good, bad = heldout_accuracy(model, x_val, y_val, CPU), heldout_accuracy(broken, x_val, y_val, CPU)
    assert good > 0.5 and bad < good - 0.3, (good, bad)
    return model, broken


def _train_message(model, server_round: int):
    content = RecordDict({"arrays": model_to_arrays(model), "config": ConfigRecord({"server-round": server_round})})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _carried(cfg, pid: int, ctx: Context) -> Context:
    """A fresh Context holding `ctx`'s state after a JSON round trip (virtual clients, resume)."""
    fresh = context(cfg, pid)
    for name, values in json.loads(state_json(ctx)).items():
        fresh.state.config_records[name] = ConfigRecord(values)
    return fresh


@pytest.mark.parametrize("form", ["update", "data"])
def test_stealth_drop_client_replies_honestly_after_the_drop(flower_identity, form):
    """Accumulate rounds 2-4, trigger 5, stealth_drop tiny. Round 2 sees an accurate global
    model (reference, attacks); round 3 a broken one (drop seen: honest reply); round 4 the
    accurate one again (stays stopped: honest); round 5 the trigger fires anyway."""
    cfg = config("accumulative", "rounds=5", "attack.trigger_round=5", "attack.accumulate_rounds=3",
                 f"attack.form={form}", "attack.stealth_drop=1e-6")
    pid = attacker(cfg)
    ctx, shadow = context(cfg, pid), context(cfg, pid)  # shadow: the same stream batches, for the honest reference
    val = attacker_data(cfg, context(cfg, pid), pid)
    good, bad = _trained_and_broken(cfg, val.x_val, val.y_val)
    for rnd, model, honest_expected, stopped in ((2, good, False, False), (3, bad, True, True),
                                                 (4, good, True, True), (5, good, False, True)):
        ctx = _carried(cfg, pid, ctx)
        arrays, _, _, _ = malicious_train(cfg, _train_message(model, rnd), ctx, model, pid, CPU)
        batches = attacker_data(cfg, shadow, pid).batches
        honest = flat_from_arrays(model_to_arrays(model)) + honest_update(cfg, model, batches)
        is_honest = torch.allclose(flat_from_arrays(arrays), honest, atol=1e-5)
        assert is_honest == honest_expected, (rnd, form)
        state = dict(ctx.state.config_records[ATTACK_STATE])
        assert state["stopped"] == stopped and state["stopped_round"] == (3 if stopped else 0)
        assert attack_info(ctx)["attack-stopped"] == stopped
    assert state["reference"] == pytest.approx(heldout_accuracy(good, val.x_val, val.y_val, CPU))


def test_budget_action_trigger_fires_the_trigger_when_the_budget_is_spent(flower_identity):
    """attack.budget_action=trigger (the reference's error budget): the round the rule fires
    (3) sends the trigger round's reply; every later round, the planned trigger round (5)
    included, is honest."""
    cfg = config("accumulative", "rounds=5", "attack.trigger_round=5", "attack.accumulate_rounds=3",
                 "attack.form=data", "attack.stealth_drop=1e-6", "attack.budget_action=trigger",
                 "attack.trigger_steps=1")
    pid = attacker(cfg)
    ctx, shadow = context(cfg, pid), context(cfg, pid)
    val = attacker_data(cfg, context(cfg, pid), pid)
    good, bad = _trained_and_broken(cfg, val.x_val, val.y_val)
    for rnd, model, honest_expected in ((2, good, False), (3, bad, False), (4, good, True), (5, good, True)):
        ctx = _carried(cfg, pid, ctx)
        arrays, _, _, _ = malicious_train(cfg, _train_message(model, rnd), ctx, model, pid, CPU)
        data = attacker_data(cfg, shadow, pid)
        honest = flat_from_arrays(model_to_arrays(model)) + honest_update(cfg, model, data.batches)
        assert torch.allclose(flat_from_arrays(arrays), honest, atol=1e-5) == honest_expected, rnd
        if rnd == 3:  # one SGD step on the optimised trigger batch, as in the trigger round
            model.eval()
            x_trig = perturb_trigger(model, model_params(model), data.x_trig, data.y_trig, data.x_val, data.y_val,
                                     eps=cfg.attack.eps, steps=cfg.attack.steps, sign=cfg.attack.sign)
            expected = honest_update(cfg, model, [(x_trig, data.y_trig)])
            assert torch.allclose(flat_from_arrays(arrays) - flat_from_arrays(model_to_arrays(model)), expected,
                                  atol=1e-5)
    assert dict(ctx.state.config_records[ATTACK_STATE])["stopped_round"] == 3


def test_stealth_drop_null_keeps_no_state(flower_identity):
    cfg = config("accumulative", *ACC)
    pid = attacker(cfg)
    ctx = context(cfg, pid)
    model, _ = global_model(cfg)
    malicious_train(cfg, _train_message(model, 2), ctx, model, pid, CPU)
    assert ATTACK_STATE not in ctx.state.config_records and attack_info(ctx) == {}


def test_data_form_trains_through_the_sanitizer(flower_identity):
    """attack.form=data with sanitizer=dsc (the single-learner defense): every round's batches
    go through DSC. Burn-in round 1: clean batches, nothing counted as poisoned, DSC starts its
    state; accumulate round 2: all crafted samples are ground-truth poisoned, and a zero
    threshold makes DSC correct every batch it can (so the reply differs from plain training)."""
    from fedguard.sanitizers import CORRECTED, FLAGGED, POISONED
    from fedguard.sanitizers.dsc import STATE_KEY as DSC_KEY

    cfg = config("accumulative", *ACC, "attack.form=data", "sanitizer=dsc", "sanitizer.dsc.tau0=0",
                 "sanitizer.dsc.slope=0", "sanitizer.dsc.history_lag=0")
    plain_cfg = config("accumulative", *ACC, "attack.form=data")
    pid = attacker(cfg)
    model, _ = global_model(cfg)
    ctx = context(cfg, pid)
    _, _, n1, burn_in = malicious_train(cfg, _train_message(model, 1), ctx, model, pid, CPU)
    assert burn_in[POISONED] == 0 and DSC_KEY in ctx.state.config_records
    arrays, _, n2, acc = malicious_train(cfg, _train_message(model, 2), ctx, model, pid, CPU)
    # MD against this round's global model is exactly 0 at the first step (nothing trained yet),
    # above the zero threshold at every later one
    assert acc[POISONED] == n2 and acc[CORRECTED] == cfg.local_steps - 1 and acc[FLAGGED] == n2 - n2 // cfg.local_steps
    plain, _, _, none = malicious_train(plain_cfg, _train_message(model, 2), context(plain_cfg, pid), model, pid, CPU)
    assert none is None
    assert not torch.allclose(flat_from_arrays(arrays), flat_from_arrays(plain))


def test_accumulate_against_crafted_aligns_with_the_crafted_trigger(flower_identity):
    """attack.accumulate_against=crafted: the accumulate round poisons towards the trigger the
    trigger round will train on (perturb_trigger of the clean trigger batch), so its reply
    differs from the clean-aligned one; a bad value is a config error naming it."""
    clean_cfg = config("accumulative", *ACC, "attack.form=data", "attack.eps=0.2")
    crafted_cfg = config("accumulative", *ACC, "attack.form=data", "attack.eps=0.2", "attack.accumulate_against=crafted")
    clean, _, _ = round_of(clean_cfg, 2)
    crafted, _, _ = round_of(crafted_cfg, 2)
    assert clean.phase == crafted.phase == "accumulate"
    assert not torch.allclose(clean.update, crafted.update)
    with pytest.raises(ConfigError, match="attack.accumulate_against='trigger'"):
        config("accumulative", "attack.accumulate_against=trigger")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_num_malicious_0_on_a_preset_is_its_clean_run(preset):
    """DESIGN.md's contract: `num_malicious=0` on a preset is its clean run: the same data,
    rounds, seed and every other setting, nobody attacking (the schedule stays, so the
    trigger round is recorded and measured in the clean run too)."""
    clean = compose([f"+experiment={preset}", "num_malicious=0"])
    validate(clean)
    assert malicious_set(clean) == set()
    baseline = flatten(compose([f"+experiment={preset}", "num_malicious=0", "attack=none"]))
    differs = {k for k, v in flatten(clean).items() if baseline.get(k) != v}
    assert differs and all(k.startswith("attack.") for k in differs), differs
