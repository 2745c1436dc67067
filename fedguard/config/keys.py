"""The keys of a composed config against the schema, and the keys a command line sets.

- `check_known_keys(cfg)`: a key the schema does not know (Hydra lets `+num_client=5` add one
  even to a structured config) or a schema key removed (`~rounds`) is a `ConfigError` naming
  the key (part of `validate`).
- `inactive_knob_warnings(cfg, overrides)`: the overrides that set a knob the selected entry
  of its group does not read (`defense.inner=median` under `defense=fedavg`); Hydra's grammar
  cannot refuse them, so they are warned about. Only the overrides the user typed count:
  a value equal to the schema default may still have been set on purpose.
- `composition_error(exc)`: Hydra's composition errors as one line.
"""

from __future__ import annotations

import difflib
import re

from omegaconf import DictConfig, OmegaConf

from fedguard.config.errors import ConfigError
from fedguard.config.schema import FedGuardConfig


def _schema_tree() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(FedGuardConfig), resolve=False)


def unknown_key_message(key: str, how: str = "") -> str:
    """'config error: unknown key KEY (did you mean ...?)' for the dotted `key`."""
    *parents, leaf = key.split(".")
    node: object = _schema_tree()
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    siblings = list(node) if isinstance(node, dict) else []
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    hint = (f"; did you mean {' or '.join('.'.join([*parents, c]) for c in close)}?" if close
            else "; see `fedguard run --help` (every key) or `fedguard list`")
    return f"config error: unknown key {key!r}{how}: the schema (fedguard/config/) has no such key{hint}"


def check_known_keys(cfg: DictConfig) -> None:
    """Raise `ConfigError` at the first key of `cfg` the schema does not have (a `+key=` override)
    or the first schema key `cfg` lacks (a `~key` override)."""
    have = OmegaConf.to_container(cfg, resolve=False)

    def walk(got: dict, want: dict, prefix: str) -> None:
        for key in got:
            dotted = f"{prefix}{key}"
            if key not in want:
                raise ConfigError(unknown_key_message(dotted, " (added with +?)"))
            if isinstance(want[key], dict):
                if not isinstance(got[key], dict):
                    raise ConfigError(f"config error: {dotted}={got[key]!r} is invalid; allowed: a group of keys "
                                      f"({', '.join(want[key])})")
                walk(got[key], want[key], dotted + ".")
        for key in want:
            if key not in got:
                raise ConfigError(f"config error: key {prefix}{key!r} was removed (~{prefix}{key}?); every key of "
                                  "the schema needs a value")

    walk(have, _schema_tree(), "")


def parse_overrides(overrides: list[str]):
    """Hydra's parse of the override strings (raises Hydra's OverrideParseException)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def inactive_knob_warnings(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """One line per override in `overrides` that sets a knob of a group (attack, defense,
    sanitizer, stream_poison, dataset, model, partitioner) that the group's selected entry in
    `cfg` does not read."""
    from fedguard.config.describe import BY_GROUP, reads, readers

    warnings = []
    for override in parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")]):
        if override.is_delete():
            continue
        key = override.key_or_group
        group, _, rest = key.partition(".")
        kind = BY_GROUP.get(group)
        if kind is None or not rest or rest == "name" or group not in cfg:
            continue
        active = cfg[group].name
        if active not in kind.registry or reads(kind, active, key) is not False:
            continue
        inner = cfg[group].get("inner")  # a wrapper defense: its inner strategy reads its own knobs
        if inner in kind.registry and reads(kind, inner, key):
            continue
        who = readers(kind, key)
        by = (f"read by {group}={'|'.join(who)}" if who else f"read by every {group} but none")
        warnings.append(f"warning: {override.input_line} has no effect: {group}={active} does not read {key} ({by})")
    return warnings


def composition_error(exc: BaseException) -> str:
    """A Hydra composition error (an unknown key, a value of the wrong type, no such option, an
    override Hydra cannot parse) as one line."""
    text = str(exc).strip()
    cause = str(exc.__cause__).strip() if exc.__cause__ is not None else ""
    first = text.splitlines()[0] if text else type(exc).__name__
    if first.startswith("Could not override '") and "not in" in cause:
        return unknown_key_message(first.split("'")[1])
    if "Available options in" in text:  # no such option of a group
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options in"))
        options = [line.strip() for line in lines[start + 1:] if line.startswith("\t")]
        if "Config search path:" in lines:
            options = [line.strip() for line in lines[start + 1:lines.index("Config search path:")] if line.strip()]
        what = re.sub(r"^In '[^']*': ", "", first)
        return f"config error: {what}; available: {', '.join(options)}"
    if "override_grammar" in text or type(exc).__name__ == "OverrideParseException":
        return f"config error: cannot parse the override: {first} (see Hydra's override grammar)"
    detail = cause.splitlines()[0] if cause else ""
    if first.startswith("Could not append to config"):
        detail = " ".join(text.splitlines()[1:])
    return f"config error: {first}" + (f": {detail}" if detail else "")
