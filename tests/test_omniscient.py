"""Omniscient attacks (the math in fedguard/attacks/omniscient.py, the adapter in
strategies/omniscient.py): ALIE and IPM crafted from the honest updates, written over the
malicious replies only, in the plan's attacking rounds, before the defense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedguard.attacks.omniscient import alie_update, alie_z, ipm_update
from fedguard.attacks.plan import AttackPlan, malicious_ids
from fedguard.config import compose
from strategies import ReplyValidator, RoundNotes
from strategies.factory import build_strategy
from strategies.omniscient import OmniscientAttack
from tests.test_reply_validation import Spy, as_reply, content, flat, model_arrays

GLOBAL = np.linspace(-1, 1, 16).astype(np.float32)
UPDATES = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
MALICIOUS = {1, 3}


@pytest.fixture(autouse=True)
def _identity(flower_identity):
    yield


def test_alie_z_follows_baruch_formula():
    # n=20, f=4: s = 11 - 4 = 7, z = Phi^-1(13/20); n=6, f=2: s = 2, z = Phi^-1(4/6)
    assert alie_z(20, 4) == pytest.approx(0.385320466, abs=1e-8)
    assert alie_z(6, 2) == pytest.approx(0.430727299, abs=1e-8)
    assert alie_z(50, 24) == pytest.approx(1.75068607, abs=1e-7)  # s = 2, Phi^-1(48/50)
    assert alie_z(4, 0) == 0.0 and alie_z(1, 1) == 0.0  # degenerate cases clipped to z >= 0
    assert np.isfinite(alie_z(5, 5))


def test_alie_and_ipm_equal_numpy():
    honest = UPDATES[[0, 2, 4]]
    expected = honest.mean(0) - 1.3 * honest.std(0)
    assert np.allclose(alie_update(torch.from_numpy(honest), 1.3).numpy(), expected, atol=1e-6)
    assert np.allclose(ipm_update(torch.from_numpy(honest), 0.7).numpy(), -0.7 * honest.mean(0), atol=1e-6)


def partition_replies(global_flat: np.ndarray, updates: np.ndarray) -> list:
    """Replies global + update i from node 100 + i, each naming partition i."""
    out = []
    for pid, u in enumerate(updates):
        c = content(global_flat + u)
        c["metrics"]["partition-id"] = pid
        out.append(as_reply(100 + pid, c))
    return out


def replies():
    return partition_replies(GLOBAL, UPDATES)


def wrapper(kind, plan=None, **kw):
    spy = Spy()
    w = OmniscientAttack(spy, kind, MALICIOUS, plan, notes=RoundNotes(), **kw)
    w.global_arrays = model_arrays(GLOBAL)
    return w, spy


@pytest.mark.parametrize("kind", ["alie", "ipm"])
def test_wrapper_overwrites_only_malicious_replies(kind):
    w, spy = wrapper(kind, z=None, eps=2.0)
    w.aggregate_train(1, replies())
    seen = {int(m.content["metrics"]["partition-id"]): flat(m.content["arrays"]) - GLOBAL for m in spy.seen}
    honest = UPDATES[[0, 2, 4]]
    if kind == "alie":
        want = honest.mean(0) - alie_z(5, 2) * honest.std(0)
        assert w.notes.round["alie_z"] == pytest.approx(alie_z(5, 2))
    else:
        want = -2.0 * honest.mean(0)
    for pid in range(5):
        if pid in MALICIOUS:
            assert np.allclose(seen[pid], want, atol=1e-5)
        else:
            assert np.allclose(seen[pid], UPDATES[pid], atol=1e-6)  # honest replies untouched
    assert w.notes.round["crafted_replies"] == 2


def test_wrapper_respects_plan_and_param_mask():
    w, spy = wrapper("ipm", AttackPlan(burn_in=2, honest_after=False), eps=1.0)
    w.aggregate_train(2, replies())  # burn-in: nothing crafted
    assert all(np.allclose(flat(m.content["arrays"]) - GLOBAL, UPDATES[i], atol=1e-6) for i, m in enumerate(spy.seen))
    mask = torch.ones(16, dtype=torch.bool)
    mask[12:] = False  # "b" as if it were a buffer: keeps the reply's own values
    w, spy = wrapper("ipm", AttackPlan(burn_in=2, honest_after=False), eps=1.0, param_mask=mask)
    w.aggregate_train(3, replies())
    got = flat(spy.seen[1].content["arrays"]) - GLOBAL
    assert np.allclose(got[:12], -UPDATES[[0, 2, 4]].mean(0)[:12], atol=1e-6)
    assert np.allclose(got[12:], UPDATES[1][12:], atol=1e-6)


def test_factory_places_attack_inside_validator_before_defense():
    cfg = compose(["attack=alie", "num_clients=5", "num_malicious=2", "defense=median"])
    s = build_strategy(cfg, 5, RoundNotes())
    assert isinstance(s, ReplyValidator) and isinstance(s.inner, OmniscientAttack)
    assert type(s.inner.inner).__name__ == "FedMedian"
    assert s.inner.malicious == set(malicious_ids(5, 2, 0))
    assert not isinstance(build_strategy(compose(["defense=median"]), 5, RoundNotes()).inner, OmniscientAttack)
