"""Client partitions of the pool, with flwr-datasets partitioners registered by
`partitioner.name` in `PARTITIONERS` (IID, Dirichlet, shards).

The partitioner sees a `datasets.Dataset` holding only the pool's labels and row indices,
so a client's partition is a list of indices into the pool. The IID partitioner shards
lazily; all partitioners are cached per process (one per Ray actor process).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedguard.registry import Registry

# `partitioner.name` -> a builder (num_partitions, seed, alpha, min_partition_size, shards_per_client)
# -> flwr-datasets Partitioner (each reads the knobs it has)
PARTITIONERS = Registry("partitioner")


@PARTITIONERS.register("iid", "equal random shares")
def _iid(num_partitions: int, seed: int, alpha: float, min_partition_size: int, shards_per_client: int):
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


@PARTITIONERS.register("dirichlet", "label shares drawn from Dirichlet(partitioner.alpha), at least "
                       "partitioner.min_partition_size samples each", knobs=("alpha", "min_partition_size"))
def _dirichlet(num_partitions: int, seed: int, alpha: float, min_partition_size: int, shards_per_client: int):
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha,
                                min_partition_size=min_partition_size, self_balancing=False, seed=seed)


@PARTITIONERS.register("shards", "pathological non-IID: partitioner.shards_per_client label-sorted shards each",
                       knobs=("shards_per_client",))
def _shards(num_partitions: int, seed: int, alpha: float, min_partition_size: int, shards_per_client: int):
    from flwr_datasets.partitioner import ShardPartitioner

    return ShardPartitioner(num_partitions=num_partitions, partition_by="label",
                            num_shards_per_partition=shards_per_client, seed=seed)


@lru_cache(maxsize=4)
def _bound_partitioner(labels: bytes, num_partitions: int, name: str, seed: int, alpha: float,
                       min_partition_size: int, shards_per_client: int):
    from datasets import Dataset

    y = np.frombuffer(labels, dtype=np.int64)
    partitioner = PARTITIONERS.get(name)(num_partitions, seed, alpha, min_partition_size, shards_per_client)
    partitioner.dataset = Dataset.from_dict({"label": y, "row": np.arange(len(y))})
    return partitioner


def partition_indices(labels: np.ndarray, partition_id: int, num_partitions: int,
                      name: str = "iid", seed: int = 0, alpha: float = 0.5,
                      min_partition_size: int = 10, shards_per_client: int = 2) -> np.ndarray:
    """Indices into the pool of client `partition_id`'s data."""
    partitioner = _bound_partitioner(np.ascontiguousarray(labels, dtype=np.int64).tobytes(),
                                     num_partitions, name, seed, alpha, min_partition_size,
                                     shards_per_client)
    return np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)


def partition_from_config(cfg, pool_labels: np.ndarray, partition_id: int) -> np.ndarray:
    p = cfg.partitioner
    return partition_indices(pool_labels, partition_id, cfg.num_clients, p.name, cfg.seed,
                             p.alpha, p.min_partition_size, p.shards_per_client)
