"""The `dataset` group: which source (`fedguard.data.sources.DATASETS`) and how it is split."""

from __future__ import annotations

from dataclasses import dataclass

from fedguard.config.errors import check_name, fail
from fedguard.data.sources import DATASETS


@dataclass
class DatasetConfig:
    name: str = "digits"
    root: str | None = None  # directory (or file) for on-disk sources
    val_size: int = 200  # server validation stream (taken from the training split)
    test_size: int = 360  # only for sources without an official test split
    # synthetic source
    num_samples: int = 20000  # synthetic: samples drawn (pool, validation and test together)
    num_features: int = 64  # synthetic: length of a feature vector
    num_classes: int = 10  # synthetic: Gaussian clusters, one per class
    # hub source (flwr-datasets FederatedDataset), for machines online
    hub_name: str | None = None  # hub: a Hugging Face dataset id with train and test splits, e.g. ylecun/mnist
    hub_image_key: str = "image"  # hub: the column holding the images
    hub_label_key: str = "label"  # hub: the column holding the labels


def validate_dataset(ds) -> None:
    check_name("dataset", ds.name, DATASETS)
    if ds.val_size < 1:
        fail("dataset.val_size", ds.val_size, "an integer >= 1")
    if ds.name == "hub" and not ds.hub_name:
        fail("dataset.hub_name", ds.hub_name, "a Hugging Face dataset id, e.g. 'ylecun/mnist'")
