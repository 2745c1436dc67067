"""Poisons injected into the honest clients' streams (fedguard/attacks/stream_poison.py), their ASR,
config validation and the recorder's sample-level sanitiser metrics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fedguard.attacks.backdoor import blend_pattern
from fedguard.attacks.label_flip import flip_label
from fedguard.attacks.plan import malicious_set
from fedguard.attacks.stream_poison import poison_stream_batch, poisoned_count, poisoned_subset
from fedguard.config import ConfigError, compose, validate
from fedguard.data.partition import partition_from_config
from fedguard.data.sources import splits_from_config
from fedguard.evaluation import round_asr
from fedguard.recorder import Recorder

SMALL = ["num_clients=4"]


def setup(*overrides, partition_id=0):
    cfg = compose([*SMALL, *overrides])
    validate(cfg)
    data = splits_from_config(cfg)
    part = partition_from_config(cfg, data.pool.y, partition_id)
    return cfg, data, part


def draw(data, idx):
    return torch.from_numpy(data.pool.x[idx]), torch.from_numpy(data.pool.y[idx])


# ------------------------------------------------------------------------------- the subset

def test_poisoned_subset_is_deterministic_of_the_right_size_and_inside_the_partition():
    part = np.arange(1000, 1337)
    sub = poisoned_subset(part, seed=3, partition_id=2, rate=0.1)
    assert len(sub) == round(0.1 * len(part)) == poisoned_count(len(part), 0.1) == 34
    assert np.array_equal(sub, poisoned_subset(part.copy(), 3, 2, 0.1))  # same seed/partition -> same
    assert np.isin(sub, part).all() and len(np.unique(sub)) == len(sub)
    assert not np.array_equal(sub, poisoned_subset(part, 4, 2, 0.1))  # seed matters
    assert not np.array_equal(sub, poisoned_subset(part, 3, 1, 0.1))  # partition matters
    assert len(poisoned_subset(part, 3, 2, 0.0)) == 0
    assert len(poisoned_subset(part, 3, 2, 1.0)) == len(part)


def test_a_sample_is_poisoned_whenever_drawn_whatever_the_batch():
    cfg, data, part = setup("stream_poison=badnets", "stream_poison.rate=0.2")
    sub = poisoned_subset(part, cfg.seed, 0, 0.2)
    _, _, whole = poison_stream_batch(cfg, 0, part, *draw(data, part))
    assert int(whole.sum()) == len(sub) == round(0.2 * len(part))
    assert np.array_equal(part[whole.numpy()], np.sort(part[np.isin(part, sub)]))
    rng = np.random.default_rng(0)
    for _ in range(3):  # other batch compositions (other epochs' orders): the same samples
        idx = rng.permutation(part)[:40]
        _, _, mask = poison_stream_batch(cfg, 0, idx, *draw(data, idx))
        assert np.array_equal(mask.numpy(), np.isin(idx, sub))


# ----------------------------------------------------------------------------- the poisons

def test_badnets_stamps_and_relabels_only_the_poisoned_samples():
    cfg, data, part = setup("stream_poison=badnets", "stream_poison.rate=0.3", "stream_poison.target_label=7",
                            "stream_poison.patch_size=2")
    idx = part[:64]
    x, y = draw(data, idx)
    x_in, y_in = x.clone(), y.clone()
    xp, yp, mask = poison_stream_batch(cfg, 0, idx, x, y)
    assert mask.any() and not mask.all()
    assert torch.equal(x, x_in) and torch.equal(y, y_in)  # inputs untouched
    assert torch.equal(xp[~mask], x[~mask]) and torch.equal(yp[~mask], y[~mask])
    assert (yp[mask] == 7).all()
    assert torch.equal(xp[mask][..., -2:, -2:], torch.ones_like(xp[mask][..., -2:, -2:]))
    assert torch.equal(xp[mask][..., :-2, :], x[mask][..., :-2, :])


def test_blend_blends_the_seeded_pattern_into_the_poisoned_samples_only():
    cfg, data, part = setup("stream_poison=blend", "stream_poison.rate=0.3", "stream_poison.blend_alpha=0.25")
    idx = part[:64]
    x, y = draw(data, idx)
    xp, yp, mask = poison_stream_batch(cfg, 0, idx, x, y)
    pattern = blend_pattern(tuple(x.shape[1:]), cfg.seed)
    assert torch.allclose(xp[mask], 0.75 * x[mask] + 0.25 * pattern, atol=1e-6)
    assert torch.equal(xp[~mask], x[~mask]) and torch.equal(yp[~mask], y[~mask])
    assert (yp[mask] == 0).all()


def test_label_flip_flips_c_minus_1_minus_y_as_the_label_flip_attack():
    cfg, data, part = setup("stream_poison=label_flip", "stream_poison.rate=0.5")
    idx = part[:64]
    x, y = draw(data, idx)
    xp, yp, mask = poison_stream_batch(cfg, 0, idx, x, y)
    assert torch.equal(xp, x)  # images untouched
    assert torch.equal(yp[mask], 9 - y[mask]) and torch.equal(yp[~mask], y[~mask])
    _, y5, mask5 = poison_stream_batch(cfg, 0, idx, x, y % 5, partition=part, num_classes=5)
    assert torch.equal(mask5, mask) and torch.equal(y5[mask], 4 - y[mask] % 5)
    assert torch.equal(yp[mask], flip_label(y[mask], 10))  # the rule of attack=label_flip


def test_no_poison_without_stream_poison_or_on_malicious_partitions():
    cfg, data, part = setup()
    x, y = draw(data, part[:32])
    xp, yp, mask = poison_stream_batch(cfg, 0, part[:32], x, y)
    assert xp is x and yp is y and not mask.any()
    cfg = compose([*SMALL, "stream_poison=badnets", "stream_poison.rate=1.0", "attack=label_flip", "num_malicious=1"])
    (bad,) = malicious_set(cfg)
    data = splits_from_config(cfg)
    bad_part = partition_from_config(cfg, data.pool.y, bad)
    assert not poison_stream_batch(cfg, bad, bad_part[:32], *draw(data, bad_part[:32]))[2].any()
    good = (bad + 1) % 4
    good_part = partition_from_config(cfg, data.pool.y, good)
    assert poison_stream_batch(cfg, good, good_part[:32], *draw(data, good_part[:32]))[2].all()


# ------------------------------------------------------------------------------ ASR, config

def test_round_asr_reports_the_stream_backdoor():
    torch.manual_seed(0)
    cfg, data, _ = setup("stream_poison=badnets", "stream_poison.rate=0.1")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    out = round_asr(cfg, model, data.test)
    assert set(out) == {"asr"} and 0.0 <= out["asr"] <= 1.0
    both = round_asr(compose([*SMALL, "stream_poison=blend", "attack=backdoor", "num_malicious=1"]), model, data.test)
    assert set(both) == {"asr", "stream_asr"}
    assert round_asr(compose([*SMALL, "stream_poison=label_flip"]), model, data.test) == {}


@pytest.mark.parametrize("override", ["stream_poison=nope", "stream_poison.rate=1.5", "stream_poison.rate=-0.1",
                                      "stream_poison.target_label=10", "stream_poison.patch_size=0",
                                      "stream_poison.blend_alpha=0", "sanitizer=dsc sanitizer.dsc.step=0",
                                      "sanitizer=dsc sanitizer.dsc.steps=-1", "sanitizer=dsc sanitizer.dsc.eps=-0.1",
                                      "sanitizer=dsc sanitizer.dsc.drop_above=0",
                                      "sanitizer=dsc sanitizer.dsc.history_lag=-1"])
def test_invalid_stream_poison_and_sanitizer_values_fail_naming_the_key(override):
    overrides = override.split()
    key = overrides[-1].split("=")[0]
    if override == "stream_poison=nope":  # not a config group option: compose the name over none
        cfg = compose(SMALL)
        cfg.stream_poison.name = "nope"
    else:
        cfg = compose([*SMALL, *overrides])
    with pytest.raises(ConfigError, match=re.escape(f"config error: {key}=")):
        validate(cfg)


# ----------------------------------------------------------------------------- the recorder

def test_recorder_sanitizer_precision_recall_from_client_counts(tmp_path):
    cfg = compose([*SMALL, "stream_poison=badnets", "sanitizer=dsc"])
    rec = Recorder(tmp_path, cfg)
    row = lambda p, pois, flag, fp, **kw: {"partition_id": p, "stream_poisoned": pois, "sanitizer_flagged": flag,  # noqa: E731
                                           "sanitizer_flagged_poisoned": fp, "sanitizer_corrected": 1,
                                           "sanitizer_steps": 3, "sanitizer_dropped": 0, "sanitizer_md": 0.1,
                                           "sanitizer_s": 0.01, **kw}
    rec.record_round({"round": 1, "accuracy": 0.5, "phase": "clean"},
                     [row(0, 4, 32, 4), row(1, 2, 0, 0), row(2, 9, 9, 9, rejected="metrics: x")])
    rec.record_round({"round": 2, "accuracy": 0.6, "phase": "clean"}, [row(0, 4, 8, 2)])
    summary = rec.finish()
    san = summary["sanitizer"]
    assert san["flagged"] == 40 and san["poisoned"] == 10 and san["flagged_poisoned"] == 6  # rejected row ignored
    assert san["precision"] == pytest.approx(6 / 40) and san["recall"] == pytest.approx(6 / 10)
    assert summary["timing"]["sanitizer_s"] == pytest.approx(0.01)
    rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["stream_poisoned"] == 6 and rounds[0]["sanitizer_flagged"] == 32


def test_recorder_drops_sanitizer_fields_in_runs_without_them(tmp_path):
    rec = Recorder(tmp_path, compose(SMALL))
    rec.record_round({"round": 1, "accuracy": 0.5, "phase": "clean"},
                     [{"partition_id": 0, "stream_poisoned": 0, "sanitizer_flagged": 0}])
    summary = rec.finish()
    assert summary["sanitizer"] is None
    client = json.loads((tmp_path / "clients.jsonl").read_text().splitlines()[0])
    assert "stream_poisoned" not in client and "sanitizer_flagged" not in client


# ------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_badnets_stream_with_dsc_records_asr_and_sanitizer_metrics(tmp_path):
    from fedguard import launch

    run = tmp_path / "run"
    proc, summary = launch.run(["num_clients=4", "rounds=3", "local_steps=5", "progress=false",
                                "backend.init_args.num_cpus=2", "stream_poison=badnets", "stream_poison.rate=0.1",
                                "sanitizer=dsc"], run, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    san = summary["sanitizer"]
    assert isinstance(san, dict) and {"precision", "recall", "flagged"} <= set(san)
    # 4 honest clients x 3 rounds x 5 batches x 32 samples, 10% of each partition poisoned
    assert 0 < san["poisoned"] < 4 * 3 * 5 * 32 * 0.3
    assert 0 <= san["flagged_poisoned"] <= min(san["flagged"], san["poisoned"])
    assert summary["timing"]["sanitizer_s"] is not None
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["asr"] is not None and 0.0 <= r["asr"] <= 1.0 for r in rounds)
    assert summary["attack_success_rate"] == rounds[-1]["asr"]
    assert all(r["sanitizer_corrected"] == 0 for r in rounds[:1])  # round 1: no historical model yet
    clients = [json.loads(line) for line in (run / "clients.jsonl").read_text().splitlines()]
    assert len(clients) == 12 and all(c["rejected"] is None for c in clients)
    assert all({"stream_poisoned", "sanitizer_flagged", "sanitizer_steps", "sanitizer_md"} <= set(c) for c in clients)
    assert all(c["sanitizer_md"] > 0 for c in clients if c["round"] > 1)  # history kept in Context.state
