import tomllib

import pytest
from omegaconf import OmegaConf

from fedguard.config import CONFIG_DIR, ConfigError, FedGuardConfig, compose, flatten, from_flat, validate
from tests.conftest import REPO


def test_default_composes_and_validates():
    cfg = compose()
    validate(cfg)
    assert cfg.dataset.name == "digits" and cfg.model.name == "mlp" and cfg.defense.name == "fedavg"


def test_dataset_brings_its_natural_model_unless_overridden(mnist_root):
    assert compose(["dataset=mnist", f"dataset.root={mnist_root}"]).model.name == "cnn"
    assert compose(["dataset=mnist", f"dataset.root={mnist_root}", "model=mlp"]).model.name == "mlp"
    assert compose(["dataset=cifar10", "dataset.root=x"]).model.name == "resnet18"


@pytest.mark.parametrize("overrides, key, value", [
    (["dataset.name=imagenet"], "dataset", "imagenet"),
    (["num_clients=5", "num_malicious=6"], "num_malicious", "6"),
    (["fraction_train=-0.1"], "fraction_train", "-0.1"),
    (["lr=0"], "lr", "0"),
    (["model.hidden=0"], "model.hidden", "0"),
    (["pretrain_epochs=-1"], "pretrain_epochs", "-1"),
    (["defense=krum", "defense.assumed_malicious=-1"], "defense.assumed_malicious", "-1"),
    (["defense=multikrum", "defense.multikrum_select=0"], "defense.multikrum_select", "0"),
    (["dataset=mnist", "dataset.root=/nonexistent/dir"], "dataset.root", "/nonexistent/dir"),
    (["defense=clipping", "defense.inner=clipping"], "defense.inner", "clipping"),
    (["defense=bulyan", "num_clients=10", "num_malicious=3"], "defense", "bulyan"),
    (["backend.client_resources.num_gpus=-1"], "backend.client_resources.num_gpus", "-1"),
    (["backend.init_args.address=auto", "backend.init_args.num_cpus=2"], "backend.init_args.num_cpus", "2"),
    (["partitioner.alpha=0"], "partitioner.alpha", "0"),
    (["faults.kind=explode"], "faults.kind", "explode"),
    (["faults.rate=1.5"], "faults.rate", "1.5"),
    (["faults.rate=-0.1"], "faults.rate", "-0.1"),
    (["weighting=median"], "weighting", "median"),
    (["min_replies=0"], "min_replies", "0"),
    (["num_clients=4", "min_replies=5"], "min_replies", "5"),
    (["checkpoint_every=-1"], "checkpoint_every", "-1"),
    (["backend.round_timeout=0"], "backend.round_timeout", "0"),
    (["num_clients=100", "fraction_train=0.1", "backend.num_supernodes=5"], "backend.num_supernodes", "5"),
    (["num_clients=10", "backend.num_supernodes=11"], "backend.num_supernodes", "11"),
    (["backend.num_supernodes=10", "sanitizer=dsc"], "sanitizer.dsc.history_lag", "1"),
    (["backend.num_supernodes=10", "sanitizer=dsc", "sanitizer.dsc.history_lag=0", "sanitizer.dsc.history_round=5"],
     "sanitizer.dsc.history_round", "5"),
    (["resume=/nonexistent/run"], "resume", "/nonexistent/run"),
    (["faults.kind=hang", "faults.rate=0.5", "backend.init_args.num_cpus=2"], "faults.rate", "0.5"),
])
def test_invalid_values_name_key_value_and_allowed(overrides, key, value):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    message = str(err.value)
    assert f"{key}=" in message and value in message and "allowed:" in message


def test_wrong_type_fails_at_composition():
    with pytest.raises(Exception, match="rounds"):
        compose(["rounds=many"])


def test_flatten_round_trip_keeps_every_value_and_null():
    cfg = compose(["defense=clipping", "dataset.root=/data/x", "lr=0.01"])
    flat = flatten(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["defense.clip_norm"] == ""  # null travels as ""
    back = from_flat(flat)
    assert back.defense.clip_norm is None and back.dataset.root == "/data/x" and back.lr == 0.01
    assert flatten(back) == flat


def test_pyproject_flower_config_is_the_hydra_default():
    """`flwr run .` and `fedguard run` must start from the same config."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == flatten(compose()), (
        "regenerate [tool.flwr.app.config] with fedguard.config.flwr_app_config_toml(compose())")


def test_the_schema_holds_the_defaults():
    """One source of defaults: configs/ selects the default options but sets no value of its own."""
    assert flatten(compose()) == flatten(OmegaConf.structured(FedGuardConfig))


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_files_set_only_what_differs_from_the_schema(path):
    group = path.parent.name
    node = OmegaConf.to_container(OmegaConf.load(path))
    node.pop("defaults", None)
    schema = OmegaConf.structured(FedGuardConfig)
    if group == "experiment":  # a preset: global keys, any group's knobs
        defaults = flatten(OmegaConf.to_container(schema))
    else:
        if path.read_text().startswith("# @package _global_"):  # e.g. a dataset that picks its model
            node = node[group]
        defaults = flatten(OmegaConf.to_container(schema[group]))
    restated = {k: v for k, v in flatten(node).items() if k != "name" and defaults.get(k, "") == v}
    assert not restated, f"{path.relative_to(REPO)} restates schema defaults: {restated}"
