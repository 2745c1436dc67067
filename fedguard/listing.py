"""`fedguard list [KIND [NAME]]`: what the config can select, read from the registries, and
the knobs of one entry with their defaults and descriptions, read from the schema
(`fedguard.config.describe`)."""

from __future__ import annotations

import sys
from typing import Any

USAGE = """usage: fedguard list [KIND [NAME]]

  fedguard list                   every kind, one line per entry (name and summary)
  fedguard list KIND              one kind: attacks, defenses, sanitizers, stream_poisons,
                                  datasets, models, partitioners (singular accepted)
  fedguard list KIND NAME         one entry: its summary, and its knobs (KEY, default, what it does);
                                  e.g. fedguard list attack accumulative
"""


def show(value: Any) -> str:
    """A value as an override would spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "???":
        return "??? (required)"
    return str(value)


def _error(message: str) -> None:
    print(f"fedguard list: {message}", file=sys.stderr)
    raise SystemExit(2)


def kind_lines(kind) -> list[str]:
    entries = kind.registry.entries()
    width = max(len(e.name) for e in entries) + 2
    return [f"{kind.name} ({kind.group}=NAME)"] + [f"  {e.name:<{width}}{e.summary}" for e in entries]


def _knob_lines(knobs, values: dict[str, Any]) -> list[str]:
    rows = []
    for k in knobs:
        value = values.get(k.key, k.default)
        default = show(value) + (f" (schema default {show(k.default)})" if k.key in values and value != k.default
                                 else "")
        rows.append((k.key, default, k.description or "-"))
    key_w = max(len(r[0]) for r in rows) + 2
    def_w = min(max(len(r[1]) for r in rows), 36) + 2
    return [f"  {key:<{key_w}}{default:<{def_w}}{text}" for key, default, text in rows]


def entry_lines(kind, name: str) -> list[str]:
    from fedguard.config.describe import entry_knobs, option_values, sub_config_summary

    entry = kind.registry.entry(name)
    own, shared = entry_knobs(kind, name)
    option = f"{kind.group}={name}"
    values = option_values(kind, name)
    lines = [f"{option}: {entry.summary}", ""]
    subs = sorted({k.relative(kind.group).rsplit(".", 1)[0] for k in own if "." in k.relative(kind.group)})
    if own:
        lines.append(f"its knobs ({kind.group}.KEY=VALUE; the defaults {option} brings):")
        lines += _knob_lines(own, values)
        for sub in subs:
            summary = sub_config_summary(kind, sub)
            if summary:
                lines.append(f"  ({kind.group}.{sub}: {summary})")
    else:
        lines.append(f"{name} reads no knob of its own")
    if shared:
        aside = f" ({kind.group}=none aside)" if "none" in kind.registry else ""
        lines += ["", f"knobs every {kind.group} reads{aside}:"]
        lines += _knob_lines(shared, values)
    return lines


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    if len(argv) > 2:
        _error(f"too many arguments {argv[2:]}; usage: fedguard list [KIND [NAME]]")
    from fedguard.config.describe import KINDS, kind_named

    if not argv:
        blocks = ["\n".join(kind_lines(kind)) for kind in KINDS.values()]
        print("\n\n".join(blocks))
        print("\nfedguard list KIND NAME shows an entry's knobs, e.g. fedguard list attack accumulative")
        return
    try:
        kind = kind_named(argv[0])
    except KeyError:
        _error(f"unknown kind {argv[0]!r}; kinds: {', '.join(KINDS)}")
    if len(argv) == 1:
        print("\n".join(kind_lines(kind)))
        return
    if argv[1] not in kind.registry:
        _error(f"no {kind.group} named {argv[1]!r}; {kind.name}: {', '.join(kind.registry.names())}")
    print("\n".join(entry_lines(kind, argv[1])))
