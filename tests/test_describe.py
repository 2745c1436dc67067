"""`fedguard list` and what it reads: registry names and summaries, the schema's knobs with their
defaults, descriptions from the schema's comments, and which entry reads which knob."""

import dataclasses

import pytest

from fedguard import cli
from fedguard.config.attack import AttackConfig
from fedguard.config.describe import (KINDS, claims, entry_knobs, field_comments, group_knobs, kind_named,
                                      option_values, readers, schema_knobs)


@dataclasses.dataclass
class _Commented:
    """A sub-config for the test.

    Second paragraph, left out."""
    a: int = 1  # trailing comment
    # a block comment
    # over two lines
    b: float = 2.0
    # a section heading, not b's or c's
    c: str = "x"  # c's own comment wins
    d: bool = False

    e: int | None = None  # spans
    # not e's: a comment alone on the line after it


def test_field_comments_trailing_else_the_block_above():
    comments = field_comments(_Commented)
    assert comments["a"] == "trailing comment"
    assert comments["b"] == "a block comment over two lines"
    assert comments["c"] == "c's own comment wins"
    assert "d" not in comments  # nothing: "" in the listing
    assert comments["e"] == "spans"
    knobs = {k.key: k for k in schema_knobs(_Commented, "g")}
    assert knobs["g.b"].default == 2.0 and knobs["g.e"].default is None and knobs["g.a"].description == "trailing comment"


def test_the_schema_comments_are_read_from_the_source():
    comments = field_comments(AttackConfig)
    assert comments["norm_bound"].startswith("trigger update norm")
    assert comments["stealth_drop"].startswith("accumulative, both forms: stop accumulating")  # a block above
    assert comments["target_label"].startswith("triggered samples")  # its own, not the "# backdoor" heading


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_every_knob_an_entry_names_is_a_key_of_the_schema(kind):
    keys = [k.relative(kind.group) for k in group_knobs(kind)]
    for entry in kind.registry.entries():
        for claim in claims(kind, entry):
            assert any(k == claim or k.startswith(claim + ".") for k in keys), (
                f"{kind.group}={entry.name} names knob {claim!r}, which fedguard/config/{kind.group}.py does not have")


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_every_knob_has_a_line_of_description(kind):
    undescribed = [k.key for k in group_knobs(kind) if not k.description]
    assert not undescribed, f"add a `# comment` to these fields of fedguard/config/{kind.group}.py: {undescribed}"


def test_which_entry_reads_which_knob():
    attacks, defenses, sanitizers = KINDS["attacks"], KINDS["defenses"], KINDS["sanitizers"]
    own, shared = entry_knobs(attacks, "accumulative")
    assert "attack.norm_bound" in [k.key for k in own] and "attack.burn_in" in [k.key for k in shared]
    scaling = [k.key for k in sum(entry_knobs(attacks, "scaling"), [])]
    assert "attack.scale" in scaling and "attack.norm_bound" not in scaling
    assert entry_knobs(attacks, "none") == ([], [])  # no attacker reads nothing
    mddsc = [k.key for k in entry_knobs(defenses, "mddsc")[0]]
    assert {"defense.inner", "defense.history.size", "defense.correction.method"} <= set(mddsc)
    assert "defense.inner" not in [k.key for k in sum(entry_knobs(defenses, "fedavg"), [])]
    dsc = [k.key for k in sum(entry_knobs(sanitizers, "dsc"), [])]
    assert "sanitizer.dsc.eps" in dsc and not any(k.startswith(("sanitizer.epic.", "sanitizer.window")) for k in dsc)
    assert {"sanitizer.window", "sanitizer.epic.fraction"} <= {k.key for k in entry_knobs(sanitizers, "epic")[0]}
    assert "clipping" in readers(defenses, "defense.inner") and "fedavg" not in readers(defenses, "defense.inner")
    assert readers(defenses, "defense.history") == ["mddsc"]


def test_an_option_file_brings_its_defaults():
    values = option_values(KINDS["attacks"], "accumulative")
    assert values["attack.name"] == "accumulative" and values["attack.trigger_round"] == 20
    assert option_values(KINDS["defenses"], "no_such_option") == {}  # no option file: the schema's defaults


@pytest.mark.parametrize("word", ["attacks", "attack", "stream-poison", "stream_poisons", "Defenses"])
def test_kinds_plural_or_singular(word):
    assert kind_named(word).name in KINDS


def _list(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list", *argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_list_names_every_kind_one_line_per_entry(capsys):
    code, out, _ = _list(capsys)
    assert code == 0
    for kind in KINDS.values():
        assert f"{kind.name} ({kind.group}=NAME)" in out
        for entry in kind.registry.entries():
            assert f"  {entry.name} " in out and entry.summary in out
    assert all(f"  {name} " in out for name in ("median", "mddsc", "accumulative", "dsc", "badnets", "dirichlet"))


def test_list_one_kind(capsys):
    code, out, _ = _list(capsys, "defense")
    assert code == 0 and "  median " in out and "accumulative" not in out


def test_list_one_entry_shows_its_knobs_defaults_and_descriptions(capsys):
    code, out, _ = _list(capsys, "attack", "accumulative")
    assert code == 0 and out.startswith("attack=accumulative: Pang et al.")
    line = next(line for line in out.splitlines() if line.strip().startswith("attack.norm_bound "))
    assert line.split()[1] == "1.0" and "trigger update norm" in line
    line = next(line for line in out.splitlines() if line.strip().startswith("attack.trigger_round "))
    assert "20 (schema default null)" in line  # the option file's value, and the schema's
    assert "knobs every attack reads" in out and "attack.burn_in" in out and "attack.scale " not in out


@pytest.mark.parametrize("argv, text", [(["weapons"], "unknown kind 'weapons'"),
                                        (["attack", "nuke"], "no attack named 'nuke'"),
                                        (["attack", "a", "b"], "too many arguments")])
def test_list_errors_are_one_line_exit_2(capsys, argv, text):
    code, _, err = _list(capsys, *argv)
    assert code == 2 and text in err and err.count("\n") == 1
