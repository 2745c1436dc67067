"""Sample-level DSC (fedguard/sanitizers/dsc.py) and the sanitiser plumbing of the ClientApp."""

from __future__ import annotations

import copy

import pytest
import torch
from flwr.app import Context, RecordDict
from torch import nn

from fedguard.config import compose, validate
from fedguard.defense.md import md_per_sample
from fedguard.defense.thresholds import schedule_threshold
from fedguard.sanitizers import (
    CORRECTED,
    DROPPED,
    FLAGGED,
    FLAGGED_POISONED,
    METRICS,
    POISONED,
    STEPS,
    Sanitizer,
    build_sanitizer,
    train_sanitized,
)
from fedguard.sanitizers.dsc import DSCSanitizer, dsc_correct, flat_params
from fedguard.training import sgd_steps

CPU = torch.device("cpu")


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def batch(seed: int = 0, n: int = 24):
    """A learnable task: the label is the largest of the first 4 pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, x.reshape(n, 16)[:, :4].argmax(1)


def batch_md(model, hist_flat, x):
    other = copy.deepcopy(model)
    nn.utils.vector_to_parameters(hist_flat, other.parameters())  # the MLP exchanges parameters only
    with torch.no_grad():
        return float(md_per_sample(other.eval()(x), model.eval()(x)).mean())


@pytest.fixture(scope="module")
def _diverged():
    """(current, historical flat): the historical model learnt the task, the current one then
    learnt flipped labels."""
    hist = mlp(0)
    batches = [batch(s) for s in range(8)]
    sgd_steps(hist, batches * 10, 0.5, 0.0, CPU)
    cur = copy.deepcopy(hist)
    sgd_steps(cur, [(x, 3 - y) for x, y in batches] * 10, 0.5, 0.0, CPU)
    cur.zero_grad(set_to_none=True)
    return cur, flat_params(hist)


@pytest.fixture
def diverged(_diverged):
    cur, hist = _diverged
    return copy.deepcopy(cur), hist.clone()


def test_threshold_schedule_is_the_papers():
    assert [DSCSanitizer().threshold(t) for t in range(3)] == pytest.approx([0.5, 0.52, 0.54])
    assert DSCSanitizer().threshold(10) == pytest.approx(0.7)
    assert DSCSanitizer(tau0=0.1, slope=0.5).threshold(4) == pytest.approx(2.1)


def test_correction_stays_in_the_eps_ball_and_in_0_1(diverged):
    cur, hist = diverged
    x, y = batch(1)
    res = dsc_correct(cur, hist, x, y, threshold=-1.0, eps=0.05, step=0.02, steps=10)  # never satisfied
    assert res.steps == 10
    assert (res.x - x).abs().max() <= 0.05 + 1e-6
    assert res.x.min() >= 0.0 and res.x.max() <= 1.0
    assert not torch.equal(res.x, x) and torch.equal(x, batch(1)[0])  # input untouched


def test_correction_stops_as_soon_as_md_is_under_the_threshold(diverged):
    cur, hist = diverged
    x, y = batch(3)
    # the batch-mean MD after k uninterrupted steps, k = 0..10
    traj = [dsc_correct(cur, hist, x, y, threshold=-1.0, steps=k).md_after for k in range(11)]
    assert traj[0] > 0.5 and min(traj) < traj[0]  # descent on CE towards the labels lowers MD
    thr = (traj[0] + min(traj)) / 2
    expected = next(k for k, md in enumerate(traj) if md <= thr)
    assert 0 < expected < 10
    res = dsc_correct(cur, hist, x, y, threshold=thr, eps=0.2, step=0.02, steps=10)
    assert res.steps == expected and res.md_after <= thr < res.md_before  # the first step under it
    assert res.md_after == pytest.approx(traj[expected])
    assert batch_md(cur, hist, res.x) == pytest.approx(res.md_after, rel=1e-5)
    # MD already under the threshold: nothing happens
    none = dsc_correct(cur, hist, x, y, threshold=traj[0] + 1e-3)
    assert none.steps == 0 and torch.equal(none.x, x)


def test_no_correction_when_the_historical_model_is_the_current_one():
    model = mlp(0)
    x, y = batch(2)
    res = dsc_correct(model, flat_params(model), x, y, threshold=schedule_threshold(0))
    assert res.steps == 0 and res.md_before == pytest.approx(0.0, abs=1e-6) and torch.equal(res.x, x)
    res0 = dsc_correct(model, flat_params(model), x, y, threshold=0.0)  # even at threshold 0
    assert res0.steps == 0


def test_a_batch_fitted_very_differently_gets_corrected(diverged):
    cur, hist = diverged
    x, y = batch(3)
    res = dsc_correct(cur, hist, x, y, threshold=schedule_threshold(0))
    assert res.md_before > 0.5 and res.steps > 0 and res.md_after < res.md_before


def test_correction_leaves_the_model_as_it_was(diverged):
    cur, hist = diverged
    cur.train()
    before = copy.deepcopy(cur.state_dict())
    dsc_correct(cur, hist, *batch(4), threshold=-1.0)
    assert cur.training and all(p.grad is None for p in cur.parameters())
    assert all(torch.equal(before[k], v) for k, v in cur.state_dict().items())


# ------------------------------------------------------------------ the sanitiser, Context.state

def ctx() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def test_dsc_history_and_online_step_count_live_in_context_state(diverged):
    cur, _ = diverged
    context = ctx()
    first = mlp(0)
    san = DSCSanitizer(history_lag=1)
    san.begin_round(first, context, 1)
    out, flags = san.sanitize(first, [batch(0), batch(1)], context, 1)  # no history yet: untouched
    assert all(torch.equal(o[0], b[0]) for o, b in zip(out, [batch(0), batch(1)])) and not any(f.any() for f in flags)
    stats = san.end_round(first, context, 1)
    assert stats[CORRECTED] == 0 and stats[STEPS] == 0
    assert context.state.config_records["dsc"]["t"] == 2 and list(context.state.config_records["dsc"]["rounds"]) == [1]
    # next participation: the historical model is the global model of round 1
    san = DSCSanitizer(history_lag=1)
    san.begin_round(cur, context, 3)
    assert torch.equal(san._hist, flat_params(first)) and san._t == 2
    (xb, yb), = san.sanitize(cur, [batch(3)], context, 3)[0]
    stats = san.end_round(cur, context, 3)
    assert stats[CORRECTED] == 1 and stats[STEPS] >= 1
    assert context.state.config_records["dsc"]["t"] == 3
    assert list(context.state.config_records["dsc"]["rounds"]) == [3]  # lag 1 keeps one snapshot
    assert torch.equal(torch.from_numpy(context.state.array_records["dsc-history"]["0"].numpy()), flat_params(cur))
    # lag 2 keeps two
    context2, san2 = ctx(), DSCSanitizer(history_lag=2)
    for rnd, m in enumerate([mlp(1), mlp(2), mlp(3)], start=1):
        san2.begin_round(m, context2, rnd)
        san2.end_round(m, context2, rnd)
    assert list(context2.state.config_records["dsc"]["rounds"]) == [2, 3]
    san2.begin_round(mlp(4), context2, 4)
    assert torch.equal(san2._hist, flat_params(mlp(2)))  # two participations back
    # lag 0: this round's global model, nothing stored
    context3, san3 = ctx(), DSCSanitizer(history_lag=0)
    san3.begin_round(cur, context3, 1)
    assert torch.equal(san3._hist, flat_params(cur))
    san3.end_round(cur, context3, 1)
    assert "dsc-history" not in context3.state.array_records


def test_history_round_anchors_the_global_model_of_that_round_for_the_rest_of_the_run():
    context = ctx()
    for rnd in (1, 3, 4, 7):  # participations; the anchor round 2 is missed, so round 3's model is kept
        san = DSCSanitizer(history_round=2)
        san.begin_round(mlp(rnd), context, rnd)
        assert (san._hist is None) == (rnd <= 3)
        if rnd > 3:
            assert torch.equal(san._hist, flat_params(mlp(3)))
        san.end_round(mlp(rnd), context, rnd)
        assert list(context.state.config_records["dsc"]["rounds"]) == ([] if rnd < 2 else [3])
    assert "history_round" in str(pytest.raises(ValueError, validate, compose(
        ["sanitizer=dsc", "sanitizer.dsc.history_round=0"])).value)


def test_before_start_round_batches_pass_untouched_and_t_does_not_count(diverged):
    cur, _ = diverged
    context = ctx()
    san = DSCSanitizer(history_lag=1, start_round=3)
    for rnd, m in [(1, cur), (2, mlp(0))]:  # pretraining rounds: snapshots kept, nothing corrected
        san.begin_round(m, context, rnd)
        out, flags = san.sanitize(m, [batch(rnd)], context, rnd)
        assert torch.equal(out[0][0], batch(rnd)[0]) and not flags[0].any()
        assert san.end_round(m, context, rnd)[CORRECTED] == 0
    assert context.state.config_records["dsc"]["t"] == 0
    assert list(context.state.config_records["dsc"]["rounds"]) == [2]
    san.begin_round(cur, context, 3)  # online: corrected against round 2's model, t from 0
    assert torch.equal(san._hist, flat_params(mlp(0))) and san.threshold(san._t) == san.tau0
    san.sanitize(cur, [batch(3)], context, 3)
    assert san.end_round(cur, context, 3)[CORRECTED] == 1
    assert context.state.config_records["dsc"]["t"] == 1


def test_drop_above_drops_and_flags_the_most_discrepant_samples(diverged):
    cur, hist = diverged
    context = ctx()
    san = DSCSanitizer(steps=0, drop_above=0.5, history_lag=0)
    san.begin_round(cur, context, 1)
    san._hist = hist
    x, y = batch(5)
    (out,), (mask,) = san.sanitize(cur, [(x, y)], context, 1)
    other = copy.deepcopy(cur)
    nn.utils.vector_to_parameters(hist, other.parameters())
    with torch.no_grad():
        per = md_per_sample(other.eval()(x), cur.eval()(x))
    assert torch.equal(mask, per > 0.5) and 0 < int(mask.sum()) < len(y)
    assert len(out[1]) == len(y) - int(mask.sum()) and torch.equal(out[0], x[~mask])


def test_skip_uncorrected_gates_whole_batches_on_their_mean_md(diverged):
    cur, hist = diverged
    x, y = batch(5)
    mean_md = batch_md(cur, hist, x)
    for tau0, skipped in ((0.5 * mean_md, True), (2.0 * mean_md, False)):
        context = ctx()
        san = DSCSanitizer(steps=0, tau0=tau0, slope=0.0, history_lag=0, skip_uncorrected=True)
        san.begin_round(cur, context, 1)
        san._hist = hist
        (out,), (mask,) = san.sanitize(cur, [(x, y)], context, 1)
        assert bool(mask.all()) is skipped and bool(mask.any()) is skipped
        assert len(out[1]) == (0 if skipped else len(y))
        assert san.end_round(cur, context, 1)[DROPPED] == (len(y) if skipped else 0)


def test_build_sanitizer_from_config():
    assert type(build_sanitizer(compose([]))) is Sanitizer
    san = build_sanitizer(compose(["sanitizer=dsc", "sanitizer.dsc.history_lag=3", "sanitizer.dsc.eps=0.1"]))
    assert isinstance(san, DSCSanitizer) and san.online and san.history_lag == 3 and san.eps == 0.1
    assert san.steps == 10 and san.step == 0.02 and san.tau0 == 0.5 and san.slope == 0.02 and san.drop_above is None


def test_train_sanitized_counts_flags_against_ground_truth(diverged):
    cur, hist = diverged
    batches = [batch(6), batch(7)]
    poisoned = [torch.arange(24) < 3, torch.zeros(24, dtype=torch.bool)]
    # none: same training as plain sgd_steps, nothing flagged
    plain, model = copy.deepcopy(cur), copy.deepcopy(cur)
    loss_plain = sgd_steps(plain, batches, 0.1, 0.9, CPU)
    loss, n, metrics = train_sanitized(Sanitizer(), model, batches, poisoned, ctx(), 1, 0.1, 0.9, CPU)
    assert loss == pytest.approx(loss_plain) and n == 48 and set(metrics) == set(METRICS)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    assert metrics[POISONED] == 3 and metrics[FLAGGED] == 0 and metrics[FLAGGED_POISONED] == 0
    # dsc with this round's global model as the historical one (lag 0) and a threshold that the
    # second batch (after one SGD step on the first) exceeds
    san = DSCSanitizer(history_lag=0, tau0=0.0, slope=0.0)
    model = copy.deepcopy(cur)
    loss, n, metrics = train_sanitized(san, model, batches, poisoned, ctx(), 1, 0.1, 0.9, CPU)
    assert metrics[CORRECTED] == 1 and metrics[STEPS] == 10  # batch 0: MD = 0 at the round start
    assert metrics[FLAGGED] == 24 and metrics[FLAGGED_POISONED] == 0 and metrics[POISONED] == 3
    assert n == 48 and loss > 0 and metrics["sanitizer-s"] > 0
