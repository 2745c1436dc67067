"""How a check refuses a value: `ConfigError`, whose message names the key, the value and what
is allowed (`fail`), and `check_name`, the check of a name against its registry."""

from __future__ import annotations

from typing import Any, NoReturn

from fedguard.registry import Registry


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"config error: {key}={value!r} is invalid; allowed: {allowed}")


def check_name(key: str, name: str, registry: Registry) -> None:
    """`name` must be registered in `registry` (the names of the implementations of `key`)."""
    if name not in registry:
        fail(key, name, ", ".join(registry.names()))
