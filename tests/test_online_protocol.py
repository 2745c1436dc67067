"""The reference's online protocol as configuration of the single learner, checked step for
step against a plain-torch transcription of the reference loop (AccumulativeAttack's
`online_accu_train.py`): one SGD optimizer kept through the accumulation and the trigger,
the trigger crafted once at the first attacking model, a poison recrafted at every step at
the current model (eval mode) and trained on in train mode, the trigger trained on once."""

import copy

import torch
from flwr.app import RecordDict
from torch.nn import functional as F

from fedguard.attacks.craft import AttackData, craft
from fedguard.attacks.objectives import accumulation_direction, model_params, perturb_batch, perturb_trigger
from fedguard.config import compose, validate
from fedguard.models import build_model

CPU = torch.device("cpu")
ONLINE = ["attack=accumulative", "attack.form=data", "attack.accumulate_against=fixed", "keep_momentum=true",
          "attack.trigger_steps=1", "attack.burn_in=1", "attack.accumulate_rounds=3", "attack.trigger_round=5", "num_clients=1",
          "num_malicious=1", "local_steps=1", "lr=0.1", "momentum=0.9", "model=cnn_bn", "dataset=digits",
          "attack.eps=0.2", "attack.steps=2", "attack.sign=-1"]


def stream(seed: int, rounds: int, n: int = 16):
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))
               for _ in range(rounds)]
    trig = (torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    val = (torch.rand(2 * n, 1, 8, 8, generator=gen), torch.randint(0, 10, (2 * n,), generator=gen))
    return batches, trig, val


def sgd_step(model, opt, x, y):
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def reference_loop(model, cfg, batches, trig, val, stream_is_trigger=False, control=False):
    """The transcription: burn-in step, accumulation steps against the trigger crafted once
    (at the model after burn-in), one trigger step; one optimizer throughout.
    `stream_is_trigger`: the poisons are crafted from the trigger's own images (the
    reference's unshuffled loader); `control`: the last step is on the last clean batch."""
    a = cfg.attack
    (xt, yt), (xv, yv) = trig, val
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sgd_step(model, opt, *batches[0])  # burn-in round: the clean batch
    model.eval()
    x_trigger = perturb_trigger(model, model_params(model), xt, yt, xv, yv, eps=a.eps, steps=a.steps,
                                sign=a.sign).detach()
    for x, y in ([trig] * (len(batches) - 1) if stream_is_trigger else batches[1:]):
        model.eval()
        params = model_params(model)
        d = accumulation_direction(model, params, x_trigger, yt, xv, yv, sign=a.sign)
        x_poison = perturb_batch(model, params, x, y, x_trigger, yt, xv, yv, eps=a.eps, steps=a.steps,
                                 sign=a.sign, direction=d).detach()
        sgd_step(model, opt, x_poison, y)
    sgd_step(model, opt, *(batches[-1] if control else (x_trigger, yt)))
    return model


def fedguard_rounds(model, cfg, batches, trig, val):
    """The same through `craft`, one round per online step, the reply becoming the next model."""
    state = RecordDict()
    (xt, yt), (xv, yv) = trig, val
    for rnd in range(1, len(batches) + 2):
        batch = batches[min(rnd, len(batches)) - 1]
        data = AttackData([batch], xv, yv, xt, yt, None, None, None)
        crafted = craft(cfg, rnd, model, data, CPU, 10, 0, state=state)
        assert crafted.phase == ("burn_in" if rnd == 1 else "trigger" if rnd == len(batches) + 1 else "accumulate")
        model = crafted.trained
    return model


def test_online_protocol_matches_the_reference_loop():
    cfg = compose(ONLINE)
    validate(cfg)
    batches, trig, val = stream(0, rounds=4)
    torch.manual_seed(0)
    start = build_model("cnn_bn", (1, 8, 8), 10)
    ours = fedguard_rounds(copy.deepcopy(start), cfg, batches, trig, val)
    ref = reference_loop(copy.deepcopy(start), cfg, batches, trig, val)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_without_kept_momentum_or_fixed_trigger_the_weights_differ():
    """The check can fail: each of the two knobs changes the result."""
    batches, trig, val = stream(1, rounds=4)
    torch.manual_seed(1)
    start = build_model("cnn_bn", (1, 8, 8), 10)
    ref = reference_loop(copy.deepcopy(start), compose(ONLINE), batches, trig, val)
    for knob in ("keep_momentum=false", "attack.accumulate_against=crafted"):
        ours = fedguard_rounds(copy.deepcopy(start), compose([*ONLINE, knob]), batches, trig, val)
        diff = max(float((a.float() - b.float()).abs().max())
                   for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))
        assert diff > 1e-4, knob


