"""`evaluate_every`: which rounds evaluate, and records with unevaluated rounds (accuracy null)."""

from __future__ import annotations

import json

import pytest

from fedguard.config import ConfigError, compose, validate
from fedguard.recorder import Recorder
from fedguard.server_app import is_evaluated


def evaluated(*overrides: str) -> list[int]:
    cfg = compose(list(overrides))
    validate(cfg)
    return [r for r in range(1, cfg.rounds + 1) if is_evaluated(cfg, r)]


def test_every_round_by_default():
    assert evaluated("rounds=5") == [1, 2, 3, 4, 5]


def test_every_k_keeps_first_last_and_the_trigger_rounds():
    assert evaluated("rounds=11", "evaluate_every=5") == [1, 5, 10, 11]
    assert evaluated("rounds=12", "evaluate_every=5", "attack=accumulative", "num_malicious=1",
                     "attack.trigger_round=8", "attack.accumulate_rounds=3") == [1, 5, 7, 8, 10, 12]
    # attacks without a trigger: only the schedule
    assert evaluated("rounds=7", "evaluate_every=3", "attack=sign_flip", "num_malicious=1") == [1, 3, 6, 7]


def test_evaluate_every_below_one_is_rejected():
    with pytest.raises(ConfigError, match="evaluate_every=0"):
        validate(compose(["evaluate_every=0"]))


def test_records_with_unevaluated_rounds(tmp_path):
    """Null accuracies are skipped by final/best accuracy and the plot; the trigger drop uses
    the (always evaluated) rounds before and at the trigger."""
    rec = Recorder(tmp_path, compose())
    for rnd, acc, phase in ((1, 0.5, "burn_in"), (2, None, "burn_in"), (3, 0.9, "accumulate"),
                            (4, 0.4, "trigger"), (5, None, "after"), (6, 0.7, "after")):
        rec.record_round({"round": rnd, "accuracy": acc, "phase": phase}, [])
    summary = rec.finish()
    assert summary["final_accuracy"] == 0.7 and summary["best_accuracy"] == 0.9
    assert summary["trigger_drop"] == pytest.approx(0.5)
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [0.5, None, 0.9, 0.4, None, 0.7]
