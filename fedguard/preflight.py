"""The checks `fedguard run` makes before Hydra creates a run directory and before Ray starts.

`check_run(overrides, multirun)` composes the config of every job the command line stands for
(a multirun: every combination of its sweeps), as Hydra will compose it, and raises
`ConfigError` (one line) at the first:

- override Hydra cannot compose (an unknown key, a value of the wrong type, no such option);
- key the schema does not know (`+num_client=5`) or invalid value (`validate`); per-client
  state at more clients than one SuperNode per client runs (`supernodes.resolve_supernodes`);
- dataset that cannot load: its files unreadable or incomplete (read through: a truncated
  `.gz` is named), or `dataset=hub` offline (`Source.verify` of `fedguard.data.sources`);
- `resume=DIR` that is not a run, or with an override that changes its saved config (a run
  continues with its own config; it is not extended: `rounds=40` is refused, not ignored).

Overrides that set a knob the selected entry does not read (`defense.inner=median` under
`defense=fedavg`) are printed as warnings on stderr. Nothing is written anywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from fedguard.config import RESUME_FREE_KEYS, ConfigError, compose, flatten, resume_config, validate
from fedguard.config.errors import fail
from fedguard.config.keys import composition_error, inactive_knob_warnings, parse_overrides
from fedguard.supernodes import resolve_supernodes


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def compose_checked(overrides: list[str]) -> DictConfig:
    """`compose(overrides)`, Hydra's errors turned into a one-line `ConfigError`."""
    try:
        return compose(overrides)
    except ConfigError:
        raise
    except Exception as err:  # Hydra's and OmegaConf's composition errors
        if type(err).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        raise ConfigError(composition_error(err)) from err


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of every job: one job, or a multirun's combinations of its sweeps (as
    Hydra's basic sweeper forms them)."""
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        return BasicSweeper.split_arguments(parse_overrides(overrides), None)[0]
    except Exception as err:
        if type(err).__module__.split(".")[0] != "hydra":
            raise
        raise ConfigError(composition_error(err)) from err


def verify_data(cfg: DictConfig) -> None:
    """Raise `ConfigError` when the dataset cannot load (files read through; the hub reached)."""
    from fedguard.data.sources import DATASETS

    ds = cfg.dataset
    verify = DATASETS.get(ds.name).verify
    problem = verify(ds) if verify is not None else None
    if problem:
        raise ConfigError(f"dataset error (dataset={ds.name}): {problem}")


def check_resume(run_dir: str, overrides: list[str]) -> DictConfig:
    """The config `resume=run_dir` continues with; `ConfigError` when `run_dir` holds no run, or
    an override (but `resume`, `progress`) sets a value other than the saved one."""
    if not (Path(run_dir) / "config.yaml").is_file():
        fail("resume", run_dir, "a run directory holding config.yaml")
    try:
        saved = resume_config(run_dir)
    except Exception as err:
        if type(err).__module__.split(".")[0] not in ("hydra", "omegaconf", "yaml"):
            raise
        raise ConfigError(f"config error: resume={run_dir}: its config.yaml does not fit the schema: "
                          f"{str(err).splitlines()[0]}") from err
    validate(saved)
    others = [o for o in overrides if not o.startswith("resume=")]
    changed = changed_on_resume(saved, others)
    if changed:
        key, value, was = changed[0]
        raise ConfigError(
            f"config error: resume={run_dir} continues that run with its saved config, where {key}={was}; "
            f"{key}={value} would change it" + (" (a run is not extended: start a new run for more rounds)"
                                                if key == "rounds" else "")
            + f"; drop the override{'s' if len(changed) > 1 else ''} "
              f"({', '.join(k for k, _, _ in changed)}) or start a new run")
    return saved


def changed_on_resume(saved: DictConfig, overrides: list[str]) -> list[tuple[str, object, object]]:
    """(key, value the overrides give, saved value) for each key the overrides set (or change
    through a group option) to something other than the saved config has; `RESUME_FREE_KEYS`
    aside."""
    overrides = [o for o in overrides if not _is_hydra(o)]
    if not overrides:
        return []
    base, mine = flatten(compose_checked([])), flatten(compose_checked(overrides))
    named: list[str] = []  # the keys the overrides name, in their order; then what a group option changes
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if f"{key}.name" in mine:  # a group's option: its name
            named.append(f"{key}.name")
        else:
            named += [k for k in mine if k == key or k.startswith(f"{key}.")]
    touched = list(dict.fromkeys(named + sorted(k for k, v in mine.items() if base.get(k) != v)))
    was = flatten(saved)
    return [(k, _show(mine[k]), _show(was.get(k))) for k in touched
            if k.split(".")[0] not in RESUME_FREE_KEYS and mine[k] != was.get(k)]


def _show(value: object) -> object:
    return "null" if value == "" or value is None else value


def check_run(overrides: list[str], multirun: bool = False) -> None:
    """Every pre-flight check of `fedguard run OVERRIDES` (see the module docstring)."""
    plain = [o for o in overrides if not _is_hydra(o)]
    resume = [o.split("=", 1)[1] for o in plain if o.startswith("resume=")]
    if resume and resume[-1]:
        verify_data(check_resume(resume[-1], plain))
        return
    verified: set[tuple] = set()
    warned: set[str] = set()
    for job in jobs(plain, multirun):
        cfg = compose_checked(job)
        validate(cfg)
        resolve_supernodes(cfg)  # per-client state at a size one SuperNode per client cannot run
        for line in inactive_knob_warnings(cfg, job):
            if line not in warned:
                warned.add(line)
                print(line, file=sys.stderr)
        data = tuple(sorted(flatten(cfg.dataset).items()))
        if data not in verified:
            verify_data(cfg)
            verified.add(data)
