"""The flat form of the config that Flower carries: `context.run_config` holds scalars only, so
both launchers pass `flatten(cfg)` (dotted keys; None written as "" because run_config has no
null, and `flwr run --run-config` can only override keys that exist), and the apps rebuild the
typed config with `from_flat` ("" back to None). pyproject's `[tool.flwr.app.config]` is the
flat default (`flwr_app_config_toml`)."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedguard.config.schema import FedGuardConfig


def flatten(cfg: DictConfig | dict) -> dict[str, bool | int | float | str]:
    """Nested config -> {dotted.key: scalar}; None becomes "" (run_config has no null)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, bool | int | float | str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            else:
                flat[dotted] = "" if value is None else value

    walk(container, "")
    return flat


def from_flat(flat: dict[str, Any]) -> DictConfig:
    """Rebuild the typed config from `flatten`'s output (e.g. `context.run_config`)."""
    cfg = OmegaConf.structured(FedGuardConfig)
    for key, value in flat.items():
        OmegaConf.update(cfg, key, None if value == "" else value, merge=False)
    return cfg


def flwr_app_config_toml(cfg: DictConfig) -> str:
    """The `[tool.flwr.app.config]` table holding `flatten(cfg)` (for pyproject.toml)."""

    def value(v):
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    flat = flatten(cfg)
    return "[tool.flwr.app.config]\n" + "".join(f"{json.dumps(k)} = {value(v)}\n" for k, v in sorted(flat.items()))
