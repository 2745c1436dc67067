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


def test_fltrust_is_not_an_inner_strategy():
    with pytest.raises(ValueError, match="not a defense.inner"):
        build_aggregator("fltrust", config("fltrust"), 10)
