"""`validate(cfg)`: every check that types alone cannot express, run before Ray starts.

Each group checks its own values (`validate_<group>`, beside its schema); the checks here
relate groups to each other or to the machine (files on disk, Ray actors). First of all, the
config must have the schema's keys, no more (`keys.check_known_keys`). Reading the dataset
files through (`fedguard.preflight`) is left to `fedguard run`'s pre-flight."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedguard.config.attack import validate_attack
from fedguard.config.backend import validate_backend
from fedguard.config.dataset import validate_dataset
from fedguard.config.defense import validate_defense
from fedguard.config.errors import ConfigError, fail
from fedguard.config.faults import validate_faults
from fedguard.config.keys import check_known_keys
from fedguard.config.model import validate_model
from fedguard.config.partitioner import validate_partitioner
from fedguard.config.sanitizer import validate_sanitizer
from fedguard.config.schema import validate_run
from fedguard.config.stream_poison import validate_stream_poison
from fedguard.data.sources import DATASETS, expected_files, known_num_classes
from fedguard.models import BATCHNORM_MODELS
from fedguard.sampling import sampled_count


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` (naming the key, the value and what is allowed) at the first bad value."""
    check_known_keys(cfg)
    _required_values_are_set(cfg)
    validate_run(cfg)
    validate_dataset(cfg.dataset)
    validate_model(cfg.model)
    validate_partitioner(cfg.partitioner)
    validate_defense(cfg.defense)
    validate_backend(cfg.backend)
    validate_faults(cfg.faults)
    validate_attack(cfg.attack)
    validate_stream_poison(cfg.stream_poison)
    validate_sanitizer(cfg.sanitizer)
    _synthetic_data_is_large_enough(cfg)
    _robust_aggregators_have_enough_clients(cfg)
    _supernodes_serve_the_sampled_clients(cfg)
    _hung_clients_leave_actors(cfg)
    _attack_schedule_fits_the_run(cfg)
    _bn_shrink_has_batchnorm(cfg)
    _target_labels_are_classes(cfg)
    _virtual_clients_carry_the_sanitizer_state(cfg)
    _virtual_clients_carry_the_attack_state(cfg)
    _virtual_clients_carry_the_momentum(cfg)
    _resume_dir_holds_a_run(cfg)
    _dataset_files_are_there(cfg)


