"""The knobs of the config, described: every key of a group with its default and a line of
description, and which entry of a registry reads which key. `fedguard list` prints these, and
the key checks (`fedguard.config.keys`) use them to warn about a knob its entry does not read.

Nothing here is a copy kept by hand:

- the keys and their defaults are the schema's dataclass fields (`fedguard/config/<group>.py`);
- a key's description is its field's `# comment` there, read from the source: the comment at
  the end of the field's line, else the comment lines right above it;
- an entry's own knobs are the `knobs=` of its registration (`fedguard.registry.Entry`) and
  the sub-config named after it (`sanitizer.dsc.*` for `sanitizer=dsc`); a key of the group
  that no entry claims is read by every entry of the kind (bar `none`), e.g. the attack
  schedule (`attack.burn_in`, ...);
- the default an entry's option brings (`attack=accumulative` sets `attack.trigger_round=20`)
  is read by composing `configs/` with that option.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fedguard.attacks import ATTACKS, STREAM_POISONS
from fedguard.config.attack import AttackConfig
from fedguard.config.dataset import DatasetConfig
from fedguard.config.defense import DefenseConfig
from fedguard.config.model import ModelConfig
from fedguard.config.partitioner import PartitionerConfig
from fedguard.config.sanitizer import SanitizerConfig
from fedguard.config.stream_poison import StreamPoisonConfig
from fedguard.data.partition import PARTITIONERS
from fedguard.data.sources import DATASETS
from fedguard.models import MODELS
from fedguard.registry import Entry, Registry
from fedguard.sanitizers import SANITIZERS
from strategies import DEFENSES


@dataclass(frozen=True)
class Kind:
    """A kind of `fedguard list`: the config group that selects one of its entries by name."""
    name: str  # plural, as `fedguard list` spells it: "attacks"
    group: str  # the config group: "attack" (`attack=NAME`, its knobs `attack.KEY`)
    schema: type  # the group's dataclass
    registry: Registry


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("attacks", "attack", AttackConfig, ATTACKS),
    Kind("defenses", "defense", DefenseConfig, DEFENSES),
    Kind("sanitizers", "sanitizer", SanitizerConfig, SANITIZERS),
    Kind("stream_poisons", "stream_poison", StreamPoisonConfig, STREAM_POISONS),
    Kind("datasets", "dataset", DatasetConfig, DATASETS),
    Kind("models", "model", ModelConfig, MODELS),
    Kind("partitioners", "partitioner", PartitionerConfig, PARTITIONERS),
)}
BY_GROUP: dict[str, Kind] = {k.group: k for k in KINDS.values()}


@dataclass(frozen=True)
class Knob:
    key: str  # the full dotted key: "attack.norm_bound"
    default: Any  # the schema's default
    description: str  # one line, from the field's comment ("" when it has none)

    def relative(self, group: str) -> str:
        """The key inside its group: "norm_bound", "history.size"."""
        return self.key[len(group) + 1:]


# --------------------------------------------------------------------------- descriptions

@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} for the dataclass `cls`, read from its source: the comment at
    the end of the field's line(s), else the block of comment lines right above the field
    (joined into one line). Fields without either are left out."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line number -> comment text
    alone: set[int] = set()  # lines holding only a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            comments[row] = tok.string.lstrip("#").strip()
            if not tok.line[:tok.start[1]].strip():
                alone.add(row)
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = [comments[r] for r in range(node.lineno, node.end_lineno + 1) if r in comments and r not in alone]
        if not text:
            row = node.lineno - 1
            while row in alone:
                text.insert(0, comments[row])
                row -= 1
        if text:
            out[node.target.id] = " ".join(text)
    return out


def class_summary(cls: type) -> str:
    """The first paragraph of `cls`'s docstring, as one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def schema_knobs(cls: type, prefix: str) -> list[Knob]:
    """Every leaf key of the dataclass `cls` under `prefix` (nested dataclasses walked), in
    field order, with its default and description."""
    instance, comments = cls(), field_comments(cls)
    knobs = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            knobs.extend(schema_knobs(type(value), f"{prefix}.{f.name}"))
        else:
            knobs.append(Knob(f"{prefix}.{f.name}", value, comments.get(f.name, "")))
    return knobs