def test_poisons_from_the_trigger_images_and_the_stream_control_match_the_reference():
    """attack.poison_base=trigger (the reference's unshuffled loader: every stream batch is the
    trigger's images) and attack.trigger_batch=stream (the control: a clean step in place of
    the trigger)."""
    batches, trig, val = stream(2, rounds=4)
    torch.manual_seed(2)
    start = build_model("cnn_bn", (1, 8, 8), 10)
    for knob, kwargs in (("attack.poison_base=trigger", {"stream_is_trigger": True}),
                         ("attack.trigger_batch=stream", {"control": True})):
        cfg = compose([*ONLINE, knob])
        validate(cfg)
        ours = fedguard_rounds(copy.deepcopy(start), cfg, batches, trig, val)
        ref = reference_loop(copy.deepcopy(start), cfg, batches, trig, val, **kwargs)
        for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
            assert torch.allclose(a.float(), b.float(), atol=1e-5), (knob, name)


def test_keep_momentum_makes_an_honest_client_one_optimizer_over_its_rounds(flower_identity):
    """The clean run of the online preset (num_malicious=0) is the same learner without the
    attacker: with keep_momentum an honest client's rounds are one SGD optimizer too."""
    from flwr.app import ConfigRecord, Context, Message, MessageType

    from fedguard.client_app import stream_batches, train
    from fedguard.config import flatten
    from fedguard.data.sources import splits_from_config
    from fedguard.models import flat_from_arrays, model_to_arrays
    from fedguard.protocol import ARRAYS, SERVER_ROUND
    from fedguard.training import sgd_steps

    cfg = compose(["num_clients=1", "local_steps=2", "batch_size=16", "model.hidden=16", "keep_momentum=true"])
    validate(cfg)
    data = splits_from_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, cfg.model.hidden)
    reference = copy.deepcopy(model)

    def new_context():
        return Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                       run_config=flatten(cfg))

    clients, drawn = new_context(), new_context()
    opt_buffers = [None] * len(list(reference.parameters()))
    arrays = model_to_arrays(model)
    for rnd in (1, 2, 3):
        msg = Message(RecordDict({ARRAYS: arrays, "config": ConfigRecord({SERVER_ROUND: rnd})}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
        arrays = train(msg, clients).content[ARRAYS]
        batches = stream_batches(cfg, drawn, 0)[0]
        sgd_steps(reference, batches, cfg.lr, cfg.momentum, CPU, buffers=opt_buffers)
    assert all(b is not None for b in opt_buffers)
    assert torch.allclose(flat_from_arrays(arrays), flat_from_arrays(model_to_arrays(reference)), atol=1e-6)
    # and without it every round starts a fresh optimizer: a different model
    fresh = copy.deepcopy(model)
    for batches in [stream_batches(cfg, ctx, 0)[0] for ctx in [new_context()] for _ in range(3)]:
        sgd_steps(fresh, batches, cfg.lr, cfg.momentum, CPU)
    assert not torch.allclose(flat_from_arrays(arrays), flat_from_arrays(model_to_arrays(fresh)), atol=1e-4)
