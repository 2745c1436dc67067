"""The typed config of a run as the apps see it: rebuilt from `context.run_config`."""

from __future__ import annotations

from functools import lru_cache

from omegaconf import DictConfig

from fedguard.config import from_flat


@lru_cache(maxsize=8)
def _cached(items: tuple) -> DictConfig:
    return from_flat(dict(items))


def config_from_context(context) -> DictConfig:
    if not context.run_config:
        raise RuntimeError("context.run_config is empty: launch with `fedguard run` or `flwr run .` "
                           "(both pass the flattened fedguard config)")
    return _cached(tuple(sorted(context.run_config.items())))