def group_knobs(kind: Kind) -> list[Knob]:
    """Every key of the kind's group but `name` (the entry itself)."""
    return [k for k in schema_knobs(kind.schema, kind.group) if k.key != f"{kind.group}.name"]


def sub_config_summary(kind: Kind, relative: str) -> str:
    """The docstring summary of the sub-config at `relative` ("history", "dsc"), "" if none."""
    cls = kind.schema
    for part in relative.split("."):
        value = getattr(cls(), part, None)
        if not dataclasses.is_dataclass(value):
            return ""
        cls = type(value)
    return class_summary(cls)


# --------------------------------------------------------------------------- who reads what

def _covers(claims: tuple[str, ...], relative: str) -> bool:
    return any(relative == c or relative.startswith(c + ".") for c in claims)


def claims(kind: Kind, entry: Entry) -> tuple[str, ...]:
    """The keys (relative to the group) that `entry` names as its own: its registration's
    `knobs`, and the sub-config named after it."""
    own = tuple(entry.knobs)
    if dataclasses.is_dataclass(getattr(kind.schema(), entry.name, None)):
        own += (entry.name,)
    return own


def entry_knobs(kind: Kind, name: str) -> tuple[list[Knob], list[Knob]]:
    """(the knobs entry `name` reads as its own, the knobs every entry of the kind reads).

    Every entry of a kind reads the group's keys that no entry claims; `none` reads none."""
    entry = kind.registry.entry(name)
    everyone = [c for e in kind.registry.entries() for c in claims(kind, e)]
    own_claims = claims(kind, entry)
    knobs = group_knobs(kind)
    own = [k for k in knobs if _covers(own_claims, k.relative(kind.group))]
    shared = [] if name == "none" else [k for k in knobs if not _covers(tuple(everyone), k.relative(kind.group))]
    return own, shared


def readers(kind: Kind, key: str) -> list[str]:
    """The entries that claim `key` (a full key, or a sub-config such as "defense.history")."""
    relative = key[len(kind.group) + 1:]
    return [e.name for e in kind.registry.entries()
            if any(_covers((c,), relative) or c.startswith(relative + ".") for c in claims(kind, e))]


def reads(kind: Kind, name: str, key: str) -> bool | None:
    """Whether entry `name` reads `key` (a leaf or a sub-config): None when no entry claims it
    and it is no key of the group (an unknown key: the schema check names it)."""
    own, shared = entry_knobs(kind, name)
    keys = [k.key for k in own + shared]
    if any(k == key or k.startswith(key + ".") for k in keys):
        return True
    known = [k.key for k in group_knobs(kind)]
    return False if any(k == key or k.startswith(key + ".") for k in known) else None


# --------------------------------------------------------------------------- option defaults

def option_values(kind: Kind, name: str) -> dict[str, Any]:
    """{full key: value} of the group as `GROUP=NAME` composes it (its option file in
    `configs/<group>/`); {} when the entry has no option file. A required value is "???"."""
    from omegaconf import OmegaConf

    from fedguard.config.files import CONFIG_DIR, compose

    if not (CONFIG_DIR / kind.group / f"{name}.yaml").is_file():
        return {}
    node = OmegaConf.to_container(compose([f"{kind.group}={name}"])[kind.group], resolve=False)
    values: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}.{key}")
            else:
                values[f"{prefix}.{key}"] = value

    walk(node, kind.group)
    return values


def kind_named(word: str) -> Kind:
    """The kind `word` names: plural or singular, `-` or `_` ("attack", "stream-poisons")."""
    word = word.strip().lower().replace("-", "_")
    for kind in KINDS.values():
        if word in (kind.name, kind.group):
            return kind
    raise KeyError(word)
