"""The mddsc wrapper on real arrays: scoring, thresholds, corrections, history."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedguard.config import compose
from fedguard.data.sources import load_splits
from fedguard.models import arrays_from_flat, build_model, flat_from_arrays, model_to_arrays
from fedguard.training import sgd_steps
from strategies import RoundNotes
from strategies.factory import build_aggregator
from strategies.mddsc import MDDSC
from tests.test_md import model_md  # the per-model oracle


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    torch.manual_seed(0)
    yield


def reply(node: int, arrays: ArrayRecord) -> Message:
    msg = Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})}),
                  dst_node_id=0, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_src_node_id"] = node
    return msg


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    data = load_splits("digits", None, 200, 360, 0)
    model = build_model("mlp", data.input_shape, 10)
    x, y = torch.from_numpy(data.pool.x), torch.from_numpy(data.pool.y)
    sgd_steps(model, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 640, 32)], 0.05, 0.9, torch.device("cpu"))
    global_arrays = model_to_arrays(model)
    base = flat_from_arrays(global_arrays)
    honest = []
    for c in range(8):  # honest clients: a few SGD steps on their own data
        m = build_model("mlp", data.input_shape, 10)
        m.load_state_dict(model.state_dict())
        lo = 640 + 64 * c
        sgd_steps(m, [(x[lo:lo + 32], y[lo:lo + 32]), (x[lo + 32:lo + 64], y[lo + 32:lo + 64])], 0.05, 0.0,
                  torch.device("cpu"))
        honest.append(flat_from_arrays(model_to_arrays(m)) - base)
    # a poisoned update: trained on flipped labels, boosted to 10x the median honest norm
    # (the boosted trigger of the attacks issue; at equal norm MD against the current global
    # model is close to honest MD: see the experiments in the notes)
    m = build_model("mlp", data.input_shape, 10)
    m.load_state_dict(model.state_dict())
    sgd_steps(m, [(x[i:i + 32], 9 - y[i:i + 32]) for i in range(0, 320, 32)], 0.1, 0.0, torch.device("cpu"))
    bad = flat_from_arrays(model_to_arrays(m)) - base
    bad = bad * (10 * torch.stack(honest).norm(dim=1).median() / bad.norm())
    return data, model, global_arrays, base, honest, bad


def make(setting, *overrides, inner="fedavg", spill_dir=None):
    """An MDDSC over `inner` built from `defense=mddsc` with correction scale, lag 0 and the
    given `defense.*` overrides (e.g. "correction.method=drop")."""
    data, model, global_arrays, base, honest, bad = setting
    notes = RoundNotes()
    # one round against the current global model (lag 0): honest MD is small and spread over
    # a ~6x range here, so the spread floor is raised above the default (tuned on federated
    # runs where the reference lags 5 rounds and honest MD is tight)
    settings = compose(["defense=mddsc", "defense.history.lag=0", "defense.correction.method=scale",
                        "defense.threshold.min_log_spread=0.5"] + [f"defense.{o}" for o in overrides]).defense
    strategy = MDDSC(build_aggregator(inner, compose(), 9), build_model("mlp", data.input_shape, 10),
                     data.val.x, data.val.y, settings, spill_dir=spill_dir, notes=notes)
    strategy.global_arrays = global_arrays
    replies = [reply(i, arrays_from_flat(base + u, global_arrays)) for i, u in enumerate(honest)]
    replies.append(reply(99, arrays_from_flat(base + bad, global_arrays)))
    return strategy, notes, replies


def test_boosted_poisoned_update_is_flagged_and_scaled_under_threshold(setting):
    data, model, global_arrays, base, honest, bad = setting
    strategy, notes, replies = make(setting)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert notes.clients[99]["flagged"] and not any(notes.clients[i]["flagged"] for i in range(8))
    assert notes.clients[99]["md"] > 3 * max(notes.clients[i]["md"] for i in range(8))
    alpha = float(notes.clients[99]["correction"].split(":")[1])
    assert 0.0 <= alpha < 1.0
    # the corrected model's MD (recomputed independently on the same batch) is under the threshold
    corrected = flat_from_arrays(replies[-1].content["arrays"])
    assert torch.allclose(corrected, base + alpha * bad, atol=1e-5)
    assert len(strategy.history) == 2 and strategy.history.rounds == [0, 1]
    assert notes.timing["defense_s"] > 0


def test_scale_alpha_is_the_largest_under_threshold(setting):
    data, model, global_arrays, base, honest, bad = setting
    strategy, notes, replies = make(setting)
    idx = strategy.val_stream.next_batch(strategy.val_batch)  # replay the batch the wrapper will draw
    strategy.val_stream = type(strategy.val_stream)(np.arange(len(data.val.y)), 0, strategy.val_stream.stream_id)
    x = torch.from_numpy(data.val.x[idx])
    strategy.aggregate_train(1, replies)
    tau, alpha = notes.clients[99]["threshold"], float(notes.clients[99]["correction"].split(":")[1])
    tmpl = build_model("mlp", data.input_shape, 10)
    assert model_md(tmpl, base, base + alpha * bad, x).mean() <= tau + 1e-6
    assert model_md(tmpl, base, base + min(1.0, alpha + 0.01) * bad, x).mean() > tau


def test_drop_removes_the_update_from_aggregation(setting):
    data, model, global_arrays, base, honest, bad = setting
    strategy, notes, replies = make(setting, "correction.method=drop")
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = base + torch.stack(honest).mean(0)
    assert torch.allclose(flat_from_arrays(arrays), expected, atol=1e-5)
    assert notes.clients[99]["correction"] == "drop"


def test_pgd_correction_gets_under_threshold(setting):
    strategy, notes, replies = make(setting, "correction.method=pgd", "correction.pgd_steps=5")
    strategy.aggregate_train(1, replies)
    assert notes.clients[99]["correction"].startswith("pgd:")


def test_no_attack_no_flags(setting):
    data, model, global_arrays, base, honest, bad = setting
    strategy, notes, replies = make(setting)
    arrays, _ = strategy.aggregate_train(1, replies[:-1])
    assert not any(n["flagged"] for n in notes.clients.values())
    assert torch.allclose(flat_from_arrays(arrays), base + torch.stack(honest).mean(0), atol=1e-5)


def test_schedule_threshold_is_the_papers(setting):
    strategy, notes, replies = make(setting, "threshold.rule=schedule", "threshold.tau0=0.5", "threshold.slope=0.02")
    strategy.aggregate_train(3, replies)
    assert notes.clients[0]["threshold"] == pytest.approx(0.56)


def test_chunked_scoring_matches_all_at_once(setting):
    data, model, global_arrays, base, honest, bad = setting
    results = {}
    for chunk in ("null", 2):
        strategy, notes, replies = make(setting, f"score_chunk={chunk}")
        strategy.aggregate_train(1, replies)
        results[chunk] = notes
    full, chunked = results["null"], results[2]
    for node in full.clients:
        assert chunked.clients[node]["md"] == pytest.approx(full.clients[node]["md"], rel=1e-5, abs=1e-8)
        assert chunked.clients[node]["flagged"] == full.clients[node]["flagged"]
        a, b = chunked.clients[node]["correction"], full.clients[node]["correction"]
        assert (a is None) == (b is None)
        if a is not None:  # scale:alpha
            assert float(a.split(":")[1]) == pytest.approx(float(b.split(":")[1]), abs=1e-3)
    # scores() directly, with K not a multiple of the chunk
    strategy, _, _ = make(setting)
    strategy.history.push(0, base)
    stacked = torch.stack([base + u for u in honest[:5]] + [base + bad])
    x = torch.from_numpy(data.val.x[:64])
    expected = strategy.scores(stacked, x)
    strategy.score_chunk = 4
    torch.testing.assert_close(strategy.scores(stacked, x), expected, rtol=1e-5, atol=1e-8)


def test_spilled_history_scores_like_in_memory(setting, tmp_path):
    notes_of = {}
    for spill in (False, True):
        strategy, notes, replies = make(setting, f"history.spill={str(spill).lower()}",
                                        spill_dir=str(tmp_path / "h") if spill else None)
        strategy.aggregate_train(1, replies)
        notes_of[spill] = notes
        assert strategy.history.rounds == [0, 1]
        if spill:
            assert strategy.history.nbytes == 0 and len(list((tmp_path / "h").iterdir())) == 2
            assert notes.round["history_disk_bytes"] == strategy.history.disk_bytes > 0
    assert {n: c["md"] for n, c in notes_of[True].clients.items()} == \
        {n: c["md"] for n, c in notes_of[False].clients.items()}


def test_factory_passes_score_chunk_and_spill_dir(tmp_path):
    from fedguard.config import ConfigError, validate
    from strategies.factory import build_defense

    data = load_splits("digits", None, 200, 360, 0)
    model = build_model("mlp", data.input_shape, 10)
    cfg = compose(["defense=mddsc", "defense.score_chunk=3", "defense.history.spill=true", f"run_dir={tmp_path}"])
    validate(cfg)
    strategy = build_defense(cfg, 4, RoundNotes(), model=model, data=data)
    assert strategy.score_chunk == 3 and strategy.history.spill_dir == tmp_path / "history"
    cfg.run_dir = None  # e.g. `flwr run`: a temporary directory
    strategy = build_defense(cfg, 4, RoundNotes(), model=model, data=data)
    assert strategy.history.spill_dir is not None and strategy.history.spill_dir != tmp_path / "history"
    default = build_defense(compose(["defense=mddsc"]), 4, RoundNotes(), model=model, data=data)
    assert default.score_chunk is None and not default.history.spill
    with pytest.raises(ConfigError, match="defense.score_chunk"):
        validate(compose(["defense=mddsc", "defense.score_chunk=0"]))
