"""The attack registries (a leaf module: the attack modules register into these, and the
package `fedguard.attacks` re-exports them once every attack module is imported).

- `ATTACKS`: `attack.name` -> the client-side craft of that attack, a function
  `craft(r: AttackRound) -> Crafted` (`fedguard.attacks.craft`); "none" -> None.
- `STREAM_POISONS`: `stream_poison.name` -> the poison of the selected samples, a function
  `poison(cfg, x, y, num_classes) -> (x', y')` (`fedguard.attacks.stream_poison`); "none" -> None.
"""

from __future__ import annotations

from fedguard.registry import Registry

ATTACKS = Registry("attack")
STREAM_POISONS = Registry("stream poison")
