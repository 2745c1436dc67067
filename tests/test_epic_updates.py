"""The server-side EPIC adaptation over client updates (strategies/epic_updates.py)."""

import torch

from fedguard.config import ConfigError, compose, validate
from strategies.epic_updates import isolated_updates


def cluster_of(center, n, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return center + scale * torch.randn(n, center.numel(), generator=g)


def test_a_lone_boosted_update_is_dropped_and_the_crowd_kept():
    honest = cluster_of(torch.zeros(50), 9, 0.1, 0)
    boosted = torch.full((1, 50), 5.0)
    dropped, sizes = isolated_updates(torch.cat([honest, boosted]), fraction=0.1, max_cluster=1)
    assert dropped.tolist() == [False] * 9 + [True]
    assert sizes[-1] == 1 and int(sizes[:9].min()) >= 2


def test_colluding_identical_updates_form_a_cluster_and_survive():
    """The documented limit: four identical attackers are not isolated."""
    honest = cluster_of(torch.zeros(50), 8, 0.1, 1)
    colluders = torch.full((4, 50), 5.0)
    dropped, sizes = isolated_updates(torch.cat([honest, colluders]), fraction=0.3, max_cluster=1)
    assert not dropped[8:].any()
    assert sizes[8:].tolist() == [4, 4, 4, 4]


def test_never_drops_every_update_and_handles_tiny_rounds():
    spread = torch.eye(2) * 10  # two far updates, two medoids: both singletons
    dropped, _ = isolated_updates(spread, fraction=1.0, max_cluster=1)
    assert not dropped.any()
    dropped, sizes = isolated_updates(torch.zeros(0, 4), 0.3, 1)
    assert len(dropped) == 0 and len(sizes) == 0


def test_config_names_bad_values():
    cfg = compose(["defense=epic_updates"])
    validate(cfg)
    assert cfg.defense.inner == "fedavg"
    for override, key in (("defense.epic_fraction=0", "defense.epic_fraction"),
                          ("defense.epic_max_cluster=-1", "defense.epic_max_cluster")):
        try:
            validate(compose(["defense=epic_updates", override]))
        except ConfigError as err:
            assert key in str(err)
        else:
            raise AssertionError(f"{override} was accepted")
