"""The factory builds every defense this module names from the `defense.*` knobs it reads (the
knobs spelled out here as the config schema will hold them)."""

from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch import nn

from strategies.base import RoundNotes
from strategies.cclip import CenteredClipping
from strategies.dnc import DnC
from strategies.factory import DEFENSES, BuildContext, build_aggregator
from strategies.flame import FLAME
from strategies.fldetector import FLDetector
from strategies.fltrust import FLTrust
from strategies.geomed import GeometricMedian

KNOBS = {"inner": "fedavg", "assumed_malicious": None, "multikrum_select": None, "trim_beta": 0.2,
         "cclip_tau": None, "cclip_iters": 1, "cclip_init": "previous",
         "geomed_nu": 1e-6, "geomed_iters": 100, "geomed_tol": 1e-6,
         "dnc_iters": 5, "dnc_subsample": 10000, "dnc_filter_frac": 1.0,
         "flame_noise": 0.001,
         "fldetector_window": 10, "fldetector_start": 3}


def config(name: str):
    return OmegaConf.create({"num_malicious": 2, "seed": 0, "lr": 0.05, "momentum": 0.9, "local_steps": 2,
                             "batch_size": 8, "defense": {"name": name, **KNOBS}})


@pytest.mark.parametrize("name, kind", [("cclip", CenteredClipping), ("geomed", GeometricMedian),
                                        ("fltrust", FLTrust), ("dnc", DnC), ("flame", FLAME),
                                        ("fldetector", FLDetector)])
def test_each_new_defense_is_built_from_its_knobs(name, kind):
    notes = RoundNotes()
    data = SimpleNamespace(val=SimpleNamespace(x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64)))
    strategy = DEFENSES.get(name).build(BuildContext(config(name), 10, notes, nn.Linear(4, 2), data))
    assert isinstance(strategy, kind) and strategy.notes is notes
    assert DEFENSES.get(name).wraps == (name in ("dnc", "flame", "fldetector"))


def test_fltrust_needs_the_server_data_and_can_be_an_inner():
    with pytest.raises(ValueError, match="the run's model and data"):
        build_aggregator("fltrust", config("fltrust"), 10)  # no model, no data
    cfg = config("clipping")
    cfg.defense.inner, cfg.defense.clip_norm, cfg.defense.clip_multiplier = "fltrust", None, 1.0
    data = SimpleNamespace(val=SimpleNamespace(x=np.zeros((8, 4), np.float32), y=np.zeros(8, np.int64)))
    strategy = DEFENSES.get("clipping").build(BuildContext(cfg, 10, RoundNotes(), nn.Linear(4, 2), data))
    assert isinstance(strategy.inner, FLTrust)


def test_trim_beta_null_cuts_exactly_the_assumed_malicious():
    from flwr.serverapp.strategy import FedTrimmedAvg

    from fedguard.config import ConfigError, compose, validate
    from strategies.factory import trim_beta

    cfg = config("trimmed_mean")
    assert build_aggregator("trimmed_mean", cfg, 10).beta == 0.2  # the default is a fixed fraction
    for n in range(3, 61):
        for f in range((n - 1) // 2 + 1):
            cfg.num_malicious, cfg.defense.trim_beta = f, None
            beta = trim_beta(cfg, n)
            assert 0 <= beta < 0.5 and int(beta * n) == f  # Flower's trim_mean cuts int(beta * n) per end
    cfg.defense.trim_beta, cfg.num_malicious, cfg.defense.assumed_malicious = None, 1, 3
    strategy = build_aggregator("trimmed_mean", cfg, 20)
    assert isinstance(strategy, FedTrimmedAvg) and int(strategy.beta * 20) == 3  # assumed_malicious wins
    validate(compose(["defense=trimmed_mean", "defense.trim_beta=null", "num_clients=10", "num_malicious=4",
                      "attack=sign_flip"]))
    with pytest.raises(ConfigError, match=r"defense\.trim_beta"):
        validate(compose(["defense=trimmed_mean", "defense.trim_beta=null", "num_clients=10", "num_malicious=5",
                          "attack=sign_flip"]))
