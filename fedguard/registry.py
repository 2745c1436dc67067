"""Name -> implementation registries, one per kind (attacks, defenses, sanitisers, models, datasets).

A module registers what it implements where it implements it:

    ATTACKS = Registry("attack")

    @ATTACKS.register("sign_flip", "reply global - honest update (parameters only)")
    def sign_flip(...): ...

    @ATTACKS.register("scaling", "reply global + scale * honest update", knobs=("scale",))
    def scaling(...): ...

`knobs` names the keys of the group's config (`attack.scale`) that this entry reads and
others do not; a key no entry names is read by every entry of the kind (but "none").

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
    # the keys of its config group this entry reads beyond those every entry of the kind reads
    # (relative to the group: "norm_bound" for `attack.norm_bound`; a sub-config's name stands
    # for all its keys); `fedguard list` shows them, and a knob set for another entry warns
    knobs: tuple[str, ...] = ()


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, summary: str = "", knobs: tuple[str, ...] = ()) -> Callable[[Any], Any]:
        """Decorator: register the decorated class or function under `name`."""

        def add(target: Any) -> Any:
            self.add(name, target, summary, knobs)
            return target

        return add

    def add(self, name: str, target: Any, summary: str = "", knobs: tuple[str, ...] = ()) -> None:
        if name in self._entries and self._entries[name].target is not target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, summary, tuple(knobs))

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
