"""Client partitions of the pool, with flwr-datasets partitioners (IID, Dirichlet, shards).

The partitioner sees a `datasets.Dataset` holding only the pool's labels and row indices,
so a client's partition is a list of indices into the pool. The IID partitioner shards
lazily; all partitioners are cached per process (one per Ray actor process).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def make_partitioner(name: str, num_partitions: int, seed: int, alpha: float = 0.5,
                     min_partition_size: int = 10, shards_per_client: int = 2):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    if name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if name == "dirichlet":
        return DirichletPartitioner(num_partitions=num_partitions, partition_by="label",
                                    alpha=alpha, min_partition_size=min_partition_size,
                                    self_balancing=False, seed=seed)
    if name == "shards":
        return ShardPartitioner(num_partitions=num_partitions, partition_by="label",
                                num_shards_per_partition=shards_per_client, seed=seed)
    raise ValueError(f"unknown partitioner {name!r}; allowed: iid, dirichlet, shards")


@lru_cache(maxsize=4)
def _bound_partitioner(labels: bytes, num_partitions: int, name: str, seed: int, alpha: float,
                       min_partition_size: int, shards_per_client: int):
    from datasets import Dataset

    y = np.frombuffer(labels, dtype=np.int64)
    partitioner = make_partitioner(name, num_partitions, seed, alpha, min_partition_size,
                                   shards_per_client)
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
