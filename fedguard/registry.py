"""Name -> implementation registries, one per kind (attacks, defenses, sanitisers, models, datasets).

A module registers what it implements where it implements it:

    ATTACKS = Registry("attack")

    @ATTACKS.register("sign_flip", "reply global - honest update (parameters only)")
    def sign_flip(...): ...

and everything that needs the names (the config validation, the factories, `fedguard list`)
asks the registry instead of keeping its own tuple. A registry is filled when the package
that owns it is imported (its `__init__` imports every implementing module), so
`ATTACKS.names()` is complete as soon as `fedguard.attacks` is importable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # the class or function the name stands for
    summary: str  # one line, for `fedguard list` and error messages


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str = "") -> Callable[[Any], Any]:
        """Decorator: register the decorated class or function under `name`."""

        def add(target: Any) -> Any:
            self.add(name, target, summary)
            return target

        return add

    def add(self, name: str, target: Any, summary: str = "") -> None:
        if name in self._entries and self._entries[name].target is not target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, summary)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).target

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries.values())