def _required_values_are_set(cfg) -> None:
    """A `???` of an option file (`dataset=mnist`'s `dataset.root`) must be given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        group = missing[0].split(".")[0]
        option = f" by {group}={cfg[group].name}" if group in cfg and "name" in cfg[group] else ""
        raise ConfigError(f"config error: {missing[0]} is required{option} (it has no default); "
                          f"set {missing[0]}=...")


def _sampled(cfg) -> int:
    return sampled_count(cfg.num_clients, cfg.fraction_train)


def _synthetic_data_is_large_enough(cfg) -> None:
    ds = cfg.dataset
    if DATASETS.get(ds.name).sized_by_config and ds.num_samples < cfg.num_clients + ds.val_size + ds.test_size:
        fail("dataset.num_samples", ds.num_samples, "at least num_clients + dataset.val_size + dataset.test_size")


def _robust_aggregators_have_enough_clients(cfg) -> None:
    d, sampled = cfg.defense, _sampled(cfg)
    f = d.assumed_malicious if d.assumed_malicious is not None else cfg.num_malicious
    robust = {d.name, d.inner}
    if "bulyan" in robust and sampled < 4 * f + 3:
        fail("defense", "bulyan", f"bulyan needs sampled clients >= 4f+3 = {4 * f + 3} "
             f"(sampled={sampled}, f={f}); lower defense.assumed_malicious or sample more")
    if robust & {"krum", "multikrum"} and sampled < 2 * f + 3:
        fail("defense", d.name, f"krum needs sampled clients >= 2f+3 = {2 * f + 3} (sampled={sampled}, f={f})")
    if "trimmed_mean" in robust and d.trim_beta is None and not 2 * f < sampled:
        fail("defense.trim_beta", None, f"a fraction in [0, 0.5): null means f / sampled = {f}/{sampled}, "
             "which cuts half or more")


def _supernodes_serve_the_sampled_clients(cfg) -> None:
    supernodes, need = cfg.backend.num_supernodes, _sampled(cfg)
    if supernodes is not None and not need <= supernodes <= cfg.num_clients:
        fail("backend.num_supernodes", supernodes,
             f"null (one per client) or an integer in [{need}, {cfg.num_clients}] "
             f"(at least the {need} clients sampled per round)")


def _hung_clients_leave_actors(cfg) -> None:
    """A hung client holds its Ray actor for 1.5 x round_timeout: leave actors for the others."""
    f, backend = cfg.faults, cfg.backend
    if f.kind != "hang" or f.rate <= 0 or backend.init_args.address:
        return
    cpus = backend.init_args.num_cpus or os.cpu_count() or 1
    actors = int(cpus // backend.client_resources.num_cpus)
    sampled = _sampled(cfg)
    hung = min(sampled, max(1, int(round(f.rate * sampled))))
    if hung >= actors:
        fail("faults.rate", f.rate,
             f"with faults.kind=hang, fewer hung clients per round ({hung}) than client actors "
             f"({actors} = backend.init_args.num_cpus / backend.client_resources.num_cpus); "
             "lower the rate or backend.client_resources.num_cpus")


def _attack_schedule_fits_the_run(cfg) -> None:
    a = cfg.attack
    if a.name == "none":
        return
    # num_malicious=0 keeps the attack's schedule (its phases are recorded) with nobody to run it:
    # the clean run of the same configuration, the baseline its damage is measured against
    trigger = a.trigger_round if a.trigger_round is not None else a.burn_in + a.accumulate_rounds + 1
    if not 1 <= trigger <= cfg.rounds:
        fail("attack.trigger_round", a.trigger_round, f"1..rounds ({cfg.rounds})" + (
            f"; null means burn_in + accumulate_rounds + 1 = {trigger}" if a.trigger_round is None else ""))
    if trigger - a.accumulate_rounds - 1 < a.burn_in:
        fail("attack.trigger_round", a.trigger_round,
             f">= burn_in + accumulate_rounds + 1 = {a.burn_in + a.accumulate_rounds + 1}")


def _bn_shrink_has_batchnorm(cfg) -> None:
    if cfg.attack.name == "bn_shrink" and cfg.model.name not in BATCHNORM_MODELS:
        fail("model", cfg.model.name, f"a model with BatchNorm with attack=bn_shrink ({', '.join(BATCHNORM_MODELS)}): "
             "it shrinks the layers a BatchNorm normalises")


def _target_labels_are_classes(cfg) -> None:
    classes = known_num_classes(cfg.dataset)
    for key, label in (("attack.target_label", cfg.attack.target_label),
                       ("stream_poison.target_label", cfg.stream_poison.target_label)):
        if label < 0 or (classes is not None and label >= classes):
            fail(key, label, f"a class in 0..{classes - 1}" if classes is not None else "a class index >= 0")


def _virtual_clients_carry_the_sanitizer_state(cfg) -> None:
    """With virtual clients (backend.num_supernodes) the server carries a client's JSON state
    only: no model snapshots (dsc's history) or warm-start model (confusion)."""
    san = cfg.sanitizer
    if cfg.backend.num_supernodes is None:
        return
    if san.name == "dsc":
        why = ("with virtual clients (backend.num_supernodes): the server carries a client's JSON state "
               "only, not DSC's model snapshots")
        if san.dsc.history_round is not None:
            fail("sanitizer.dsc.history_round", san.dsc.history_round, "null " + why)
        if san.dsc.history_lag > 0:
            fail("sanitizer.dsc.history_lag", san.dsc.history_lag, "0 " + why)
    if san.name == "confusion" and san.confusion.warm_start:
        fail("sanitizer.confusion.warm_start", san.confusion.warm_start,
             "false with virtual clients (backend.num_supernodes): the server carries a client's JSON "
             "state only, not the warm-start model")


def _virtual_clients_carry_the_momentum(cfg) -> None:
    if cfg.keep_momentum and cfg.backend.num_supernodes is not None:
        fail("keep_momentum", cfg.keep_momentum, "false with virtual clients (backend.num_supernodes): the server "
             "carries a client's JSON state only, not its momentum buffers")


def _virtual_clients_carry_the_attack_state(cfg) -> None:
    """Likewise the accumulative attacker's trigger crafted once lives in a model-sized record
    a virtual client does not carry."""
    a = cfg.attack
    if cfg.backend.num_supernodes is None or a.name == "none":
        return
    why = ("with virtual clients (backend.num_supernodes): the server carries a client's JSON state only, "
           "not the attacker's {}")
    if a.accumulate_against == "fixed":
        fail("attack.accumulate_against", a.accumulate_against, "clean or crafted " + why.format("fixed trigger"))


def _resume_dir_holds_a_run(cfg) -> None:
    if cfg.resume and not (Path(cfg.resume) / "config.yaml").is_file():
        fail("resume", cfg.resume, "a run directory holding config.yaml")


def _dataset_files_are_there(cfg) -> None:
    ds = cfg.dataset
    if DATASETS.get(ds.name).files is None:  # not an on-disk source
        return
    if not ds.root:
        fail("dataset.root", ds.root, f"a directory holding the {ds.name} files")
    problem = expected_files(ds.name, Path(ds.root))
    if problem:
        fail("dataset.root", ds.root, problem)
